/**
 * Experiment 5 of the benchmark issue: memory and recovery.
 *
 * Memory. A fresh array (its own data directory, 32 GiB of sparse NAND, the default metadata
 * cache budget) takes one sequential write of unique data (fio `ioengine=nbd`, 1 MiB at QD8,
 * `refill_buffers`, no fixed seed: nothing dedups or compresses) of 20 GiB (256 MiB with
 * --quick). Once a second a sampler reads the server's VmRSS, VmHWM, RssAnon and RssFile from
 * /proc/PID/status and, over the management API's Unix socket, the array's own counters: host
 * bytes written so far (the x axis) and the metadata cache's size, dirty bytes and dedup index
 * entries. The table takes the first sample at or past each step (1 GiB; 32 MiB with --quick).
 *
 * Recovery. A second fresh array is written to 1, 5 and 10 GiB (64 and 128 MiB with --quick),
 * each step ending in a flush. At each size the server is killed with SIGKILL, restarted on the
 * same data directory and timed from spawn to its "listening" log line and to the first
 * `nbdinfo --size` that gets the export, five times in a row (three with --quick); the server's
 * own open and recovery times come from its startup log record. After every restart the first
 * and the last flushed megabytes are read back with fio's crc32c verification (the data was
 * written with verify headers), and once per run a never-written range is "verified" as well,
 * which must fail: a check that cannot fail would prove nothing.
 *
 * The kills hit an idle, flushed server and the page cache stays warm (a process crash, not a
 * power cut); dropping the caches would disturb everything else running on the machine.
 * Everything started here is stopped by its PID, on success, on failure and on SIGINT.
 */
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ExperimentContext, ExperimentResult } from '../extensions.js';
import { isFailed, runFio, type RunRecord } from '../fio.js';
import { isRunning, runCommand, sleep, waitForExit } from '../processes.js';
import { formatBytes } from '../report.js';
import { startPstorage, type RunningServer } from '../servers.js';
import { median } from '../stats.js';
import { renderBarChart, type BarChart, type ChartBar } from '../svg-chart.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const PURPOSE = 'resident memory over a 20 GiB unique write; time to serve again after SIGKILL with 1, 5 and 10 GiB stored';
/** The management API's socket inside a data directory (src/mgmt/api-server.ts, API_SOCKET_NAME). */
const API_SOCKET_NAME = 'pstorage.sock';
const CAPACITY = '32G';
const SAMPLE_INTERVAL_MS = 1000;
const SERVE_TIMEOUT_MS = 30_000;
const WRITE_BLOCK = '1M';
const WRITE_IODEPTH = 8;
const COLORS = { rss: '#d4691c', cache: '#4a7fb5', served: '#d4691c', listening: '#e9a66f', server: '#4a7fb5' };

interface Plan {
  quick: boolean;
  memoryBytes: number;
  /** Rows of the memory table and bars of its chart. */
  memoryStepBytes: number;
  idleAfterWriteMs: number;
  recoveryStoredBytes: number[];
  killsPerSize: number;
  /** Bytes read back and verified at each end of the flushed data after every restart. */
  verifyBytes: number;
}

function planFor(quick: boolean): Plan {
  return quick
    ? { quick, memoryBytes: 256 * MiB, memoryStepBytes: 32 * MiB, idleAfterWriteMs: 3000, recoveryStoredBytes: [64 * MiB, 128 * MiB], killsPerSize: 3, verifyBytes: 8 * MiB }
    : { quick, memoryBytes: 20 * GiB, memoryStepBytes: GiB, idleAfterWriteMs: 10_000, recoveryStoredBytes: [GiB, 5 * GiB, 10 * GiB], killsPerSize: 5, verifyBytes: 64 * MiB };
}

// ---------------------------------------------------------------------------------------------
// Reading the server: /proc and the management API.

interface ProcMemory {
  rssBytes: number;
  hwmBytes: number;
  rssAnonBytes: number;
  rssFileBytes: number;
}

/** VmRSS, VmHWM, RssAnon and RssFile of a process, or null once it is gone. */
function readProcMemory(pid: number): ProcMemory | null {
  let status: string;
  try {
    status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rssBytes: field('VmRSS'), hwmBytes: field('VmHWM'), rssAnonBytes: field('RssAnon'), rssFileBytes: field('RssFile') };
}

/** The part of the array's `GET /api/v1/metrics` that this experiment reads. */
interface ArrayMetrics {
  hostBytesWritten: number;
  logicalBytes: number;
  physicalBytes: number;
  cache?: { mapBytes: number; chunkBytes: number; dedupEntries: number; dirtyBytes: number };
}

