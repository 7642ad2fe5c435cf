/**
 * The benchmark run, phase by phase:
 *
 *   1. start pstorage on a fresh data directory, then nbdkit memory and nbdkit file (a sparse
 *      file on the same filesystem) with the same export size, checked with nbdinfo;
 *   2. precondition every server's test region the same way (jobs.ts says how);
 *   3. the block matrix and pstorage's data-pattern jobs, all servers side by side, alternating
 *      A B C / C B A per job and per repetition;
 *   4. ext4 end to end on each server (filesystem.ts);
 *   5. the experiments (extensions.ts): reduction data sets, flash write amplification, memory
 *      and recovery (--no-matrix skips 2-4 and runs only these);
 *   6. stop the servers (by PID), then write results.json, results.md and the charts.
 *
 * Everything set up is registered on a CleanupStack the caller runs, so servers, mounts, loop
 * devices and the work directory go away on failure and on SIGINT too.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomInt } from 'node:crypto';
import { renderCharts } from './charts.js';
import { describeMachine, preflight } from './environment.js';
import { EXPERIMENTS, type ExperimentContext, type ExperimentResult } from './extensions.js';
import { setupFilesystem, unmountAndCheck, type FilesystemStack } from './filesystem.js';
import { isFailed, runFio, type RunOutcome } from './fio.js';
import {
  DATA_JOBS,
  FILESYSTEM_JOBS,
  MATRIX_JOBS,
  PRECONDITIONING_TEXT,
  SERVER_IDS,
  dedupSourceArgs,
  fileTarget,
  fioArgs,
  layoutBytes,
  nbdTarget,
  preconditionArgs,
  regionOffsetBytes,
  type JobSpec,
  type ServerId,
} from './jobs.js';
import { renderMarkdown } from './markdown.js';
import type { BenchOptions } from './options.js';
import { CleanupStack, peakRssBytes, runCommand, type StopResult } from './processes.js';
import { REPORT_SCHEMA, formatLatency, type BenchReport, type FilesystemReport, type ServerInfo } from './report.js';
import { exportSizeBytes, startNbdkit, startPstorage, type RunningServer } from './servers.js';
import { buildJobResults, runKey } from './stats.js';
import { formatCompact } from './svg-chart.js';

export class BenchSetupError extends Error {}

export interface BenchContext {
  repoRoot: string;
  commandLine: string;
  cleanup: CleanupStack;
  log(message: string): void;
}

interface RunState {
  options: BenchOptions;
  context: BenchContext;
  workDir: string;
  fioDir: string;
  servers: Map<ServerId, RunningServer>;
  duplicateSeed: number;
  problems: string[];
  preconditioning: Map<ServerId, { text: string; seconds: number }>;
  progress: { done: number; total: number };
}

const PRECONDITION_TIMEOUT_MS = 30 * 60_000;

export async function runBench(options: BenchOptions, context: BenchContext): Promise<BenchReport> {
  const check = await preflight({ repoRoot: context.repoRoot, filesystem: options.filesystem && options.matrix });
  if (check.errors.length > 0) throw new BenchSetupError(check.errors.join('\n'));
  const startedAt = new Date();
  fs.mkdirSync(path.join(options.outDir, 'fio'), { recursive: true });
  fs.mkdirSync(options.workDir, { recursive: true });
  const workDir = fs.mkdtempSync(path.join(options.workDir, 'pstorage-bench-'));
  context.cleanup.push(`work directory ${workDir}`, async () => {
    if (options.keepWorkDir) context.log(`kept the work directory ${workDir}`);
    else fs.rmSync(workDir, { recursive: true, force: true });
  });
  const machine = await describeMachine(context.repoRoot, options.workDir);
  const state: RunState = {
    options,
    context,
    workDir,
    fioDir: path.join(options.outDir, 'fio'),
    servers: new Map(),
    duplicateSeed: randomInt(1, 2 ** 31),
    problems: [],
    preconditioning: new Map(),
    progress: { done: 0, total: countRuns(options) },
  };
  const exportBytes = await startServers(state);
  const blockJobs = options.matrix ? [...MATRIX_JOBS, ...DATA_JOBS] : [];
  if (options.matrix) await preconditionAll(state);
  else for (const id of SERVER_IDS) state.preconditioning.set(id, { text: 'none (--no-matrix)', seconds: 0 });
  const blockRuns = await runMatrix(state, blockJobs, (job, server) => nbdTarget(server.uri, regionOffsetBytes(job.region, options.sizeBytes), options.sizeBytes));
  const filesystem = await runFilesystemPhase(state, options.matrix ? check.filesystemUnavailable : 'skipped with --no-matrix');
  const extensions = await runExtensions(state);
  const servers = await stopServers(state, exportBytes);
  machine.loadAverageAtEnd = os.loadavg();
  const block = buildJobResults(blockJobs, blockRuns);
  collectRunProblems(state, block.flatMap((result) => Object.entries(result.results).map(([id, r]) => ({ jobId: result.job.id, id, runs: r!.runs }))));
  const report: BenchReport = {
    schema: REPORT_SCHEMA,
    title: `pstorage benchmark: side by side with nbdkit memory and nbdkit file`,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    durationSeconds: (Date.now() - startedAt.getTime()) / 1000,
    commandLine: context.commandLine,
    options,
    machine,
    layout: describeLayout(options.sizeBytes),
    duplicateSeed: state.duplicateSeed,
    alternation: 'A B C for one job, C B A for the next, and the reverse again in the next repetition',
    servers,
    block,
    filesystem,
    extensions,
    problems: state.problems,
    files: [],
  };
  writeOutputs(report, context.log);
  return report;
}

function countRuns(options: BenchOptions): number {
  const perRepetition = (jobs: readonly JobSpec[]): number => jobs.reduce((sum, job) => sum + job.servers.length, 0);
  const filesystemRuns = options.filesystem ? perRepetition(FILESYSTEM_JOBS) : 0;
  if (!options.matrix) return 0;
  return options.repeat * (perRepetition(MATRIX_JOBS) + perRepetition(DATA_JOBS) + filesystemRuns);
}

function describeLayout(regionBytes: number): BenchReport['layout'] {
  return {
    regionBytes,
    regions: {
      main: { offsetBytes: regionOffsetBytes('main', regionBytes), purpose: 'the matrix jobs, on every server' },
      'dedup-source': { offsetBytes: regionOffsetBytes('dedup-source', regionBytes), purpose: 'pstorage: the data the duplicate job copies' },
      data: { offsetBytes: regionOffsetBytes('data', regionBytes), purpose: 'pstorage: the data-pattern jobs' },
    },
  };
}

async function startServers(state: RunState): Promise<number> {
  const { options, context, workDir } = state;
  context.log('starting pstorage, nbdkit memory and nbdkit file');
  const pstorage = await register(state, startPstorage({ repoRoot: context.repoRoot, dataDir: path.join(workDir, 'pstorage-data'), workDir, transport: options.transport }));
  const sizeBytes = await exportSizeBytes(pstorage.uri);
  const filePath = path.join(workDir, 'nbdkit-file.img');
  fs.closeSync(fs.openSync(filePath, 'wx'));
  fs.truncateSync(filePath, sizeBytes);
  await register(state, startNbdkit({ id: 'nbdkit-memory', sizeBytes, workDir, transport: options.transport }));
  await register(state, startNbdkit({ id: 'nbdkit-file', sizeBytes, filePath, workDir, transport: options.transport }));
  for (const server of state.servers.values()) {
    const seen = await exportSizeBytes(server.uri);
    if (seen !== sizeBytes) throw new Error(`${server.label} exports ${seen} bytes, pstorage ${sizeBytes}: the sizes must match`);
  }
  if (layoutBytes(options.sizeBytes) > sizeBytes || options.filesystemBytes > sizeBytes) {
    throw new BenchSetupError(`the export is ${sizeBytes} bytes: --size ${options.sizeBytes} needs ${layoutBytes(options.sizeBytes)} and --fs-size ${options.filesystemBytes} must fit too`);
  }
  return sizeBytes;
}

async function register(state: RunState, starting: Promise<RunningServer>): Promise<RunningServer> {
  const server = await starting;
  state.servers.set(server.id, server);
  state.context.cleanup.push(`stop ${server.label}`, async () => void (await server.stop()));
  return server;
}

/** Runs one preconditioning fio; a failure here makes every later figure meaningless, so it throws. */
async function precondition(state: RunState, server: RunningServer, args: string[], outputPath: string): Promise<number> {
  const outcome = await runFio({ args, outputPath, serverPid: server.pid, timeoutMs: PRECONDITION_TIMEOUT_MS });
  if (isFailed(outcome)) throw new Error(`preconditioning ${server.label} failed: ${outcome.error}\n  fio ${outcome.fioArgs.join(' ')}`);
  state.context.log(`  ${server.label}: ${formatCompact(outcome.iops)} IOPS, ${outcome.runtimeSeconds.toFixed(1)} s (${path.basename(outputPath)})`);
  return outcome.wallSeconds;
}

