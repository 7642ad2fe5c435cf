/**
 * results.md: the tables a README's Performance section is written from. Pure: report in,
 * Markdown out. The summary table comes first; details, method and problems follow.
 */
import { DISPLAY_ORDER, formatBytes, formatHeadline, formatLatency, formatMiBps, formatRatio, type BenchReport, type ServerInfo } from './report.js';
import { SERVER_LABELS } from './servers.js';
import type { JobResult } from './stats.js';
import { formatCompact } from './svg-chart.js';

function row(cells: readonly string[]): string {
  return `| ${cells.map((cell) => cell.replace(/\|/g, '\\|')).join(' | ')} |`;
}

function table(header: readonly string[], rows: readonly (readonly string[])[], alignRightFrom = 1): string[] {
  const align = header.map((_, index) => (index >= alignRightFrom ? '---:' : '---'));
  return [row(header), row(align), ...rows.map(row)];
}

/** One row per job: each server's headline figure, then pstorage's ratios to both nbdkits. */
export function summaryTable(results: readonly JobResult[]): string[] {
  const header = ['Job', ...DISPLAY_ORDER.map((id) => SERVER_LABELS[id]), 'pstorage ÷ memory', 'pstorage ÷ file'];
  const rows = results.map((result) => [
    result.job.title,
    ...DISPLAY_ORDER.map((id) => (result.job.servers.includes(id) ? formatHeadline(result.job, result.results[id]?.summary ?? null) : '—')),
    formatRatio(result.ratios['pstorage/nbdkit-memory']?.iops),
    formatRatio(result.ratios['pstorage/nbdkit-file']?.iops),
  ]);
  return table(header, rows);
}

/** One row per job and server, with every reported figure. */
export function detailTable(results: readonly JobResult[]): string[] {
  const header = ['Job', 'Server', 'IOPS', 'MiB/s', 'p50', 'p99', 'p99.9', 'CPU s/GiB', 'IOPS min–max', 'runs'];
  const rows: string[][] = [];
  for (const result of results) {
    for (const id of DISPLAY_ORDER.filter((candidate) => result.job.servers.includes(candidate))) {
      const server = result.results[id];
      const summary = server?.summary ?? null;
      if (summary === null) {
        rows.push([result.job.id, SERVER_LABELS[id], 'failed', '', '', '', '', '', '', `0/${server?.runs.length ?? 0}`]);
        continue;
      }
      const cpu = summary.serverCpuSecondsPerGiB;
      rows.push([
        result.job.id,
        SERVER_LABELS[id],
        formatCompact(summary.iops),
        formatMiBps(summary.mibPerSecond),
        formatLatency(summary.latencyUs.p50),
        formatLatency(summary.latencyUs.p99),
        formatLatency(summary.latencyUs.p999),
        cpu === null ? 'n/a' : cpu.toFixed(2),
        `${formatCompact(summary.iopsMin)}–${formatCompact(summary.iopsMax)}`,
        `${summary.repetitions}/${server!.runs.length}`,
      ]);
    }
  }
  return table(header, rows, 2);
}

function dataTable(results: readonly JobResult[]): string[] {
  const header = ['Data written by pstorage', 'IOPS', 'MiB/s', 'p99', 'CPU s/GiB', '÷ memory (unique)', '÷ file (unique)'];
  const rows = results.map((result) => {
    const summary = result.results.pstorage?.summary ?? null;
    return [
      result.job.title,
      summary ? formatCompact(summary.iops) : 'failed',
      summary ? formatMiBps(summary.mibPerSecond) : '',
      summary ? formatLatency(summary.latencyUs.p99) : '',
      summary?.serverCpuSecondsPerGiB != null ? summary.serverCpuSecondsPerGiB.toFixed(2) : 'n/a',
      formatRatio(result.ratios['pstorage/nbdkit-memory']?.iops),
      formatRatio(result.ratios['pstorage/nbdkit-file']?.iops),
    ];
  });
  return table(header, rows);
}

function capacityText(startupLog: Record<string, unknown> | null): string {
  const capacity = startupLog?.capacityBytes;
  return typeof capacity === 'number' ? `; physical capacity ${formatBytes(capacity)} (from its startup log)` : '';
}

function serverLine(server: ServerInfo): string {
  const facts = [`\`${server.command}\`${capacityText(server.startupLog)}`];
  if (server.storedBytesAtEnd !== null) facts.push(`${formatBytes(server.storedBytesAtEnd)} on disk at the end`);
  if (server.peakRssBytes !== null) facts.push(`peak RSS ${formatBytes(server.peakRssBytes)}`);
  if (server.stop) facts.push(`stopped in ${server.stop.stopSeconds.toFixed(1)} s with ${server.stop.code ?? server.stop.signal}${server.stop.killed ? ' (killed)' : ''}`);
  return `- **${server.label}**: ${facts.join('; ')}.`;
}