/** The array's metrics over its API socket; null when it does not answer within 2 s. */
function fetchMetrics(dataDir: string): Promise<ArrayMetrics | null> {
  return new Promise((resolve) => {
    // agent: false, so that no keep-alive connection delays the server's shutdown.
    const request = http.get({ socketPath: path.join(dataDir, API_SOCKET_NAME), path: '/api/v1/metrics', agent: false, timeout: 2000 }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => {
        try {
          resolve(response.statusCode === 200 ? (JSON.parse(body) as ArrayMetrics) : null);
        } catch {
          resolve(null);
        }
      });
    });
    request.on('timeout', () => request.destroy());
    request.on('error', () => resolve(null));
  });
}

interface MemorySample extends ProcMemory {
  seconds: number;
  hostBytesWritten: number | null;
  cacheBytes: number | null;
  dirtyBytes: number | null;
  dedupEntries: number | null;
}

async function takeSample(pid: number, dataDir: string, startedAt: number): Promise<MemorySample | null> {
  const [memory, metrics] = [readProcMemory(pid), await fetchMetrics(dataDir)];
  if (memory === null) return null;
  const cache = metrics?.cache;
  return {
    seconds: (Date.now() - startedAt) / 1000,
    ...memory,
    hostBytesWritten: metrics?.hostBytesWritten ?? null,
    cacheBytes: cache ? cache.mapBytes + cache.chunkBytes : null,
    dirtyBytes: cache?.dirtyBytes ?? null,
    dedupEntries: cache?.dedupEntries ?? null,
  };
}

/** Samples every SAMPLE_INTERVAL_MS until stop() resolves; one sample at a time, never overlapping. */
function startSampler(pid: number, dataDir: string): { samples: MemorySample[]; stop: () => Promise<void> } {
  const samples: MemorySample[] = [];
  const startedAt = Date.now();
  let stopping = false;
  const loop = (async () => {
    while (!stopping) {
      const tickAt = Date.now();
      const sample = await takeSample(pid, dataDir, startedAt);
      if (sample !== null) samples.push(sample);
      await sleep(Math.max(0, SAMPLE_INTERVAL_MS - (Date.now() - tickAt)));
    }
  })();
  return {
    samples,
    stop: async () => {
      stopping = true;
      await loop;
      const last = await takeSample(pid, dataDir, startedAt);
      if (last !== null) samples.push(last);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Servers and fio.

/** The one pstorage this experiment runs at a time, stopped by its PID at the end or on SIGINT. */
class ServerSlot {
  current: RunningServer | null = null;
  private starts = 0;

  constructor(private readonly context: ExperimentContext) {
    context.cleanup('memory experiment: pstorage', () => this.stop());
  }

  /** Starts pstorage on `dataDir`; each start logs to its own file (and Unix socket). */
  async start(dataDir: string, label: string): Promise<RunningServer> {
    this.starts++;
    const name = `${label}-${this.starts}`;
    this.current = await startPstorage({ repoRoot: this.context.repoRoot, dataDir, workDir: this.context.scratchDir, transport: this.context.options.transport, extraArgs: ['--capacity', CAPACITY], name });
    return this.current;
  }

  async kill(): Promise<void> {
    const server = this.current;
    if (server === null || !isRunning(server.child)) throw new Error('pstorage is not running: it cannot be killed');
    process.kill(server.pid, 'SIGKILL');
    if (!(await waitForExit(server.child, 10_000))) throw new Error(`pstorage (PID ${server.pid}) still runs 10 s after SIGKILL`);
  }

  async stop(): Promise<void> {
    const server = this.current;
    this.current = null;
    if (server !== null && isRunning(server.child)) await server.stop();
  }
}

function writeArgs(uri: string, offsetBytes: number, sizeBytes: number, outputPath: string, verifiable: boolean): string[] {
  return [
    '--name=memory-recovery-write',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=write',
    `--bs=${WRITE_BLOCK}`,
    `--iodepth=${WRITE_IODEPTH}`,
    `--offset=${offsetBytes}`,
    `--size=${sizeBytes}`,
    '--refill_buffers=1',
    '--randrepeat=0',
    // A crc32c header in every block lets a later read check it; the block stays random data.
    // verify_state_save=0: fio would otherwise leave a *-verify.state file in its working directory.
    ...(verifiable ? ['--verify=crc32c', '--do_verify=0', '--verify_state_save=0'] : []),
    '--end_fsync=1',
    '--output-format=json',
    `--output=${outputPath}`,
  ];
}

function verifyArgs(uri: string, offsetBytes: number, sizeBytes: number): string[] {
  return ['--name=memory-recovery-verify', '--ioengine=nbd', `--uri=${uri}`, '--rw=read', `--bs=${WRITE_BLOCK}`, `--iodepth=${WRITE_IODEPTH}`, `--offset=${offsetBytes}`, `--size=${sizeBytes}`, '--verify=crc32c', '--output-format=json'];
}

/** Generous: 5 MiB/s would be far below anything seen on this machine. */
function writeTimeoutMs(sizeBytes: number): number {
  return Math.max(10 * 60_000, (sizeBytes / (5 * MiB)) * 1000);
}

async function writeOrThrow(server: RunningServer, offsetBytes: number, sizeBytes: number, outputPath: string, verifiable: boolean): Promise<RunRecord> {
  const args = writeArgs(server.uri, offsetBytes, sizeBytes, outputPath, verifiable);
  const outcome = await runFio({ args, outputPath, serverPid: server.pid, timeoutMs: writeTimeoutMs(sizeBytes) });
  if (isFailed(outcome)) throw new Error(`writing ${formatBytes(sizeBytes)} at ${formatBytes(offsetBytes)} failed: ${outcome.error}`);
  if (outcome.ioBytes !== sizeBytes) throw new Error(`fio wrote ${outcome.ioBytes} bytes, not ${sizeBytes}`);
  return outcome;
}

/** Reads a range back with fio's crc32c verification; ok only if every byte was read and checked. */
async function verifyRange(uri: string, offsetBytes: number, sizeBytes: number): Promise<{ ok: boolean; detail: string }> {
  const result = await runCommand('fio', verifyArgs(uri, offsetBytes, sizeBytes), { timeoutMs: 5 * 60_000 });
  let readBytes = 0;
  try {
    readBytes = (JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))) as { jobs: { read: { io_bytes: number } }[] }).jobs[0]!.read.io_bytes;
  } catch {
    // No JSON: fio failed early; the exit code says so.
  }
  const ok = result.code === 0 && readBytes === sizeBytes;
  const firstError = (result.stderr || result.stdout).split('\n').find((line) => /verify|error/i.test(line)) ?? `exit ${result.code ?? result.signal}`;
  return { ok, detail: ok ? `${formatBytes(sizeBytes)} at ${formatBytes(offsetBytes)} verified` : `${formatBytes(sizeBytes)} at ${formatBytes(offsetBytes)}: ${firstError.trim().slice(0, 200)}` };
}