async function preconditionAll(state: RunState): Promise<void> {
  const { options } = state;
  const size = options.sizeBytes;
  state.context.log(`preconditioning: ${PRECONDITIONING_TEXT[options.precondition]}`);
  for (const id of SERVER_IDS) {
    const server = state.servers.get(id)!;
    const file = (name: string): string => path.join(state.fioDir, `precondition-${name}@${id}.json`);
    let seconds = await precondition(state, server, preconditionArgs(options.precondition, nbdTarget(server.uri, 0, size), file('main'), 'unique', 0), file('main'));
    let text = `main region: ${PRECONDITIONING_TEXT[options.precondition]}`;
    if (id === 'pstorage') {
      seconds += await precondition(state, server, dedupSourceArgs(nbdTarget(server.uri, regionOffsetBytes('dedup-source', size), size), file('dedup-source'), state.duplicateSeed), file('dedup-source'));
      seconds += await precondition(state, server, preconditionArgs(options.precondition, nbdTarget(server.uri, regionOffsetBytes('data', size), size), file('data'), 'unique', 0), file('data'));
      text += `; then the dedup-source region written once by the duplicate job's own fio command (seed ${state.duplicateSeed}) and the data-pattern region preconditioned like the main one`;
    }
    state.preconditioning.set(id, { text, seconds });
  }
}

