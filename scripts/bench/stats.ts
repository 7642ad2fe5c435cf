/**
 * Medians over repetitions and the ratios of pstorage to each nbdkit server. Pure functions.
 * Each figure is the median of that figure over the successful repetitions (so the median IOPS
 * and the median p99 may come from different repetitions); min and max IOPS show the spread.
 */
import { isFailed, type LatencyUs, type RunOutcome, type RunRecord } from './fio.js';
import { REFERENCE_SERVER_IDS, type JobSpec, type ServerId } from './jobs.js';

export interface Summary {
  repetitions: number;
  failures: number;
  iops: number;
  iopsMin: number;
  iopsMax: number;
  mibPerSecond: number;
  latencyUs: LatencyUs;
  serverCpuSecondsPerGiB: number | null;
}

export interface ServerResult {
  summary: Summary | null;
  runs: RunOutcome[];
}

export interface Ratio {
  /** pstorage's job and the reference server's job (differs for the data-pattern jobs). */
  jobId: string;
  referenceJobId: string;
  /** pstorage IOPS / reference IOPS (the same as the MiB/s ratio): above 1 is faster. */
  iops: number | null;
  /** pstorage p99 latency / reference p99 latency: below 1 is better. */
  p99Latency: number | null;
  /** pstorage CPU per GiB / reference CPU per GiB: below 1 is cheaper. */
  serverCpuPerGiB: number | null;
}

export interface JobResult {
  job: JobSpec;
  results: Partial<Record<ServerId, ServerResult>>;
  /** Keyed "pstorage/nbdkit-memory" and "pstorage/nbdkit-file". */
  ratios: Record<string, Ratio>;
}

export function median(values: readonly number[]): number | null {
  const sorted = values.filter((value) => Number.isFinite(value)).sort((a, b) => a - b);
  if (sorted.length === 0) return null;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

function medianOf(runs: readonly RunRecord[], pick: (run: RunRecord) => number | null): number | null {
  return median(runs.map(pick).filter((value): value is number => value !== null));
}

export function summarize(outcomes: readonly RunOutcome[]): Summary | null {
  const runs = outcomes.filter((run): run is RunRecord => !isFailed(run));
  if (runs.length === 0) return null;
  const iops = runs.map((run) => run.iops);
  return {
    repetitions: runs.length,
    failures: outcomes.length - runs.length,
    iops: median(iops)!,
    iopsMin: Math.min(...iops),
    iopsMax: Math.max(...iops),
    mibPerSecond: medianOf(runs, (run) => run.bytesPerSecond / 1024 ** 2)!,
    latencyUs: {
      p50: medianOf(runs, (run) => run.latencyUs.p50),
      p99: medianOf(runs, (run) => run.latencyUs.p99),
      p999: medianOf(runs, (run) => run.latencyUs.p999),
    },
    serverCpuSecondsPerGiB: medianOf(runs, (run) => run.serverCpuSecondsPerGiB),
  };
}

function quotient(numerator: number | null | undefined, denominator: number | null | undefined): number | null {
  if (numerator === null || numerator === undefined || denominator === null || denominator === undefined || denominator === 0) return null;
  return numerator / denominator;
}

export function ratio(jobId: string, pstorage: Summary | null, referenceJobId: string, reference: Summary | null): Ratio {
  return {
    jobId,
    referenceJobId,
    iops: quotient(pstorage?.iops, reference?.iops),
    p99Latency: quotient(pstorage?.latencyUs.p99, reference?.latencyUs.p99),
    serverCpuPerGiB: quotient(pstorage?.serverCpuSecondsPerGiB, reference?.serverCpuSecondsPerGiB),
  };
}

/**
 * Summaries and ratios for every job. A pstorage-only job is compared with its baseline job on
 * the reference servers (unique 4 KiB random writes at QD32 for the data-pattern jobs).
 */
export function buildJobResults(jobs: readonly JobSpec[], runs: ReadonlyMap<string, RunOutcome[]>): JobResult[] {
  const key = runKey;
  const summaries = new Map<string, Summary | null>();
  for (const job of jobs) for (const serverId of job.servers) summaries.set(key(job.id, serverId), summarize(runs.get(key(job.id, serverId)) ?? []));
  return jobs.map((job) => {
    const results: Partial<Record<ServerId, ServerResult>> = {};
    for (const serverId of job.servers) results[serverId] = { summary: summaries.get(key(job.id, serverId)) ?? null, runs: runs.get(key(job.id, serverId)) ?? [] };
    const ratios: Record<string, Ratio> = {};
    if (job.servers.includes('pstorage')) {
      for (const referenceId of REFERENCE_SERVER_IDS) {
        const referenceJobId = job.servers.includes(referenceId) ? job.id : job.baselineJobId;
        if (referenceJobId === undefined) continue;
        ratios[`pstorage/${referenceId}`] = ratio(job.id, summaries.get(key(job.id, 'pstorage')) ?? null, referenceJobId, summaries.get(key(referenceJobId, referenceId)) ?? null);
      }
    }
    return { job, results, ratios };
  });
}

export function runKey(jobId: string, serverId: ServerId): string {
  return `${jobId}@${serverId}`;
}