async function growDefaultVolume(context: ExperimentContext, dataDir: string, needBytes: number): Promise<void> {
  const sizeGiB = Math.ceil(needBytes / GiB) + 4;
  const args = [path.join(context.repoRoot, 'bin/pstorage.js'), 'volume', 'resize', 'default', '--size', `${sizeGiB}G`, '--data-dir', dataDir];
  const result = await runCommand(process.execPath, args, { timeoutMs: 60_000 });
  if (result.code !== 0) throw new Error(`pstorage volume resize failed: ${(result.stderr || result.stdout).trim()}`);
}

/** The default volume (16 GiB on a new array) grown through the running server when too small. */
async function ensureVolumeSize(context: ExperimentContext, server: RunningServer, dataDir: string, needBytes: number): Promise<void> {
  if ((await exportSize(server.uri)) >= needBytes) return;
  await growDefaultVolume(context, dataDir, needBytes);
  const sizeBytes = await exportSize(server.uri);
  if (sizeBytes < needBytes) throw new Error(`the default volume is ${formatBytes(sizeBytes)} after the resize; ${formatBytes(needBytes)} are needed`);
}

async function exportSize(uri: string): Promise<number> {
  const result = await runCommand('nbdinfo', ['--size', uri], { timeoutMs: 10_000 });
  if (result.code !== 0) throw new Error(`nbdinfo --size ${uri} failed: ${result.stderr.trim()}`);
  return Number(result.stdout.trim());
}

/** The cache budget the servers run with: PSTORAGE_CACHE_MB if set, else `serve --help`'s default. */
async function cacheBudget(repoRoot: string): Promise<{ mib: number | null; source: string }> {
  const fromEnv = process.env.PSTORAGE_CACHE_MB;
  if (fromEnv !== undefined && fromEnv !== '') return { mib: Number(fromEnv), source: 'PSTORAGE_CACHE_MB in the environment (NOT the default)' };
  const help = await runCommand(process.execPath, [path.join(repoRoot, 'bin/pstorage.js'), 'serve', '--help'], { timeoutMs: 30_000 });
  const match = /--cache-mb[\s\S]*?\(default:\s*(\d+)\)/.exec(help.stdout);
  return { mib: match ? Number(match[1]) : null, source: 'the default of `pstorage serve` (no --cache-mb)' };
}