type TargetFor = (job: JobSpec, server: RunningServer) => ReturnType<typeof nbdTarget>;

/** Every job on every server it names, `repeat` times, alternating the server order. */
async function runMatrix(state: RunState, jobs: readonly JobSpec[], targetFor: TargetFor, extraPids?: (server: RunningServer) => Record<string, number>): Promise<Map<string, RunOutcome[]>> {
  const { options } = state;
  const runs = new Map<string, RunOutcome[]>();
  for (let repetition = 0; repetition < options.repeat; repetition++) {
    for (const [index, job] of jobs.entries()) {
      const order = (repetition + index) % 2 === 0 ? SERVER_IDS : [...SERVER_IDS].reverse();
      for (const id of order.filter((candidate) => job.servers.includes(candidate))) {
        const server = state.servers.get(id)!;
        const outputPath = path.join(state.fioDir, `${job.id}@${id}-r${repetition + 1}.json`);
        const args = fioArgs(job, targetFor(job, server), { runtimeSeconds: options.runtimeSeconds, outputPath, duplicateSeed: state.duplicateSeed, compressPercent: options.compressPercent });
        const outcome = await runFio({ args, outputPath, serverPid: server.pid, ...(extraPids ? { extraPids: extraPids(server) } : {}), timeoutMs: (options.runtimeSeconds + 60) * 1000 });
        runs.set(runKey(job.id, id), [...(runs.get(runKey(job.id, id)) ?? []), outcome]);
        reportProgress(state, job, server, repetition, outcome);
      }
    }
  }
  return runs;
}

function reportProgress(state: RunState, job: JobSpec, server: RunningServer, repetition: number, outcome: RunOutcome): void {
  state.progress.done++;
  const { done, total } = state.progress;
  const figure = isFailed(outcome) ? `FAILED: ${outcome.error}` : `${formatCompact(outcome.iops)} IOPS, ${(outcome.bytesPerSecond / 1024 ** 2).toFixed(0)} MiB/s, p99 ${formatLatency(outcome.latencyUs.p99)}`;
  state.context.log(`[${String(done).padStart(String(total).length)}/${total}] ${job.id} on ${server.label} (run ${repetition + 1}/${state.options.repeat}): ${figure}`);
}

