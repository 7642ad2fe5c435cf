/**
 * The shape of results.json, and small formatters shared by the Markdown and the charts.
 */
import type { MachineInfo } from './environment.js';
import type { ExperimentResult } from './extensions.js';
import { headlineUnit, type JobSpec, type ServerId } from './jobs.js';
import type { BenchOptions } from './options.js';
import type { JobResult, Summary } from './stats.js';
import type { StopResult } from './processes.js';
import { formatCompact } from './svg-chart.js';

export const REPORT_SCHEMA = 'pstorage-bench/1';

export interface ServerInfo {
  id: ServerId;
  label: string;
  command: string;
  uri: string;
  exportSizeBytes: number;
  /** How this server's volume was filled before the measurements, in words. */
  preconditioning: string;
  preconditioningSeconds: number;
  /** Bytes the backing store holds on disk at the end (du), null for nbdkit memory. */
  storedBytesAtEnd: number | null;
  peakRssBytes: number | null;
  /** pstorage's startup log record (e.g. its physical capacity), null for nbdkit. */
  startupLog: Record<string, unknown> | null;
  stop: StopResult | null;
  logFile: string;
}

export interface FilesystemReport {
  skipped: string | null;
  filesystemBytes: number;
  testFileBytes: number;
  jobs: JobResult[];
  setupSeconds: Partial<Record<ServerId, number>>;
  fsck: Partial<Record<ServerId, { clean: boolean; output: string }>>;
}

export interface BenchReport {
  schema: typeof REPORT_SCHEMA;
  title: string;
  startedAt: string;
  finishedAt: string;
  durationSeconds: number;
  commandLine: string;
  options: BenchOptions;
  machine: MachineInfo;
  layout: { regionBytes: number; regions: Record<string, { offsetBytes: number; purpose: string }> };
  duplicateSeed: number;
  /** Order of servers per job: each repetition and each next job reverses it. */
  alternation: string;
  servers: ServerInfo[];
  block: JobResult[];
  filesystem: FilesystemReport;
  extensions: Record<string, ExperimentResult>;
  problems: string[];
  files: string[];
}

export const SERVER_COLORS: Record<ServerId, string> = {
  'nbdkit-memory': '#9aa5b1',
  'nbdkit-file': '#4e79a7',
  pstorage: '#f28e2b',
};

/** Chart and table order: the ceiling first, then the plain persistent peer, then pstorage. */
export const DISPLAY_ORDER: readonly ServerId[] = ['nbdkit-memory', 'nbdkit-file', 'pstorage'];

export function formatLatency(us: number | null): string {
  if (us === null) return 'n/a';
  if (us >= 1000) return `${Number((us / 1000).toPrecision(3))} ms`;
  return `${Number(us.toPrecision(3))} µs`;
}

/** 1.234 -> "1.23x", 0.0123 -> "0.012x": small ratios keep two significant digits. */
export function formatRatio(value: number | null | undefined): string {
  if (value === null || value === undefined) return 'n/a';
  return value >= 0.1 ? `${value.toFixed(2)}x` : `${Number(value.toPrecision(2))}x`;
}

/** 87.4 -> "87%", 2.34 -> "2.3%", 0.196 -> "0.2%". */
export function formatPercent(value: number): string {
  return value >= 10 ? `${value.toFixed(0)}%` : `${Number(value.toFixed(1))}%`;
}

export function formatMiBps(value: number): string {
  return value >= 100 ? value.toFixed(0) : value.toPrecision(3);
}

/** The headline figure of a job: IOPS for small random I/O, MiB/s for sequential. */
export function formatHeadline(job: JobSpec, summary: Summary | null): string {
  if (summary === null) return 'failed';
  return headlineUnit(job) === 'IOPS' ? `${formatCompact(summary.iops)} IOPS` : `${formatMiBps(summary.mibPerSecond)} MiB/s`;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${Number(value.toPrecision(3))} ${units[unit]}`;
}

/** A short label for chart groups: "4K randwrite QD32", "128K seq read QD8", "4K randwrite 4 x QD8". */
export function shortJobLabel(job: JobSpec): string {
  if (job.chartLabel !== undefined) return job.chartLabel;
  const size = job.blockBytes >= 1024 ** 2 ? `${job.blockBytes / 1024 ** 2}M` : `${job.blockBytes / 1024}K`;
  const kind: Record<JobSpec['rw'], string> = { randread: 'randread', randwrite: 'randwrite', randrw: `randrw ${job.readPercent}/${100 - (job.readPercent ?? 0)}`, read: 'seq read', write: 'seq write' };
  const depth = job.connections > 1 ? `${job.connections} conn x QD${job.iodepth}` : `QD${job.iodepth}`;
  return `${job.group === 'filesystem' ? 'ext4 ' : ''}${size} ${kind[job.rw]} ${depth}`;
}