// ---------------------------------------------------------------------------------------------
// Phase 1: memory over one long unique write.

interface MemoryRow {
  label: string;
  targetBytes: number | null;
  sample: MemorySample;
}

interface MemoryPhase {
  writtenBytes: number;
  writeSeconds: number;
  mibPerSecond: number;
  serverCpuSecondsPerGiB: number | null;
  peakRssBytes: number;
  samples: MemorySample[];
  rows: MemoryRow[];
  fioArgs: string[];
  serverCommand: string[];
  stopSeconds: number;
}

async function runMemoryPhase(context: ExperimentContext, slot: ServerSlot, plan: Plan): Promise<MemoryPhase> {
  const dataDir = path.join(context.scratchDir, 'memory-data');
  const server = await slot.start(dataDir, 'memory');
  await ensureVolumeSize(context, server, dataDir, plan.memoryBytes);
  await sleep(2000); // let start-up settle, so that the first row is the idle array
  const sampler = startSampler(server.pid, dataDir);
  context.log(`memory: writing ${formatBytes(plan.memoryBytes)} of unique data to a fresh array (PID ${server.pid})`);
  const outputPath = path.join(context.scratchDir, 'memory-write.json');
  let outcome: RunRecord;
  try {
    outcome = await writeOrThrow(server, 0, plan.memoryBytes, outputPath, false);
    await sleep(plan.idleAfterWriteMs);
  } finally {
    await sampler.stop();
  }
  const peakRssBytes = readProcMemory(server.pid)?.hwmBytes ?? Math.max(...sampler.samples.map((sample) => sample.hwmBytes));
  const command = server.command;
  const stop = await server.stop();
  slot.current = null;
  fs.rmSync(dataDir, { recursive: true, force: true });
  return {
    writtenBytes: outcome.ioBytes,
    writeSeconds: outcome.runtimeSeconds,
    mibPerSecond: outcome.bytesPerSecond / MiB,
    serverCpuSecondsPerGiB: outcome.serverCpuSecondsPerGiB,
    peakRssBytes,
    samples: sampler.samples,
    rows: memoryRows(sampler.samples, plan, outcome.runtimeSeconds),
    fioArgs: outcome.fioArgs,
    serverCommand: command,
    stopSeconds: stop.stopSeconds,
  };
}

/** The idle array, the first sample at or past each step, and the array idle after the write. */
function memoryRows(samples: readonly MemorySample[], plan: Plan, writeSeconds: number): MemoryRow[] {
  const rows: MemoryRow[] = [];
  if (samples.length === 0) return rows;
  rows.push({ label: 'before writing', targetBytes: 0, sample: samples[0]! });
  for (let target = plan.memoryStepBytes; target <= plan.memoryBytes; target += plan.memoryStepBytes) {
    const sample = samples.find((candidate) => (candidate.hostBytesWritten ?? -1) >= target);
    if (sample !== undefined) rows.push({ label: formatBytes(target), targetBytes: target, sample });
  }
  const writeEnd = samples[0]!.seconds + writeSeconds;
  rows.push({ label: `idle ${(samples[samples.length - 1]!.seconds - writeEnd).toFixed(0)} s after`, targetBytes: null, sample: samples[samples.length - 1]! });
  return rows;
}

// ---------------------------------------------------------------------------------------------
// Phase 2: SIGKILL and restart at growing sizes.

interface RestartTrial {
  spawnToListeningMs: number;
  spawnToServedMs: number;
  nbdinfoAttempts: number;
  serverRecoveryMs: number | null;
  serverOpenMs: number | null;
  verified: boolean;
  checks: string[];
  /** The machine's 1-minute load average right after the restart: this machine is shared. */
  loadAverage1m: number;
}

interface RecoveryPoint {
  storedTargetBytes: number;
  physicalBytes: number | null;
  onDiskBytes: number | null;
  trials: RestartTrial[];
  medians: { spawnToServedMs: number | null; spawnToListeningMs: number | null; serverRecoveryMs: number | null; serverOpenMs: number | null };
}

interface RecoveryPhase {
  /** Median wall time of `node bin/pstorage.js --version`: Node's start-up and module loading alone. */
  cliStartMs: number | null;
  points: RecoveryPoint[];
  negativeControl: { ok: boolean; detail: string } | null;
  writeFioArgs: string[];
}

