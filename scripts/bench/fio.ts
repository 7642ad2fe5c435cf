/**
 * Running fio and reading its JSON. fio's nbd engine prints "fio: connected to NBD server" on
 * standard output, so the JSON always goes to a file (--output) and is parsed from there.
 * `parseFioJson` is pure; `runFio` wraps one run with the server's CPU time before and after.
 */
import fs from 'node:fs';
import { cpuSeconds, runCommand } from './processes.js';

export interface LatencyUs {
  p50: number | null;
  p99: number | null;
  p999: number | null;
}

export interface Measurement {
  iops: number;
  bytesPerSecond: number;
  ioBytes: number;
  runtimeSeconds: number;
  /** Total latency (submission to completion) percentiles, in microseconds. */
  latencyUs: LatencyUs;
}

export interface RunRecord extends Measurement {
  serverCpuSeconds: number;
  /** Server CPU seconds per GiB moved by fio; null when nothing moved. */
  serverCpuSecondsPerGiB: number | null;
  /** Other processes whose CPU time is worth knowing (nbdfuse in the filesystem jobs). */
  extraCpuSeconds?: Record<string, number>;
  wallSeconds: number;
  fioArgs: string[];
}

export interface FailedRun {
  error: string;
  fioArgs: string[];
  wallSeconds: number;
}

export type RunOutcome = RunRecord | FailedRun;

export function isFailed(run: RunOutcome): run is FailedRun {
  return 'error' in run;
}

const GiB = 1024 ** 3;

interface FioDirection {
  io_bytes: number;
  bw_bytes: number;
  iops: number;
  total_ios?: number;
  lat_ns?: { percentile?: Record<string, number> };
  clat_ns?: { percentile?: Record<string, number> };
}

interface FioJob {
  error: number;
  job_runtime: number;
  read: FioDirection;
  write: FioDirection;
  trim?: FioDirection;
  mixed?: FioDirection;
}

function percentileUs(direction: FioDirection, key: string): number | null {
  const table = direction.lat_ns?.percentile ?? direction.clat_ns?.percentile;
  const valueNs = table?.[key];
  return valueNs === undefined || valueNs === 0 ? null : valueNs / 1000;
}

/** Reads the first job of fio's JSON output (the group when --group_reporting is on). */
export function parseFioJson(text: string): Measurement {
  // fio may put a warning line before the JSON in the same file: start at the first brace.
  const document = JSON.parse(text.slice(text.indexOf('{'))) as { jobs: FioJob[] };
  const job = document.jobs[0];
  if (job === undefined) throw new Error('fio wrote no job results');
  if (job.error !== 0) throw new Error(`fio reported error ${job.error}`);
  const directions = job.mixed ? [job.mixed] : [job.read, job.write, ...(job.trim ? [job.trim] : [])];
  const busiest = directions.reduce((best, direction) => (direction.io_bytes > best.io_bytes ? direction : best));
  return {
    iops: directions.reduce((sum, direction) => sum + direction.iops, 0),
    bytesPerSecond: directions.reduce((sum, direction) => sum + direction.bw_bytes, 0),
    ioBytes: directions.reduce((sum, direction) => sum + direction.io_bytes, 0),
    runtimeSeconds: job.job_runtime / 1000,
    latencyUs: { p50: percentileUs(busiest, '50.000000'), p99: percentileUs(busiest, '99.000000'), p999: percentileUs(busiest, '99.900000') },
  };
}

export interface FioRunOptions {
  args: string[];
  outputPath: string;
  /** Processes whose CPU time is measured around the run; the first is the server. */
  serverPid: number;
  extraPids?: Record<string, number>;
  timeoutMs: number;
}

/** Runs fio once; a fio failure or a stall past the time limit is a FailedRun, not an exception. */
export async function runFio(options: FioRunOptions): Promise<RunOutcome> {
  const cpuBefore = cpuSeconds(options.serverPid);
  const extraBefore = mapValues(options.extraPids ?? {}, cpuSeconds);
  const result = await runCommand('fio', options.args, { timeoutMs: options.timeoutMs });
  const serverCpu = safeCpu(options.serverPid) - cpuBefore;
  const extraCpu = mapValues(options.extraPids ?? {}, (pid, name) => safeCpu(pid) - extraBefore[name]!);
  const failed = (error: string): FailedRun => ({ error, fioArgs: options.args, wallSeconds: result.wallSeconds });
  if (result.timedOut) return failed(`fio did not finish within ${options.timeoutMs / 1000} s (the server stalled?) and was killed`);
  if (result.code !== 0) return failed(`fio exited with ${result.code ?? result.signal}: ${lastLines(result.stderr || result.stdout)}`);
  let measurement: Measurement;
  try {
    measurement = parseFioJson(fs.readFileSync(options.outputPath, 'utf8'));
  } catch (error) {
    return failed(`could not read fio's results: ${(error as Error).message}`);
  }
  return {
    ...measurement,
    serverCpuSeconds: serverCpu,
    serverCpuSecondsPerGiB: measurement.ioBytes > 0 ? serverCpu / (measurement.ioBytes / GiB) : null,
    ...(options.extraPids ? { extraCpuSeconds: extraCpu } : {}),
    wallSeconds: result.wallSeconds,
    fioArgs: options.args,
  };
}

function safeCpu(pid: number): number {
  try {
    return cpuSeconds(pid);
  } catch {
    return Number.NaN;
  }
}

function mapValues<T>(record: Record<string, number>, map: (value: number, key: string) => T): Record<string, T> {
  return Object.fromEntries(Object.entries(record).map(([key, value]) => [key, map(value, key)]));
}

function lastLines(text: string): string {
  return text.trim().split('\n').slice(-5).join(' | ');
}
