/**
 * The web dashboard (issue: observability, part 4) in a real browser: a real `pstorage serve` with
 * the TCP management API and a token, NBD traffic from python3-libnbd on two volumes, then headless
 * Chromium (test/helpers/chromium.ts) loads /dashboard/, is refused with a wrong token, gets the
 * right one typed in, and renders. With the traffic stopped, every volume row's request counts,
 * bytes and mapped bytes must equal what GET /metrics says, the wear heat map must cover every
 * erase block (its legend giving the most-erased block's count), the capacity forecast table must
 * show the three windows, and the capacity chart's time axis must be the history's span plus as
 * much again, at least 12 sampling intervals (checked against the API's history, and on synthetic
 * histories of 90 days and of minutes). A screenshot goes to the test's temporary directory (and
 * to PSTORAGE_DASHBOARD_PNG when set; docs/dashboard.png comes from scripts/dashboard-screenshot.sh,
 * under live fio traffic).
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import test from 'ava';
import { apiRequest, apiSocketOf } from '../cli/cli-run.js';
import { Browser, CHROMIUM } from '../helpers/chromium.js';
import { SYSTEM_PYTHON, mustRun, requireTools, startServer, stopServer, tempDir } from '../helpers/interop.js';
import type { PstorageProcess } from '../helpers/pstorage-process.js';
import { parseExposition } from '../helpers/exposition.js';

const KiB = 1024;
/** Per volume: 4 KiB reads, 64 KiB writes (half of them compressible text, a few all zero). */
const TRAFFIC = { default: { writes: 300, reads: 500 }, db: { writes: 120, reads: 90 } } as const;

const CLIENT = `
import sys, nbd, os
uri, writes, reads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = nbd.NBD()
h.connect_uri(uri)
text = (b'pstorage dashboard test line ' * 3000)[:65536]
for i in range(writes):
    data = bytes(65536) if i % 10 == 0 else (text if i % 2 else os.urandom(65536))
    h.pwrite(data, i * 65536)
for i in range(reads):
    h.pread(4096, (i % writes) * 65536)
h.flush()
h.shutdown()
`;

function get(port: number, route: string, token: string | null): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const headers = token === null ? {} : { authorization: `Bearer ${token}` };
    const request = http.get({ host: '127.0.0.1', port, path: route, headers }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    request.on('error', reject);
  });
}

function apiPort(server: PstorageProcess): number {
  for (const line of server.logs().split('\n')) {
    if (!line.includes('"msg":"management API listening"')) continue;
    const tcp = (JSON.parse(line) as { tcp: string | null }).tcp;
    if (tcp !== null) return Number(tcp.split(':').pop());
  }
  throw new Error(`no TCP management API in the log:\n${server.logs()}`);
}

interface Row {
  name: string;
  reads: number;
  writes: number;
  readBytes: number;
  writeBytes: number;
  logicalBytes: number;
  mappedText: string;
}