/** Kills the server, starts it again on `dataDir` and times it until a client gets the export. */
async function killAndRestart(slot: ServerSlot, dataDir: string): Promise<{ server: RunningServer; trial: Omit<RestartTrial, 'verified' | 'checks' | 'loadAverage1m'> }> {
  await slot.kill();
  const spawnedAt = process.hrtime.bigint();
  const elapsedMs = (): number => Number(process.hrtime.bigint() - spawnedAt) / 1e6;
  const server = await slot.start(dataDir, 'recovery');
  const spawnToListeningMs = elapsedMs();
  let attempts = 0;
  for (;;) {
    attempts++;
    const probe = await runCommand('nbdinfo', ['--size', server.uri], { timeoutMs: 5_000 });
    if (probe.code === 0) break;
    if (elapsedMs() > SERVE_TIMEOUT_MS || !isRunning(server.child)) throw new Error(`pstorage did not serve ${server.uri} within ${SERVE_TIMEOUT_MS / 1000} s of its restart: ${probe.stderr.trim()}`);
    await sleep(20);
  }
  const spawnToServedMs = elapsedMs();
  const startup = server.startupLog();
  const numberOrNull = (value: unknown): number | null => (typeof value === 'number' ? value : null);
  return { server, trial: { spawnToListeningMs, spawnToServedMs, nbdinfoAttempts: attempts, serverRecoveryMs: numberOrNull(startup?.recoveryMs), serverOpenMs: numberOrNull(startup?.openMs) } };
}

/** The first and the last `verifyBytes` of what was flushed before the kill must read back intact. */
async function checkData(uri: string, writtenBytes: number, verifyBytes: number): Promise<{ verified: boolean; checks: string[] }> {
  const size = Math.min(verifyBytes, writtenBytes);
  const results = [await verifyRange(uri, 0, size), await verifyRange(uri, writtenBytes - size, size)];
  return { verified: results.every((result) => result.ok), checks: results.map((result) => result.detail) };
}

async function allocatedBytes(target: string): Promise<number | null> {
  const result = await runCommand('du', ['-s', '-B1', target], { timeoutMs: 60_000 });
  return result.code === 0 ? Number(result.stdout.split(/\s/)[0]) : null;
}

function medianOf(trials: readonly RestartTrial[], pick: (trial: RestartTrial) => number | null): number | null {
  return median(trials.map(pick).filter((value): value is number => value !== null));
}

async function measurePoint(context: ExperimentContext, slot: ServerSlot, plan: Plan, dataDir: string, storedTargetBytes: number): Promise<RecoveryPoint> {
  const physicalBytes = (await fetchMetrics(dataDir))?.physicalBytes ?? null;
  const trials: RestartTrial[] = [];
  for (let kill = 1; kill <= plan.killsPerSize; kill++) {
    const { server, trial } = await killAndRestart(slot, dataDir);
    const data = await checkData(server.uri, storedTargetBytes, plan.verifyBytes);
    trials.push({ ...trial, ...data, loadAverage1m: os.loadavg()[0]! });
    context.log(`recovery: ${formatBytes(storedTargetBytes)} stored, kill ${kill}: served after ${trial.spawnToServedMs.toFixed(0)} ms (server: recovery ${trial.serverRecoveryMs} ms, open ${trial.serverOpenMs} ms); data ${data.verified ? 'intact' : 'DAMAGED'}`);
    if (!data.verified) throw new Error(`data flushed before SIGKILL did not read back after the restart: ${data.checks.join('; ')}`);
  }
  return {
    storedTargetBytes,
    physicalBytes,
    onDiskBytes: await allocatedBytes(dataDir),
    trials,
    medians: {
      spawnToServedMs: medianOf(trials, (trial) => trial.spawnToServedMs),
      spawnToListeningMs: medianOf(trials, (trial) => trial.spawnToListeningMs),
      serverRecoveryMs: medianOf(trials, (trial) => trial.serverRecoveryMs),
      serverOpenMs: medianOf(trials, (trial) => trial.serverOpenMs),
    },
  };
}

/** For scale: how long a process that loads the CLI and does nothing else takes here. */
async function cliStartMs(repoRoot: string): Promise<number | null> {
  const times: number[] = [];
  for (let run = 0; run < 3; run++) {
    const result = await runCommand(process.execPath, [path.join(repoRoot, 'bin/pstorage.js'), '--version'], { timeoutMs: 30_000 });
    if (result.code === 0) times.push(result.wallSeconds * 1000);
  }
  return median(times);
}