function methodSection(report: BenchReport): string[] {
  const { options, machine } = report;
  return [
    '## How this was measured',
    '',
    `- Command: \`${report.commandLine}\``,
    `- Machine: ${machine.nproc} CPUs (${machine.cpuModel}), ${formatBytes(machine.memoryBytes)} RAM, ${machine.kernel}, Node ${machine.node}; work directory on ${machine.workDirFilesystem}; load average at start ${machine.loadAverageAtStart.map((v) => v.toFixed(2)).join(' ')}, at end ${(machine.loadAverageAtEnd ?? []).map((v) => v.toFixed(2)).join(' ')}.`,
    `- Tools: ${Object.entries(machine.tools).map(([name, version]) => `${name} ${version.replace(new RegExp(`^${name}[ -]?`), '')}`).join(', ')}; pstorage ${machine.pstorageCommit} (checkout), built ${machine.pstorageBuiltAt ?? 'at an unknown time'}.`,
    `- Every figure is the median of ${options.repeat} run(s) of ${options.runtimeSeconds} s; the three servers run side by side and take turns, ${report.alternation}, so drift over the run cancels.`,
    `- Transport: ${options.transport === 'tcp' ? 'TCP on 127.0.0.1' : 'Unix sockets'}. All three exports are ${formatBytes(report.servers[0]?.exportSizeBytes ?? 0)}; the jobs use a ${formatBytes(report.layout.regionBytes)} test region (pstorage's data-pattern jobs use two more regions of that size).`,
    '- Latency is fio\'s total latency (submission to completion). Server CPU is the server process\'s user + system time (/proc/PID/stat, all threads) around each fio run, divided by the GiB fio moved; kernel writeback done by kworker threads is not in it.',
    `- Unique data: fio \`--refill_buffers=1 --randrepeat=0\`. Duplicate: the same fio seed (${report.duplicateSeed}) and offsets that wrote the dedup-source region, so each block is a copy of one already stored. Zeros: \`--zero_buffers=1 --scramble_buffers=0\`. Compressible: \`--buffer_compress_percentage=${options.compressPercent}\`.`,
    '',
    '### Preconditioning',
    '',
    ...report.servers.map((server) => `- **${server.label}** (${(server.preconditioningSeconds).toFixed(1)} s): ${server.preconditioning}.`),
    '',
    options.precondition === 'rand4k'
      ? 'Why 4 KiB random writes: on this kernel a 1 MiB sequential prefill of a fresh sparse file leaves large folios in its page cache, and later buffered 4 KiB overwrites on nbdkit file then run several times slower than after a 4 KiB prefill. Filling with 4 KiB random writes is the preconditioning that suits nbdkit file best (and pstorage\'s current sparse-file backend, which is buffered the same way); it does not flatter a log-structured server. `--precondition seq1m` measures the other case.'
      : 'Note: 1 MiB sequential preconditioning (`--precondition seq1m`) makes later buffered 4 KiB overwrites on nbdkit file (and on pstorage\'s sparse-file backend) several times slower on this kernel; it is NOT the preconditioning that suits nbdkit file best. Use the default, rand4k, for figures to publish.',
    '',
    '### Servers',
    '',
    ...report.servers.map(serverLine),
  ];
}

function filesystemSection(report: BenchReport): string[] {
  const fsReport = report.filesystem;
  if (fsReport.skipped !== null) return ['## Filesystem end to end', '', `Skipped: ${fsReport.skipped}.`];
  const fsck = DISPLAY_ORDER.map((id) => `${SERVER_LABELS[id]} ${fsReport.fsck[id]?.clean ? 'clean' : `NOT clean (${fsReport.fsck[id]?.output ?? 'not checked'})`}`).join(', ');
  return [
    '## Filesystem end to end',
    '',
    `ext4 (${formatBytes(fsReport.filesystemBytes)}, made with inode tables and journal written up front, no discard) on nbdfuse + a loop device with direct I/O; fio \`ioengine=libaio direct=1\` on a ${formatBytes(fsReport.testFileBytes)} file, which is first written once with 4 KiB random writes at QD16. e2fsck -fn afterwards: ${fsck}.`,
    '',
    ...summaryTable(fsReport.jobs),
    '',
    ...detailTable(fsReport.jobs),
  ];
}

/** One section per experiment run: its own lines, or its status when it did not finish. */
function experimentSections(report: BenchReport): string[] {
  const lines: string[] = [];
  for (const [name, result] of Object.entries(report.extensions)) {
    lines.push(`## Experiment \`${name}\`: ${result.purpose}`, '');
    if (result.status !== 'ok') lines.push(`Status: ${result.status}${result.note ? ` (${result.note})` : ''}.`, '');
    if (result.markdown !== undefined) lines.push(...result.markdown, '');
  }
  return lines;
}

export function renderMarkdown(report: BenchReport, chartFiles: readonly string[]): string {
  const matrix = report.block.filter((result) => result.job.group === 'matrix');
  const data = report.block.filter((result) => result.job.group === 'data');
  const lines = [
    `# ${report.title}`,
    '',
    `${report.startedAt} · ${report.options.quick ? 'quick mode (figures are indicative only)' : 'full run'} · median of ${report.options.repeat} × ${report.options.runtimeSeconds} s · pstorage ${report.machine.pstorageCommit}`,
    '',
    'nbdkit memory does no storage work: it is the ceiling of an NBD server on this machine. nbdkit file on a sparse file is the plain persistent peer. Ratios are pstorage\'s IOPS (equivalently MiB/s) divided by each nbdkit\'s, in the same run; above 1.00x pstorage is faster.',
    '',
    '## Block I/O over NBD (fio ioengine=nbd)',
    '',
    ...summaryTable(matrix),
    '',
    '## pstorage by kind of data',
    '',
    '4 KiB random writes at QD32 on their own preconditioned region; ratios against the nbdkit servers\' unique-data 4 KiB random write at QD32.',
    '',
    ...dataTable(data),
    '',
    ...filesystemSection(report),
    '',
    '## Charts',
    '',
    ...chartFiles.map((file) => `![${file.replace(/\.(svg|png)$/, '')}](${file})`),
    '',
    '## Every figure',
    '',
    ...detailTable(report.block),
    '',
    ...methodSection(report),
    '',
    ...experimentSections(report),
    '## Problems seen during the run',
    '',
    ...(report.problems.length === 0 ? ['None.'] : report.problems.map((problem) => `- ${problem.replace(/\n/g, ' ')}`)),
    '',
  ];
  return lines.join('\n');
}
