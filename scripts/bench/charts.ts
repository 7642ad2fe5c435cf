/**
 * The charts of a benchmark report, as SVG documents keyed by file name. Pure: the report in,
 * strings out. Every chart puts the three servers in the same colours and order.
 */
import type { ServerId } from './jobs.js';
import { DISPLAY_ORDER, SERVER_COLORS, formatHeadline, formatLatency, formatPercent, shortJobLabel, type BenchReport } from './report.js';
import { SERVER_LABELS } from './servers.js';
import type { JobResult, Summary } from './stats.js';
import { formatCompact, renderBarChart, type BarChart, type ChartBar, type ChartGroup, type ChartSeries } from './svg-chart.js';

function seriesFor(ids: readonly ServerId[]): ChartSeries[] {
  return DISPLAY_ORDER.filter((id) => ids.includes(id)).map((id) => ({ id, label: SERVER_LABELS[id], color: SERVER_COLORS[id] }));
}

function footnote(report: BenchReport): string {
  const { machine, options } = report;
  const repetitions = options.repeat === 1 ? '1 run' : `median of ${options.repeat} runs, whiskers min-max`;
  return `${repetitions}, ${options.runtimeSeconds} s each · ${machine.nproc} CPUs, ${machine.cpuModel}, ${machine.kernel} · pstorage ${machine.pstorageCommit} · ${report.startedAt.slice(0, 10)}`;
}

function summaryOf(result: JobResult, id: ServerId): Summary | null {
  return result.results[id]?.summary ?? null;
}

/** Bars as a percentage of nbdkit memory's figure, each labelled with its absolute value. */
function relativeGroups(results: readonly JobResult[]): ChartGroup[] {
  return results.map((result) => {
    const ceiling = summaryOf(result, 'nbdkit-memory');
    const bars: ChartBar[] = DISPLAY_ORDER.filter((id) => result.job.servers.includes(id)).map((id) => {
      const summary = summaryOf(result, id);
      if (summary === null || ceiling === null || ceiling.iops === 0) return { seriesId: id, value: null, text: summary === null ? 'failed' : formatHeadline(result.job, summary) };
      const percent = (iops: number): number => (100 * iops) / ceiling.iops;
      return { seriesId: id, value: percent(summary.iops), whiskerMin: percent(summary.iopsMin), whiskerMax: percent(summary.iopsMax), text: `${formatHeadline(result.job, summary)} · ${formatPercent(percent(summary.iops))}` };
    });
    return { label: shortJobLabel(result.job), sublabel: `ceiling ${formatHeadline(result.job, ceiling)}`, bars };
  });
}

function relativeChart(report: BenchReport, results: readonly JobResult[], title: string): BarChart {
  return {
    title,
    subtitle: 'Throughput as a share of nbdkit memory (no storage work: the NBD ceiling on this machine). Longer is better.',
    xLabel: '% of nbdkit memory (bars), absolute figure written after each bar',
    scale: 'linear',
    series: seriesFor(['nbdkit-memory', 'nbdkit-file', 'pstorage']),
    groups: relativeGroups(results),
    footnote: footnote(report),
    tickFormat: (value) => `${value}%`,
  };
}

function metricChart(report: BenchReport, title: string, subtitle: string, xLabel: string, scale: 'linear' | 'log', pick: (summary: Summary) => number | null, describe: (summary: Summary) => string): BarChart {
  const groups = report.block.map((result) => ({
    label: shortJobLabel(result.job),
    bars: DISPLAY_ORDER.filter((id) => result.job.servers.includes(id)).map((id): ChartBar => {
      const summary = summaryOf(result, id);
      const value = summary === null ? null : pick(summary);
      return { seriesId: id, value, text: summary === null ? 'failed' : describe(summary) };
    }),
  }));
  return { title, subtitle, xLabel, scale, series: seriesFor(['nbdkit-memory', 'nbdkit-file', 'pstorage']), groups, footnote: footnote(report) };
}

function dataPatternChart(report: BenchReport): BarChart {
  const data = report.block.filter((result) => result.job.group === 'data');
  const baseline = report.block.find((result) => result.job.id === data[0]?.job.baselineJobId);
  const referenceLines = (['nbdkit-memory', 'nbdkit-file'] as const).flatMap((id) => {
    const summary = baseline ? summaryOf(baseline, id) : null;
    return summary ? [{ value: summary.iops, label: `${SERVER_LABELS[id]} ${formatCompact(summary.iops)}`, color: id === 'nbdkit-memory' ? '#6b7580' : SERVER_COLORS[id] }] : [];
  });
  return {
    title: 'pstorage: what the data is made of',
    subtitle: '4 KiB random writes at QD32; dashed lines: the nbdkit servers on unique data. Longer is better.',
    xLabel: 'IOPS',
    scale: 'linear',
    series: seriesFor(['pstorage']),
    groups: data.map((result) => {
      const summary = summaryOf(result, 'pstorage');
      const cpu = summary?.serverCpuSecondsPerGiB;
      const text = summary === null ? 'failed' : `${formatCompact(summary.iops)} IOPS · p99 ${formatLatency(summary.latencyUs.p99)}${cpu != null ? ` · ${cpu.toFixed(2)} CPU s/GiB` : ''}`;
      return { label: shortJobLabel(result.job), bars: [{ seriesId: 'pstorage', value: summary?.iops ?? null, whiskerMin: summary?.iopsMin, whiskerMax: summary?.iopsMax, text } as ChartBar] };
    }),
    referenceLines,
    footnote: footnote(report),
  };
}

/** File name -> SVG document. */
export function renderCharts(report: BenchReport): Record<string, string> {
  const matrix = report.block.filter((result) => result.job.group === 'matrix');
  const charts: Record<string, string> = {
    'block-throughput.svg': renderBarChart(relativeChart(report, matrix, 'pstorage vs nbdkit: block I/O over NBD (fio, ioengine=nbd)')),
    'block-latency-p99.svg': renderBarChart(
      metricChart({ ...report, block: matrix }, 'p99 latency per job', 'Submission to completion, 99th percentile (p50 in the label). Log scale; shorter is better.', 'p99 latency (µs, log scale)', 'log', (s) => s.latencyUs.p99, (s) => `p50 ${formatLatency(s.latencyUs.p50)} · p99 ${formatLatency(s.latencyUs.p99)}`),
    ),
    'block-cpu-per-gib.svg': renderBarChart(
      metricChart({ ...report, block: matrix }, 'Server CPU per GiB moved', 'User + system CPU seconds of the server process per GiB read or written. Shorter is cheaper.', 'CPU seconds per GiB', 'linear', (s) => s.serverCpuSecondsPerGiB, (s) => (s.serverCpuSecondsPerGiB === null ? 'n/a' : `${s.serverCpuSecondsPerGiB.toFixed(2)} s/GiB`)),
    ),
    'pstorage-data-patterns.svg': renderBarChart(dataPatternChart(report)),
  };
  if (report.filesystem.jobs.length > 0) {
    charts['filesystem.svg'] = renderBarChart(relativeChart(report, report.filesystem.jobs, 'ext4 end to end: fio libaio direct on nbdfuse + loop'));
  }
  return charts;
}