async function runRecoveryPhase(context: ExperimentContext, slot: ServerSlot, plan: Plan, recorded: RecoveryPhase): Promise<void> {
  recorded.cliStartMs = await cliStartMs(context.repoRoot);
  const dataDir = path.join(context.scratchDir, 'recovery-data');
  const largest = plan.recoveryStoredBytes[plan.recoveryStoredBytes.length - 1]!;
  let server = await slot.start(dataDir, 'recovery');
  // Room for the data and, past it, the never-written range of the negative control.
  await ensureVolumeSize(context, server, dataDir, largest + 2 * plan.verifyBytes);
  let writtenBytes = 0;
  for (const target of plan.recoveryStoredBytes) {
    context.log(`recovery: writing up to ${formatBytes(target)} (verifiable unique data, then a flush)`);
    const outcome = await writeOrThrow(server, writtenBytes, target - writtenBytes, path.join(context.scratchDir, `recovery-write-${target}.json`), true);
    recorded.writeFioArgs = outcome.fioArgs;
    writtenBytes = target;
    recorded.points.push(await measurePoint(context, slot, plan, dataDir, target));
    server = slot.current!;
    if (recorded.negativeControl === null) {
      recorded.negativeControl = await verifyRange(server.uri, writtenBytes + plan.verifyBytes, MiB);
      if (recorded.negativeControl.ok) throw new Error(`the data check cannot fail: a never-written range passed fio's verification (${recorded.negativeControl.detail})`);
    }
  }
  await slot.stop();
}

// ---------------------------------------------------------------------------------------------
// Report: tables, charts, data.

const mib = (bytes: number | null): string => (bytes === null || !Number.isFinite(bytes) ? 'n/a' : `${(bytes / MiB).toFixed(0)} MiB`);
const ms = (value: number | null): string => (value === null ? 'n/a' : `${value.toFixed(0)} ms`);
const range = (trials: readonly RestartTrial[], pick: (trial: RestartTrial) => number | null): string => {
  const values = trials.map(pick).filter((value): value is number => value !== null);
  return values.length === 0 ? '' : ` (${Math.min(...values).toFixed(0)}–${Math.max(...values).toFixed(0)})`;
};

function commandLine(words: readonly string[]): string {
  return words.map((word) => (word === process.execPath ? 'node' : /[\s?&]/.test(word) ? `'${word}'` : word)).join(' ');
}

function memoryMarkdown(phase: MemoryPhase, budget: { mib: number | null; source: string }): string[] {
  const lines = [
    '### Resident memory during one long write of unique data',
    '',
    `A fresh array (\`--capacity ${CAPACITY}\`, sparse NAND; metadata cache budget ${budget.mib ?? '?'} MiB, ${budget.source}) took one sequential write of ${formatBytes(phase.writtenBytes)} of unique data: fio \`ioengine=nbd\`, ${WRITE_BLOCK} blocks at QD${WRITE_IODEPTH}, ${phase.mibPerSecond.toFixed(0)} MiB/s, ${phase.writeSeconds.toFixed(0)} s, ${phase.serverCpuSecondsPerGiB?.toFixed(1) ?? 'n/a'} server CPU s/GiB. Once a second: VmRSS, VmHWM, RssAnon and RssFile from /proc/PID/status, and the array's counters over its management API (bytes written so far; metadata cache = map + chunk pages held; dirty bytes; dedup index entries). Each row is the first sample at or past its size.`,
    '',
    `**Peak RSS (VmHWM): ${mib(phase.peakRssBytes)}** over ${phase.samples.length} samples.`,
    '',
    '| written | RSS | anon | file | peak so far | metadata cache | dirty | dedup entries | time |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const { label, sample } of phase.rows) {
    lines.push(`| ${label} | ${mib(sample.rssBytes)} | ${mib(sample.rssAnonBytes)} | ${mib(sample.rssFileBytes)} | ${mib(sample.hwmBytes)} | ${mib(sample.cacheBytes)} | ${mib(sample.dirtyBytes)} | ${sample.dedupEntries ?? 'n/a'} | ${sample.seconds.toFixed(0)} s |`);
  }
  lines.push('', `Server: \`${commandLine(phase.serverCommand)}\``, '', `fio: \`fio ${commandLine(phase.fioArgs)}\``, '');
  return lines;
}