async function runFilesystemPhase(state: RunState, unavailable: string | null): Promise<FilesystemReport> {
  const { options } = state;
  const report: FilesystemReport = { skipped: unavailable, filesystemBytes: options.filesystemBytes, testFileBytes: options.sizeBytes, jobs: [], setupSeconds: {}, fsck: {} };
  if (unavailable !== null) return report;
  const undo = new CleanupStack();
  state.context.cleanup.push('filesystem stacks', () => undo.runAll(state.context.log));
  try {
    const stacks = new Map<ServerId, FilesystemStack>();
    for (const id of SERVER_IDS) {
      const stack = await setupFilesystem(state.servers.get(id)!, state.workDir, options.filesystemBytes, (label, step) => undo.push(label, step));
      stacks.set(id, stack);
      report.setupSeconds[id] = stack.setupSeconds;
      await preconditionFile(state, stack);
    }
    const runs = await runMatrix(state, FILESYSTEM_JOBS, (_job, server) => fileTarget(stacks.get(server.id)!.testFile, options.sizeBytes), (server) => ({ nbdfuse: stacks.get(server.id)!.nbdfuse.pid! }));
    report.jobs = buildJobResults(FILESYSTEM_JOBS, runs);
    collectRunProblems(state, report.jobs.flatMap((result) => Object.entries(result.results).map(([id, r]) => ({ jobId: result.job.id, id, runs: r!.runs }))));
    for (const [id, stack] of stacks) {
      const check = await unmountAndCheck(stack);
      report.fsck[id] = { clean: check.fsckClean, output: check.fsckOutput };
      if (!check.fsckClean) state.problems.push(`e2fsck -fn found problems in the ext4 on ${stack.server.label}: ${check.fsckOutput}`);
    }
  } finally {
    await undo.runAll(state.context.log);
  }
  return report;
}

/** The test file, written once with 4 KiB random writes at QD16 before the filesystem jobs. */
async function preconditionFile(state: RunState, stack: FilesystemStack): Promise<void> {
  const outputPath = path.join(state.fioDir, `precondition-fs@${stack.server.id}.json`);
  const target = fileTarget(stack.testFile, state.options.sizeBytes);
  const args = preconditionArgs('rand4k', target, outputPath, 'unique', 0).map((arg) => (arg === '--iodepth=32' ? '--iodepth=16' : arg));
  state.context.log(`ext4 on ${stack.server.label} ready after ${stack.setupSeconds.toFixed(1)} s; writing the test file`);
  await precondition(state, stack.server, args, outputPath);
}

async function runExtensions(state: RunState): Promise<Record<string, ExperimentResult>> {
  // Each experiment's directory is WORK/NAME, short, as the arrays' management sockets live inside.
  const scratchDir = state.workDir;
  const context: ExperimentContext = {
    options: state.options,
    repoRoot: state.context.repoRoot,
    servers: state.servers,
    pstorageDataDir: path.join(state.workDir, 'pstorage-data'),
    scratchDir,
    runFio: (serverId, args, outputPath) => runFio({ args, outputPath, serverPid: state.servers.get(serverId)!.pid, timeoutMs: PRECONDITION_TIMEOUT_MS }),
    cleanup: (description, action) => state.context.cleanup.push(description, action),
    log: state.context.log,
  };
  const results: Record<string, ExperimentResult> = {};
  for (const name of state.options.experiments) {
    const experiment = EXPERIMENTS[name]!;
    const started = Date.now();
    state.context.log(`experiment ${name}: starting`);
    fs.mkdirSync(path.join(scratchDir, name), { recursive: true });
    try {
      results[name] = await experiment({ ...context, scratchDir: path.join(scratchDir, name) });
      state.context.log(`experiment ${name}: ${results[name]!.status} after ${((Date.now() - started) / 1000).toFixed(0)} s`);
      if (results[name]!.status === 'failed') state.problems.push(`experiment ${name} failed: ${results[name]!.note ?? 'no reason given'}`);
    } catch (error) {
      results[name] = { status: 'failed', purpose: name, note: (error as Error).message };
      state.problems.push(`experiment ${name} failed: ${(error as Error).message}`);
    }
  }
  return results;
}