test('the dashboard shows what /metrics says, in headless Chromium', async (t) => {
  requireTools([SYSTEM_PYTHON, CHROMIUM]);
  const startedMs = Date.now();
  const token = `dashboard-token-${process.pid}`;
  const server = await startServer(t, { args: ['--api-listen', '127.0.0.1:0'], env: { PSTORAGE_API_TOKEN: token } });
  const port = apiPort(server);
  t.is((await apiRequest({ socketPath: apiSocketOf(server.dataDir) }, 'POST', '/api/v1/volumes', { body: { name: 'db', size: '2G' } })).status, 201);

  // Static files need no token; data routes do; nothing outside the table is served.
  t.is((await get(port, '/dashboard/', null)).status, 200);
  t.is((await get(port, '/dashboard/uPlot.iife.min.js', null)).status, 200);
  t.is((await get(port, '/dashboard/../package.json', null)).status, 401, 'not a dashboard file: the token is asked for');
  t.is((await get(port, '/dashboard/nothing.js', null)).status, 404);
  t.is((await get(port, '/api/v1/metrics', null)).status, 401);
  t.is((await get(port, '/api/v1/analytics', null)).status, 401);
  t.is((await get(port, '/api/v1/flash/erase-blocks', null)).status, 401);

  await Promise.all(Object.entries(TRAFFIC).map(([volume, { writes, reads }]) => mustRun(SYSTEM_PYTHON, ['-c', CLIENT, server.unixUri(volume), String(writes), String(reads)], { timeoutMs: 60_000 })));
  const trafficMs = Date.now() - startedMs;

  const dir = tempDir(t, 'pstorage-dashboard-');
  const browser = Browser.launch(path.join(dir, 'profile'));
  t.teardown(() => browser.close());
  const page = await browser.newPage(1280, 1500);
  await page.goto(`http://127.0.0.1:${port}/dashboard/`);
  await page.waitFor('!document.querySelector("#token-form").hidden', 10_000, 'the token form');
  await page.typeAndEnter('#token', 'wrong-token');
  const refusal = await page.waitFor<string>('!document.querySelector("#token-error").hidden && document.querySelector("#token-error").textContent', 10_000, 'the refusal of a wrong token');
  t.regex(refusal, /refused/);
  await page.typeAndEnter('#token', token);
  await page.waitFor('Number(document.body.dataset.updates) >= 2 && document.querySelectorAll("#volumes tbody tr").length === 2', 15_000, 'two updates with both volumes');
  t.is(await page.evaluate<string | null>('sessionStorage.getItem("pstorage-api-token")'), token, 'the token is kept in sessionStorage');

  // The traffic has stopped: take /metrics, then wait for the page's next update, and compare.
  const metrics = parseExposition((await get(port, '/metrics', token)).body);
  const updates = await page.evaluate<number>('Number(document.body.dataset.updates)');
  await page.waitFor(`Number(document.body.dataset.updates) > ${updates}`, 10_000, 'one more update');
  const rows = await page.evaluate<Row[]>(`[...document.querySelectorAll('#volumes tbody tr')].map((row) => ({
    name: row.dataset.volume,
    reads: Number(row.querySelector('[data-field=reads]').textContent),
    writes: Number(row.querySelector('[data-field=writes]').textContent),
    readBytes: Number(row.dataset.readBytes),
    writeBytes: Number(row.dataset.writeBytes),
    logicalBytes: Number(row.dataset.logicalBytes),
    mappedText: row.querySelector('[data-field=mapped]').textContent,
  }))`);
  t.log(`traffic done in ${trafficMs} ms; page rows: ${JSON.stringify(rows)}`);
  t.deepEqual(rows.map((row) => row.name).sort(), ['db', 'default']);
  for (const row of rows) {
    const expected = TRAFFIC[row.name as keyof typeof TRAFFIC];
    const metric = (name: string, op?: string): number => {
      const key = `${name}{${op === undefined ? '' : `op="${op}",`}volume="${row.name}"}`;
      const value = metrics.get(key);
      if (value === undefined) throw new Error(`no ${key} in /metrics`);
      return value;
    };
    t.is(row.reads, metric('pstorage_nbd_requests_total', 'read'), `${row.name}: reads`);
    t.is(row.writes, metric('pstorage_nbd_requests_total', 'write'), `${row.name}: writes`);
    t.is(row.readBytes, metric('pstorage_nbd_bytes_total', 'read'), `${row.name}: bytes read`);
    t.is(row.writeBytes, metric('pstorage_nbd_bytes_total', 'write'), `${row.name}: bytes written`);
    t.is(row.logicalBytes, metric('pstorage_volume_logical_bytes'), `${row.name}: mapped bytes`);
    // And the traffic itself, so that a page and an exposition that agree on nothing are caught.
    t.is(row.writes, expected.writes);
    t.is(row.reads, expected.reads);
    t.is(row.writeBytes, expected.writes * 64 * KiB);
    t.is(row.logicalBytes, expected.writes * 64 * KiB, 'zero blocks count as mapped (pattern entries)');
    const mappedMiB = (expected.writes * 64) / 1024;
    t.is(row.mappedText, `${mappedMiB.toFixed(mappedMiB >= 10 ? 1 : 2)} MiB`, 'the text shown');
  }
  const wear = await page.evaluate<{ blocks: number; max: number }>('({ blocks: Number(document.querySelector("#wear").dataset.eraseBlocks), max: Number(document.querySelector("#wear").dataset.maxErases) })');
  t.is(wear.blocks, metrics.get('pstorage_flash_erase_blocks') ?? NaN, 'the heat map has a cell per erase block');
  t.is(wear.max, metrics.get('pstorage_flash_erase_cycles_max') ?? NaN);
  t.regex(await page.evaluate<string>('document.querySelector("#wear-legend").textContent'), new RegExp(`one of ${wear.blocks} erase blocks: P/E cycles from 0 \\(pale\\) to ${wear.max}, `), 'the colour scale the legend gives');
  const forecastRows = await page.evaluate<string[]>('[...document.querySelectorAll("#forecasts tbody tr td:first-child")].map((td) => td.textContent)');
  t.deepEqual(forecastRows, ['7 d', '30 d', '90 d']);
  t.true(await page.evaluate<boolean>('document.querySelector("#capacity-chart canvas") !== null'), 'the capacity chart is drawn (uPlot)');
  // The chart's time axis: the history's span plus as much again, at least 12 sampling intervals
  // (an hour at the default 5 minutes), not years.
  const { history, sampleIntervalMs } = JSON.parse((await get(port, '/api/v1/analytics?history=1', token)).body) as { history: Array<[number, number, number, number]>; sampleIntervalMs: number };
  t.is(sampleIntervalMs, 5 * 60_000);
  const chart = await page.evaluate<{ minS: number; maxS: number; samples: number }>('({ minS: Number(document.querySelector("#capacity-chart").dataset.minS), maxS: Number(document.querySelector("#capacity-chart").dataset.maxS), samples: Number(document.querySelector("#capacity-chart").dataset.samples) })');
  t.is(chart.minS, history[0]![0] / 1000, 'the axis starts at the first sample');
  if (chart.samples === history.length) {
    const spanS = (history[history.length - 1]![0] - history[0]![0]) / 1000;
    t.is(chart.maxS - chart.minS, spanS + Math.max(spanS, 3600), `the axis covers the history (${spanS} s) and as much again, at least an hour`);
  }
  // The same rule on a synthetic history of 90 days (a sample a day, 1000 GiB used of 2 TiB at the end).
  const ranges = await page.evaluate<Array<{ minS: number; maxS: number; forecast: { toS: number; toBytes: number; full: boolean } | null }>>(`(() => {
    const day = 86400000, GiB = 1024 ** 3, start = Date.UTC(2026, 0, 1);
    const long = Array.from({ length: 91 }, (_, i) => [start + i * day, 100 * GiB + i * 10 * GiB, 200 * GiB, 2048 * GiB]);
    const fit = (gibPerDay) => ({ windowDays: 30, usedBytesPerDay: gibPerDay * GiB, daysUntilFull: 1 });
    const minutes = Array.from({ length: 10 }, (_, i) => [start + i * 60000, GiB + i * 1024, GiB, 8 * GiB]);
    const range = window.pstorageDashboard.capacityRange;
    return [range(long, fit(16), 300000), range(long, fit(10), 300000), range(minutes, fit(0.001), 300000), range(minutes.slice(0, 1), { windowDays: 30, usedBytesPerDay: null, daysUntilFull: null }, 300000), range(minutes, fit(0.001), 2000)];
  })()`);
  const startS = Date.UTC(2026, 0, 1) / 1000;
  const DAY_S = 86400;
  t.deepEqual(ranges[0], { minS: startS, maxS: startS + 180 * DAY_S, forecast: { fromS: startS + 90 * DAY_S, fromBytes: 1000 * 1024 ** 3, toS: startS + (90 + 65.5) * DAY_S, toBytes: 2048 * 1024 ** 3, full: true } }, '90 days of history, 1048 GiB free at 16 GiB a day: the forecast ends at the full point, 65.5 days on');
  t.deepEqual(ranges[1]!.forecast, { fromS: startS + 90 * DAY_S, fromBytes: 1000 * 1024 ** 3, toS: startS + 180 * DAY_S, toBytes: 1900 * 1024 ** 3, full: false }, 'full in 104.8 days at 10 GiB a day: the forecast runs to the end of the axis');
  t.is(ranges[2]!.maxS - ranges[2]!.minS, 540 + 3600, '9 minutes of history, full in 7000 days: an hour of forecast, not years');
  t.deepEqual(ranges[3], { minS: startS, maxS: startS + 3600, forecast: null }, 'one sample, no fit: an hour');
  t.is(ranges[4]!.maxS - ranges[4]!.minS, 2 * 540, 'sampled every 2 s (PSTORAGE_ANALYTICS_INTERVAL_MS): 9 minutes of history, 9 of forecast');
  t.regex(await page.evaluate<string>('document.querySelector("#reduction-ratio").textContent'), /^\d+(\.\d+)?:1$/);
  t.is(await page.evaluate<string>('document.querySelector("#status").dataset.state'), 'ok');

  const screenshot = path.join(dir, 'dashboard.png');
  await page.screenshot(screenshot);
  t.true(fs.statSync(screenshot).size > 10_000, 'a screenshot with something in it');
  if (process.env.PSTORAGE_DASHBOARD_PNG) fs.copyFileSync(screenshot, process.env.PSTORAGE_DASHBOARD_PNG);
  t.log(`screenshot ${screenshot}; test took ${Date.now() - startedMs} ms`);
  await browser.close();
  await stopServer(t, server);
});