/** Growth of the median server-reported recovery time from the smallest to the largest size. */
function recoverySlopeMsPerGiB(points: readonly RecoveryPoint[]): number | null {
  const [first, last] = [points[0], points[points.length - 1]];
  // Over less than a GiB the difference is mostly noise: no slope then.
  if (first === undefined || last === undefined || last.storedTargetBytes - first.storedTargetBytes < GiB) return null;
  const [from, to] = [first.medians.serverRecoveryMs, last.medians.serverRecoveryMs];
  return from === null || to === null ? null : (to - from) / ((last.storedTargetBytes - first.storedTargetBytes) / GiB);
}

function recoveryRow(point: RecoveryPoint): string {
  const bytes = (value: number | null): string => (value === null ? 'n/a' : formatBytes(value));
  const first = point.trials[0];
  const cells = [
    `${formatBytes(point.storedTargetBytes)} / ${bytes(point.physicalBytes)} / ${bytes(point.onDiskBytes)}`,
    `**${ms(point.medians.spawnToServedMs)}**${range(point.trials, (trial) => trial.spawnToServedMs)}`,
    `${ms(point.medians.spawnToListeningMs)}${range(point.trials, (trial) => trial.spawnToListeningMs)}`,
    `${ms(point.medians.serverRecoveryMs)}${range(point.trials, (trial) => trial.serverRecoveryMs)}`,
    ms(point.medians.serverOpenMs),
    `${ms(first?.spawnToServedMs ?? null)} / ${ms(first?.serverRecoveryMs ?? null)}`,
    `${point.trials.filter((trial) => trial.verified).length}/${point.trials.length} intact`,
  ];
  return `| ${cells.join(' | ')} |`;
}

function recoveryMarkdown(phase: RecoveryPhase, plan: Plan): string[] {
  const lines = [
    '### Time to serve again after SIGKILL',
    '',
    `A second fresh array was written sequentially with unique data carrying fio crc32c verify headers, each step ending in a flush. At each size the idle server was killed with SIGKILL and restarted on the same data directory, ${plan.killsPerSize} times in a row; medians, min–max in brackets. *Client* = from spawning \`pstorage serve\` to the first \`nbdinfo --size\` that got the export (includes Node's start-up and nbdinfo's own ~10–20 ms). *Listening* = to its "listening" log line. *Server* = \`recoveryMs\` / \`openMs\` of its "data directory opened" log record. After every restart the first and last ${formatBytes(plan.verifyBytes)} of the flushed data were read back with \`fio --verify=crc32c\`. Warm page cache (a process crash, not a power cut).`,
    '',
    '| stored (written / live NAND / on disk) | client: spawn → served | spawn → listening | server: recovery | server: open | first kill after the write: client / server | data after restart |',
    '|---|---:|---:|---:|---:|---:|---|',
  ];
  for (const point of phase.points) lines.push(recoveryRow(point));
  const loads = phase.points.flatMap((point) => point.trials.map((trial) => trial.loadAverage1m));
  if (loads.length > 0) lines.push('', `1-minute load average of the (shared, ${os.cpus().length}-CPU) machine during the restarts: ${Math.min(...loads).toFixed(1)}–${Math.max(...loads).toFixed(1)}.`);
  const slope = recoverySlopeMsPerGiB(phase.points);
  if (slope !== null) lines.push('', `Server-reported recovery (median) grows by ${slope.toFixed(1)} ms per GiB stored between the smallest and the largest size.`);
  const control = phase.negativeControl;
  lines.push('', `For scale: \`node bin/pstorage.js --version\` (Node's start-up and loading the CLI's modules, no array) takes ${ms(phase.cliStartMs)} here (median of 3).`);
  lines.push('', `Negative control: fio's verification of a never-written 1 MiB range ${control === null ? 'was not run' : control.ok ? 'PASSED (so the check proves nothing)' : 'failed, as it must'}.`, '');
  if (phase.writeFioArgs.length > 0) lines.push(`Writes: \`fio ${commandLine(phase.writeFioArgs)}\` (offset and size per step); checks: \`fio ${commandLine(verifyArgs('URI', 0, plan.verifyBytes))}\`.`, '');
  return lines;
}

function footnote(plan: Plan): string {
  return `${plan.quick ? 'quick mode (indicative only) · ' : ''}${os.cpus().length} CPUs, ${os.cpus()[0]?.model ?? 'unknown CPU'} · Node ${process.version} · ${new Date().toISOString().slice(0, 10)}`;
}

