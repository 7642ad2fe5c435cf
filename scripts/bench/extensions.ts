/**
 * Experiments 3-5 of the benchmark issue, beside the fio matrix: data reduction on realistic
 * data sets, flash write amplification, memory and recovery. Each lives in its own module under
 * experiments/ and is one function taking an ExperimentContext and returning an
 * ExperimentResult, which bench.ts stores under `extensions` in results.json, renders as a
 * section of results.md (`markdown`) and writes charts for (`charts`, SVG by file name; PNG
 * copies are made like the block charts').
 *
 * `--experiments a,b` picks which run (default all; `none` for none); in --quick mode each one
 * shrinks to a smoke-test size.
 */
import type { RunOutcome } from './fio.js';
import type { ServerId } from './jobs.js';
import type { BenchOptions } from './options.js';
import type { RunningServer } from './servers.js';
import { runReductionDatasets } from './experiments/reduction.js';
import { runWriteAmplification } from './experiments/flash.js';
import { runMemoryAndRecovery } from './experiments/memory-recovery.js';

export interface ExperimentContext {
  options: BenchOptions;
  repoRoot: string;
  /** The servers of the matrix, running (an experiment that needs a fresh array starts its own). */
  servers: ReadonlyMap<ServerId, RunningServer>;
  /** The matrix pstorage's data directory. */
  pstorageDataDir: string;
  /** A directory of the experiment's own inside the work directory, removed at the end. */
  scratchDir: string;
  /** Runs fio with the given arguments (JSON output to `outputPath`) and measures the server's CPU. */
  runFio(serverId: ServerId, args: string[], outputPath: string): Promise<RunOutcome>;
  /** Registers something to undo at the end or on SIGINT (servers started, mounts...). */
  cleanup(description: string, action: () => Promise<void>): void;
  log(message: string): void;
}

export interface ExperimentResult {
  status: 'not-implemented' | 'ok' | 'failed';
  /** What the experiment measures, for the report. */
  purpose: string;
  note?: string;
  /** The measurements, as plain JSON. */
  data?: unknown;
  /** Lines of results.md for this experiment (tables, the command, how it was measured). */
  markdown?: string[];
  /** SVG documents by file name (e.g. "wa-vs-op.svg"), written beside the block charts. */
  charts?: Record<string, string>;
}

export type Experiment = (context: ExperimentContext) => Promise<ExperimentResult>;

export const EXPERIMENTS: Record<string, Experiment> = {
  reduction: runReductionDatasets,
  flash: runWriteAmplification,
  memory: runMemoryAndRecovery,
};