/** Bytes allocated on disk under `target` (du), or null if it cannot be measured. */
async function allocatedBytes(target: string): Promise<number | null> {
  const result = await runCommand('du', ['-s', '-B1', target], { timeoutMs: 60_000 });
  return result.code === 0 ? Number(result.stdout.split(/\s/)[0]) : null;
}

async function stopServers(state: RunState, exportBytes: number): Promise<ServerInfo[]> {
  const infos: ServerInfo[] = [];
  for (const id of SERVER_IDS) {
    const server = state.servers.get(id)!;
    state.problems.push(...server.problems());
    const peakRss = peakRssBytes(server.pid);
    const stop: StopResult = await server.stop();
    if (stop.killed || stop.code !== 0) state.problems.push(`${server.label} did not stop cleanly on SIGTERM: ${stop.killed ? 'killed after the grace period' : `exit ${stop.code ?? stop.signal}`}`);
    const store = id === 'pstorage' ? path.join(state.workDir, 'pstorage-data') : id === 'nbdkit-file' ? path.join(state.workDir, 'nbdkit-file.img') : null;
    const preconditioning = state.preconditioning.get(id)!;
    const logFile = path.join(state.options.outDir, path.basename(server.logPath));
    fs.copyFileSync(server.logPath, logFile);
    infos.push({
      id,
      label: server.label,
      command: server.command.map((word) => (word === process.execPath ? 'node' : word)).join(' '),
      uri: server.uri,
      exportSizeBytes: exportBytes,
      preconditioning: preconditioning.text,
      preconditioningSeconds: preconditioning.seconds,
      storedBytesAtEnd: store === null ? null : await allocatedBytes(store),
      peakRssBytes: peakRss,
      startupLog: server.startupLog(),
      stop,
      logFile: path.basename(logFile),
    });
  }
  return infos;
}

function collectRunProblems(state: RunState, entries: { jobId: string; id: string; runs: RunOutcome[] }[]): void {
  for (const entry of entries) {
    for (const run of entry.runs) if (isFailed(run)) state.problems.push(`${entry.jobId} on ${entry.id}: ${run.error}`);
  }
}

/** results.json, results.md, the SVG charts and (with rsvg-convert) PNG copies, into options.outDir. */
export function writeOutputs(report: BenchReport, log: (message: string) => void): void {
  const outDir = report.options.outDir;
  const charts: Record<string, string> = { ...renderCharts(report) };
  for (const result of Object.values(report.extensions)) Object.assign(charts, result.charts ?? {});
  const chartFiles: string[] = [];
  for (const [name, svg] of Object.entries(charts)) {
    fs.writeFileSync(path.join(outDir, name), svg);
    chartFiles.push(name);
  }
  const pngFiles = report.options.png ? convertToPng(outDir, chartFiles, log) : [];
  report.files = ['results.json', 'results.md', ...chartFiles, ...pngFiles];
  fs.writeFileSync(path.join(outDir, 'results.md'), renderMarkdown(report, pngFiles.length === chartFiles.length ? pngFiles : chartFiles));
  fs.writeFileSync(path.join(outDir, 'results.json'), JSON.stringify(report, null, 2) + '\n');
}

/** PNG copies of the charts when rsvg-convert (Debian librsvg2-bin) is installed; none otherwise. */
function convertToPng(outDir: string, svgFiles: readonly string[], log: (message: string) => void): string[] {
  const pngFiles: string[] = [];
  for (const svg of svgFiles) {
    const png = svg.replace(/\.svg$/, '.png');
    // Synchronous on purpose: a handful of small files, after all measurements are done.
    const result = spawnSync('rsvg-convert', ['--zoom', '1.5', '--output', path.join(outDir, png), path.join(outDir, svg)], { timeout: 60_000 });
    if (result.error !== undefined) break;
    if (result.status === 0) pngFiles.push(png);
  }
  if (pngFiles.length === 0) log('no PNG copies of the charts: install librsvg2-bin (rsvg-convert) for them');
  return pngFiles;
}