function memoryChart(phase: MemoryPhase, budget: { mib: number | null }, plan: Plan): string {
  const chart: BarChart = {
    title: `pstorage: resident memory while writing ${formatBytes(phase.writtenBytes)} of unique data`,
    subtitle: `Fresh array, default metadata cache budget; sequential ${WRITE_BLOCK} writes at QD${WRITE_IODEPTH} over NBD. Peak RSS (VmHWM) ${mib(phase.peakRssBytes)}.`,
    xLabel: 'MiB',
    scale: 'linear',
    series: [
      { id: 'rss', label: 'resident memory (VmRSS)', color: COLORS.rss },
      { id: 'cache', label: 'metadata cache in use (map + chunk pages)', color: COLORS.cache },
    ],
    groups: phase.rows.map(({ label, targetBytes, sample }) => ({
      label: targetBytes === null || targetBytes === 0 ? label : `${label} written`,
      bars: [
        { seriesId: 'rss', value: sample.rssBytes / MiB, text: `${mib(sample.rssBytes)} · peak so far ${mib(sample.hwmBytes)}` },
        { seriesId: 'cache', value: sample.cacheBytes === null ? null : sample.cacheBytes / MiB, text: sample.cacheBytes === null ? 'n/a' : mib(sample.cacheBytes) },
      ] as ChartBar[],
    })),
    referenceLines: budget.mib === null ? [] : [{ value: budget.mib, label: `cache budget ${budget.mib} MiB`, color: COLORS.cache }],
    footnote: footnote(plan),
  };
  return renderBarChart(chart);
}

function recoveryChart(phase: RecoveryPhase, plan: Plan): string {
  const bar = (point: RecoveryPoint, seriesId: string, pick: (trial: RestartTrial) => number | null, value: number | null): ChartBar => {
    const values = point.trials.map(pick).filter((entry): entry is number => entry !== null);
    return { seriesId, value, whiskerMin: values.length ? Math.min(...values) : undefined, whiskerMax: values.length ? Math.max(...values) : undefined, text: ms(value) };
  };
  const chart: BarChart = {
    title: 'pstorage: time to serve again after SIGKILL',
    subtitle: `Kill the idle server, restart it on the same data; median of ${plan.killsPerSize} kills, whiskers min-max. Shorter is better.`,
    xLabel: 'milliseconds',
    scale: 'linear',
    series: [
      { id: 'served', label: 'client: spawn → nbdinfo gets the export', color: COLORS.served },
      { id: 'listening', label: 'spawn → "listening"', color: COLORS.listening },
      { id: 'server', label: 'server-reported recovery', color: COLORS.server },
    ],
    groups: phase.points.map((point) => ({
      label: `${formatBytes(point.storedTargetBytes)} stored`,
      sublabel: point.onDiskBytes === null ? undefined : `${formatBytes(point.onDiskBytes)} on disk`,
      bars: [
        bar(point, 'served', (trial) => trial.spawnToServedMs, point.medians.spawnToServedMs),
        bar(point, 'listening', (trial) => trial.spawnToListeningMs, point.medians.spawnToListeningMs),
        bar(point, 'server', (trial) => trial.serverRecoveryMs, point.medians.serverRecoveryMs),
      ],
    })),
    footnote: `${footnote(plan)} · warm page cache`,
  };
  return renderBarChart(chart);
}

export async function runMemoryAndRecovery(context: ExperimentContext): Promise<ExperimentResult> {
  const plan = planFor(context.options.quick);
  const slot = new ServerSlot(context);
  const budget = await cacheBudget(context.repoRoot);
  let memory: MemoryPhase | null = null;
  const recovery: RecoveryPhase = { cliStartMs: null, points: [], negativeControl: null, writeFioArgs: [] };
  let failure: string | null = null;
  try {
    memory = await runMemoryPhase(context, slot, plan);
    context.log(`memory: peak RSS ${mib(memory.peakRssBytes)} after ${formatBytes(memory.writtenBytes)}`);
    await runRecoveryPhase(context, slot, plan, recovery);
  } catch (error) {
    failure = (error as Error).message;
  } finally {
    await slot.stop();
  }
  const markdown = [...(memory ? memoryMarkdown(memory, budget) : []), ...(recovery.points.length > 0 ? recoveryMarkdown(recovery, plan) : [])];
  const charts: Record<string, string> = {};
  if (memory && memory.rows.length > 0) charts['memory-rss.svg'] = memoryChart(memory, budget, plan);
  if (recovery.points.length > 0) charts['recovery-time.svg'] = recoveryChart(recovery, plan);
  return {
    status: failure === null ? 'ok' : 'failed',
    purpose: PURPOSE,
    ...(failure === null ? {} : { note: failure }),
    data: { plan, cacheBudgetMiB: budget.mib, cacheBudgetSource: budget.source, capacity: CAPACITY, memory, recovery },
    markdown,
    charts,
  };
}
