/*
 * pstorage web dashboard (plain browser JavaScript, no build step; charts by uPlot).
 *
 * Asks for the management API token once and keeps it in sessionStorage (this tab only), then
 * polls with it as a bearer token: GET /api/v1/metrics every 2 s (volumes, I/O counters and
 * latency, reduction), GET /api/v1/analytics?history=1 and GET /api/v1/flash/erase-blocks every
 * 10 s. A 401 clears the token and asks again. IOPS are the change of the request counters between
 * two polls; latency sparklines plot the p50 and p99 since the server started, as the API gives them.
 */
'use strict';
(() => {
  const TOKEN_KEY = 'pstorage-api-token';
  const FAST_MS = 2000;
  const SLOW_EVERY = 5;
  const SPARK_POINTS = 60;
  const $ = (selector) => document.querySelector(selector);
  const sparks = new Map();
  let previous = null;
  let polls = 0;
  let timer = null;
  let capacityPlot = null;

  function formatBytes(bytes) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let value = Number(bytes);
    let unit = 0;
    while (Math.abs(value) >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${unit === 0 ? value : value.toFixed(value >= 100 ? 0 : value >= 10 ? 1 : 2)} ${units[unit]}`;
  }

  class Unauthorized extends Error {}

  async function api(path) {
    const response = await fetch(path, { headers: { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` }, cache: 'no-store' });
    if (response.status === 401) throw new Unauthorized('the token was refused');
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  function setStatus(text, state) {
    const status = $('#status');
    status.textContent = text;
    status.dataset.state = state;
  }

  function cell(text, field) {
    const td = document.createElement('td');
    td.textContent = text;
    if (field !== undefined) td.dataset.field = field;
    return td;
  }

  /** A tiny line chart on a canvas: one or two series, scaled to their own maximum. */
  function sparkline(canvas, series, colors) {
    const context = canvas.getContext('2d');
    context.clearRect(0, 0, canvas.width, canvas.height);
    const max = Math.max(1e-9, ...series.flat().filter(Number.isFinite));
    series.forEach((points, index) => {
      context.strokeStyle = colors[index];
      context.lineWidth = 1.5;
      context.beginPath();
      points.forEach((value, i) => {
        const x = (i / (SPARK_POINTS - 1)) * (canvas.width - 2) + 1;
        const y = canvas.height - 2 - ((Number.isFinite(value) ? value : 0) / max) * (canvas.height - 4);
        if (i === 0) context.moveTo(x, y);
        else context.lineTo(x, y);
      });
      context.stroke();
    });
  }

  function sparkCanvas() {
    const canvas = document.createElement('canvas');
    canvas.width = 120;
    canvas.height = 24;
    canvas.className = 'spark';
    return canvas;
  }

  function pushPoint(list, value) {
    list.push(value);
    while (list.length > SPARK_POINTS) list.shift();
  }

  function renderVolumes(stats, analytics, nowMs) {
    const body = $('#volumes tbody');
    const rows = [];
    const seconds = previous === null ? 0 : (nowMs - previous.timeMs) / 1000;
    for (const volume of stats.volumes) {
      const io = volume.io ?? { read: { requests: 0, bytes: 0 }, write: { requests: 0, bytes: 0 } };
      const requests = io.read.requests + io.write.requests;
      const before = previous?.requests.get(volume.name);
      const spark = sparks.get(volume.name) ?? { iops: [], p50: [], p99: [] };
      sparks.set(volume.name, spark);
      if (before !== undefined && seconds > 0) pushPoint(spark.iops, (requests - before) / seconds);
      pushPoint(spark.p50, Math.max(io.read.p50Ms ?? 0, io.write.p50Ms ?? 0));
      pushPoint(spark.p99, Math.max(io.read.p99Ms ?? 0, io.write.p99Ms ?? 0));
      const temperature = analytics?.volumes.find((entry) => entry.name === volume.name);
      const row = document.createElement('tr');
      row.dataset.volume = volume.name;
      row.append(
        cell(volume.name, 'name'),
        cell(formatBytes(volume.sizeBytes), 'size'),
        cell(formatBytes(volume.logicalBytes), 'mapped'),
        cell(String(volume.patternBlocks), 'patternBlocks'),
        cell(String(io.read.requests), 'reads'),
        cell(formatBytes(io.read.bytes), 'readBytes'),
        cell(String(io.write.requests), 'writes'),
        cell(formatBytes(io.write.bytes), 'writeBytes'),
      );
      const iopsCell = cell('', 'iops');
      const iopsCanvas = sparkCanvas();
      sparkline(iopsCanvas, [spark.iops], ['#3b7dd8']);
      iopsCell.append(iopsCanvas, ` ${Math.round(spark.iops[spark.iops.length - 1] ?? 0)}`);
      const latencyCell = cell('', 'latency');
      const latencyCanvas = sparkCanvas();
      sparkline(latencyCanvas, [spark.p50, spark.p99], ['#2e9b5f', '#d8683b']);
      latencyCell.append(latencyCanvas, ` ${spark.p50[spark.p50.length - 1] ?? '-'} / ${spark.p99[spark.p99.length - 1] ?? '-'}`);
      const cold = temperature?.notWrittenFor['7d'];
      row.append(iopsCell, latencyCell, cell(cold === null || cold === undefined ? '-' : `${(cold * 100).toFixed(1)} %`, 'cold7d'));
      // Exact figures for scripts and tests, next to the rounded text.
      row.dataset.logicalBytes = String(volume.logicalBytes);
      row.dataset.readBytes = String(io.read.bytes);
      row.dataset.writeBytes = String(io.write.bytes);
      rows.push(row);
    }
    body.replaceChildren(...rows);
    previous = { timeMs: nowMs, requests: new Map(stats.volumes.map((v) => [v.name, (v.io?.read.requests ?? 0) + (v.io?.write.requests ?? 0)])) };
  }

  function renderReduction(stats) {
    const r = stats.reduction;
    $('#reduction-ratio').textContent = `${stats.dataReductionRatio}:1`;
    const parts = [
      ['patterns (zero blocks)', r.patternBytesSaved],
      ['deduplication', r.dedupBytesSaved],
      [`compression (${r.compression}, ${r.compressionRatio}:1)`, r.compressionBytesSaved],
      ['thin provisioning', r.thinProvisioningBytesSaved],
      ['stored (physical)', stats.physicalBytes],
    ];
    const max = Math.max(1, ...parts.map(([, bytes]) => bytes));
    $('#reduction').replaceChildren(
      ...parts.map(([label, bytes]) => {
        const bar = document.createElement('div');
        bar.className = 'bar';
        const name = document.createElement('span');
        name.textContent = label;
        const fill = document.createElement('i');
        fill.style.width = `${Math.max(1, (bytes / max) * 300)}px`;
        const value = document.createElement('span');
        value.textContent = formatBytes(bytes);
        bar.append(name, fill, value);
        return bar;
      }),
    );
  }

  function renderCapacity(stats, analytics) {
    const cards = [
      ['capacity', formatBytes(stats.capacityBytes), 'capacityBytes'],
      ['used', formatBytes(stats.physicalBytes), 'usedBytes'],
      ['free', formatBytes(stats.freeBytes), 'freeBytes'],
      ['logical', formatBytes(stats.logicalBytes), 'logicalBytes'],
      ['provisioned', formatBytes(stats.provisionedBytes), 'provisionedBytes'],
    ];
    $('#capacity-summary').replaceChildren(
      ...cards.map(([label, value, field]) => {
        const card = document.createElement('div');
        card.textContent = label;
        const figure = document.createElement('span');
        figure.textContent = value;
        figure.dataset.field = field;
        card.append(figure);
        return card;
      }),
    );
    if (analytics === null) return;
    $('#forecasts tbody').replaceChildren(
      ...analytics.forecasts.map((f) => {
        const row = document.createElement('tr');
        row.append(cell(`${f.windowDays} d`), cell(String(f.samples)), cell(`${f.spanDays} d`), cell(f.usedBytesPerDay === null ? '-' : `${formatBytes(f.usedBytesPerDay)}/day`), cell(f.daysUntilFull === null ? 'not filling' : String(f.daysUntilFull)), cell(f.fullAt === null ? '-' : new Date(f.fullAt).toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' })));
        return row;
      }),
    );
    $('#health').textContent = `health ${analytics.health.score}/100 (limited by ${analytics.health.limitedBy})`;
    drawCapacityChart(analytics);
  }

  /**
   * The capacity chart's time axis and forecast line (seconds), from the history, the 30-day fit
   * and the sampling interval: the history's span plus as much again for the forecast, at least 12
   * sampling intervals (an hour at the default 5 minutes), so minutes of history never get an axis
   * of years. The forecast starts at the newest sample and runs at the fit's rate to the full point
   * when that falls inside the range, else to the range's end.
   */
  function capacityRange(history, fit, sampleIntervalMs) {
    const firstS = history[0][0] / 1000;
    const last = history[history.length - 1];
    const lastS = last[0] / 1000;
    const endS = lastS + Math.max(lastS - firstS, (12 * sampleIntervalMs) / 1000);
    let forecast = null;
    if (fit?.usedBytesPerDay !== null && fit?.usedBytesPerDay !== undefined && fit.usedBytesPerDay > 0) {
      // From the rate, not daysUntilFull: that is rounded to 0.01 day, 14 minutes.
      const fullS = lastS + (Math.max(0, last[3] - last[1]) / fit.usedBytesPerDay) * 86400;
      const toS = Math.min(fullS, endS);
      forecast = { fromS: lastS, fromBytes: last[1], toS, toBytes: toS === fullS ? last[3] : last[1] + (fit.usedBytesPerDay * (toS - lastS)) / 86400, full: toS === fullS };
    }
    return { minS: firstS, maxS: endS, forecast };
  }
  window.pstorageDashboard = { capacityRange };

  /** Used and logical bytes over time, capacity, and the 30-day fit projected forward. */
  function drawCapacityChart(analytics) {
    const history = analytics.history ?? [];
    if (history.length === 0) return;
    const range = capacityRange(history, analytics.forecasts.find((f) => f.windowDays === 30), analytics.sampleIntervalMs);
    const times = history.map(([timeMs]) => timeMs / 1000);
    const used = history.map(([, usedBytes]) => usedBytes);
    const logical = history.map(([, , logicalBytes]) => logicalBytes);
    const capacity = history.map(([, , , capacityBytes]) => capacityBytes);
    const forecast = history.map(() => null);
    // The capacity line runs to the right edge; the forecast from the newest sample to its end.
    const last = history[history.length - 1];
    if (range.forecast !== null) {
      forecast[forecast.length - 1] = range.forecast.fromBytes;
      times.push(range.forecast.toS);
      used.push(null);
      logical.push(null);
      capacity.push(last[3]);
      forecast.push(range.forecast.toBytes);
    }
    if (times[times.length - 1] < range.maxS) {
      times.push(range.maxS);
      used.push(null);
      logical.push(null);
      capacity.push(last[3]);
      forecast.push(null);
    }
    const chart = $('#capacity-chart');
    chart.dataset.minS = String(range.minS);
    chart.dataset.maxS = String(range.maxS);
    chart.dataset.samples = String(history.length);
    chart.dataset.forecastToS = range.forecast === null ? '' : String(range.forecast.toS);
    const data = [times, used, logical, capacity, forecast];
    const width = Math.max(300, chart.clientWidth - 10);
    if (capacityPlot !== null) capacityPlot.destroy();
    capacityPlot = new uPlot(
      {
        width,
        height: 220,
        scales: { x: { time: true, range: () => [range.minS, range.maxS] }, y: { range: (_, min, max) => [0, Math.max(max, 1) * 1.05] } },
        series: [
          {},
          { label: 'used', stroke: '#3b7dd8', width: 2, fill: 'rgba(59, 125, 216, 0.08)', value: (_, v) => (v === null ? '-' : formatBytes(v)) },
          { label: 'logical', stroke: '#2e9b5f', width: 2, value: (_, v) => (v === null ? '-' : formatBytes(v)) },
          { label: 'capacity', stroke: '#888', dash: [4, 4], points: { show: false }, value: (_, v) => (v === null ? '-' : formatBytes(v)) },
          { label: range.forecast?.full ? 'forecast (30 d fit, to full)' : 'forecast (30 d fit)', stroke: '#d8683b', width: 2, dash: [8, 4], spanGaps: true, points: { show: false }, value: (_, v) => (v === null ? '-' : formatBytes(v)) },
        ],
        axes: [{}, { values: (_, ticks) => ticks.map(formatBytes), size: 80 }],
      },
      data,
      chart,
    );
  }

  function renderWear(blocks) {
    const canvas = $('#wear');
    const context = canvas.getContext('2d');
    const count = blocks.eraseCounts.length;
    // The largest square cell that fits every block, then as many columns as the width takes.
    const size = Math.max(1, Math.floor(Math.sqrt((canvas.width * canvas.height) / Math.max(1, count))));
    const columns = Math.max(1, Math.floor(canvas.width / size));
    const retired = new Set(blocks.retired);
    // Colours are relative to the most-erased block, so that wear levelling shows long before any
    // block nears its rated endurance (the health score above measures against that).
    const maxErases = blocks.eraseCounts.reduce((max, erases) => Math.max(max, erases), 0);
    const scale = Math.max(1, maxErases);
    context.clearRect(0, 0, canvas.width, canvas.height);
    blocks.eraseCounts.forEach((erases, block) => {
      const share = Math.min(1, erases / scale);
      context.fillStyle = retired.has(block) ? '#000' : `hsl(${40 - share * 40}, 90%, ${92 - share * 60}%)`;
      context.fillRect((block % columns) * size, Math.floor(block / columns) * size, size - (size > 3 ? 1 : 0), size - (size > 3 ? 1 : 0));
    });
    canvas.dataset.eraseBlocks = String(count);
    canvas.dataset.maxErases = String(maxErases);
    $('#wear-legend').textContent = `each cell is one of ${count} erase blocks: P/E cycles from 0 (pale) to ${maxErases}, the most-erased block (dark red); rated endurance ${blocks.enduranceCycles} cycles; black: retired`;
  }

  let analyticsCache = null;

  async function poll() {
    const slow = polls % SLOW_EVERY === 0;
    polls += 1;
    try {
      const [stats, analytics, blocks] = await Promise.all([api('/api/v1/metrics'), slow ? api('/api/v1/analytics?history=1') : null, slow ? api('/api/v1/flash/erase-blocks') : null]);
      if (analytics !== null) analyticsCache = analytics;
      const nowMs = Date.now();
      $('#main').hidden = false; // before drawing: the chart takes the width of its section
      renderVolumes(stats, analyticsCache, nowMs);
      renderReduction(stats);
      renderCapacity(stats, analytics);
      if (blocks !== null) renderWear(blocks);
      document.body.dataset.updates = String(polls);
      setStatus(`updated ${new Date(nowMs).toLocaleTimeString()}`, 'ok');
    } catch (error) {
      if (error instanceof Unauthorized) {
        sessionStorage.removeItem(TOKEN_KEY);
        askForToken('That token was refused: enter the token pstorage serve was started with.');
        return;
      }
      setStatus(`error: ${error.message}`, 'error');
    }
    timer = setTimeout(poll, FAST_MS);
  }

  function askForToken(message) {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    $('#main').hidden = true;
    $('#token-form').hidden = false;
    $('#token-error').hidden = message === undefined;
    $('#token-error').textContent = message ?? '';
    setStatus('not connected', 'idle');
    $('#token').focus();
  }

  $('#token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('#token').value.trim());
    $('#token').value = '';
    $('#token-form').hidden = true;
    polls = 0;
    void poll();
  });

  if (sessionStorage.getItem(TOKEN_KEY) === null) askForToken();
  else void poll();
})();
