/**
 * EXTENSION POINTS: experiments 3-5 of the benchmark issue, which need the log-structured storage
 * engine (dedup, compression, garbage collection, recovery) and are NOT IMPLEMENTED yet.
 *
 * Each experiment is one function taking an ExperimentContext (the running servers, a way to run
 * fio against any of them with CPU accounting, the options and a scratch directory) and returning
 * an ExperimentResult, which bench.ts stores under `extensions` in results.json and lists in
 * results.md. Implementing one means filling in its function here; nothing else has to change.
 * Until then each returns status "not-implemented" with what it is meant to measure.
 */
import type { RunOutcome } from './fio.js';
import type { ServerId } from './jobs.js';
import type { BenchOptions } from './options.js';
import type { RunningServer } from './servers.js';

export interface ExperimentContext {
  options: BenchOptions;
  servers: ReadonlyMap<ServerId, RunningServer>;
  /** pstorage's data directory, e.g. to measure the bytes it really stores. */
  pstorageDataDir: string;
  scratchDir: string;
  /** Runs fio with the given arguments (JSON output to `outputPath`) and measures the server's CPU. */
  runFio(serverId: ServerId, args: string[], outputPath: string): Promise<RunOutcome>;
  log(message: string): void;
}

export interface ExperimentResult {
  status: 'not-implemented' | 'ok' | 'failed';
  /** What the experiment measures, for the report. */
  purpose: string;
  note?: string;
  data?: unknown;
}

function notImplemented(purpose: string): ExperimentResult {
  return { status: 'not-implemented', purpose, note: 'needs the log-structured storage engine; extension point in scripts/bench/extensions.ts' };
}

/**
 * Experiment 3, reduction datasets: write realistic data sets (VM images, logs, databases,
 * already-compressed media) and report the dedup ratio, compression ratio and throughput of each.
 */
export async function runReductionDatasets(_context: ExperimentContext): Promise<ExperimentResult> {
  return notImplemented('data reduction (dedup x compression) and throughput on realistic data sets');
}

/**
 * Experiment 4, write amplification: sustained random overwrites at several fill levels and
 * over-provisioning settings; NAND bytes written per host byte over time, and throughput while
 * garbage collection runs.
 */
export async function runWriteAmplification(_context: ExperimentContext): Promise<ExperimentResult> {
  return notImplemented('write amplification and throughput under garbage collection, by fill level');
}

/**
 * Experiment 5, memory and recovery: server memory per TiB of logical data, and the time to
 * reopen the data directory after a clean stop and after SIGKILL.
 */
export async function runMemoryAndRecovery(_context: ExperimentContext): Promise<ExperimentResult> {
  return notImplemented('memory per logical TiB, and recovery time after a clean stop and after SIGKILL');
}

export const EXPERIMENTS: Record<string, (context: ExperimentContext) => Promise<ExperimentResult>> = {
  reductionDatasets: runReductionDatasets,
  writeAmplification: runWriteAmplification,
  memoryAndRecovery: runMemoryAndRecovery,
};
