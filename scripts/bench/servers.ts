/**
 * The three NBD servers under test, started the same way and seen through one interface, so the
 * benchmark talks to pstorage only over NBD and its command line: when the storage engine replaces
 * the sparse-file backend, nothing here changes.
 *
 * - pstorage: `node bin/pstorage.js serve` on a fresh data directory.
 * - nbdkit memory: no storage work at all, the ceiling of an NBD server on this machine.
 * - nbdkit file: a sparse file on the same filesystem as pstorage's data directory, the plain
 *   persistent peer (buffered I/O, like the sparse-file backend).
 *
 * Each logs to its own file in the work directory; pstorage's JSON log lines of level warn or
 * error are reported as problems.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { ServerId } from './jobs.js';
import { isRunning, runCommand, sleep, stopChild, type StopResult } from './processes.js';

export type Transport = 'tcp' | 'unix';

export interface RunningServer {
  id: ServerId;
  label: string;
  pid: number;
  /** libnbd URI of the export under test. */
  uri: string;
  command: string[];
  logPath: string;
  child: ChildProcess;
  /** Problems seen so far: unexpected exit, warn/error log lines. */
  problems(): string[];
  /** pstorage's "data directory created/opened" log record (capacity, recovery time...), else null. */
  startupLog(): Record<string, unknown> | null;
  stop(): Promise<StopResult>;
}

export const SERVER_LABELS: Record<ServerId, string> = {
  pstorage: 'pstorage',
  'nbdkit-memory': 'nbdkit memory',
  'nbdkit-file': 'nbdkit file',
};

const START_TIMEOUT_MS = 30_000;
/** pstorage flushes on SIGTERM; give it time to write back gigabytes of page cache. */
const STOP_GRACE_MS = 60_000;

/** A free TCP port on 127.0.0.1, found by binding port 0 and closing again. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function logToFile(child: ChildProcess, logPath: string): { text: () => string } {
  const sink = fs.createWriteStream(logPath);
  let text = '';
  for (const stream of [child.stdout, child.stderr]) {
    stream?.setEncoding('utf8');
    stream?.on('data', (chunk: string) => {
      text += chunk;
      sink.write(chunk);
    });
  }
  child.once('close', () => sink.end());
  return { text: () => text };
}

function exitProblem(id: ServerId, child: ChildProcess, stopping: () => boolean): string[] {
  if (isRunning(child) || stopping()) return [];
  return [`${id} exited during the benchmark (code ${child.exitCode}, signal ${child.signalCode}); see its log`];
}

/** Problems in pstorage's JSON log: every line of level warn or error, and any non-JSON line. */
export function pstorageLogProblems(logText: string): string[] {
  const problems: string[] = [];
  for (const line of logText.split('\n')) {
    if (line.trim() === '' || line.startsWith('pstorage: serving')) continue;
    try {
      const record = JSON.parse(line) as { level?: string; msg?: string };
      if (record.level === 'warn' || record.level === 'error') problems.push(`pstorage logged ${record.level}: ${line}`);
    } catch {
      problems.push(`pstorage wrote a non-JSON line: ${line.slice(0, 300)}`);
    }
  }
  return problems;
}

/** The first "data directory ..." record of pstorage's log, kept whole for the report. */
export function startupRecord(logText: string): Record<string, unknown> | null {
  for (const line of logText.split('\n')) {
    if (!line.includes('"msg":"data directory')) continue;
    try {
      return JSON.parse(line) as Record<string, unknown>;
    } catch {
      return null;
    }
  }
  return null;
}

/**
 * `extraArgs` go after `serve` (e.g. `--capacity 32G`); `name` keeps several instances' socket and
 * log files apart in one work directory (default "pstorage").
 */
export async function startPstorage(options: { repoRoot: string; dataDir: string; workDir: string; transport: Transport; extraArgs?: readonly string[]; name?: string }): Promise<RunningServer> {
  const name = options.name ?? 'pstorage';
  const socketPath = path.join(options.workDir, `${name}.sock`);
  const listenArgs = options.transport === 'tcp' ? ['--listen', '127.0.0.1:0'] : ['--listen', 'none', '--socket', socketPath];
  const command = [process.execPath, path.join(options.repoRoot, 'bin/pstorage.js'), 'serve', '--data-dir', options.dataDir, ...listenArgs, ...(options.extraArgs ?? [])];
  const child = spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PSTORAGE_LOG: 'info' } });
  const logPath = path.join(options.workDir, `${name}.log`);
  const log = logToFile(child, logPath);
  let port: number | null;
  try {
    port = await waitForListening(child, log.text);
  } catch (error) {
    // Started but not serving (timeout, bad arguments): do not leave it behind.
    await stopChild(child, 5_000);
    throw error;
  }
  const uri = options.transport === 'tcp' ? `nbd://127.0.0.1:${port}/default` : `nbd+unix:///default?socket=${socketPath}`;
  let stopping = false;
  return {
    id: 'pstorage',
    label: SERVER_LABELS.pstorage,
    pid: child.pid!,
    uri,
    command,
    logPath,
    child,
    problems: () => [...exitProblem('pstorage', child, () => stopping), ...pstorageLogProblems(log.text())],
    startupLog: () => startupRecord(log.text()),
    stop: () => {
      stopping = true;
      return stopChild(child, STOP_GRACE_MS);
    },
  };
}

/** Resolves with the TCP port from pstorage's "listening" log line (null when TCP is off). */
function waitForListening(child: ChildProcess, logText: () => string): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`pstorage did not start within ${START_TIMEOUT_MS / 1000} s:\n${logText()}`)), START_TIMEOUT_MS);
    const check = (): void => {
      const line = logText()
        .split('\n')
        .find((candidate) => candidate.includes('"msg":"listening"'));
      if (line === undefined) return;
      clearTimeout(timer);
      child.stderr?.off('data', check);
      const record = JSON.parse(line) as { tcp: string[] };
      resolve(record.tcp.length > 0 ? Number(record.tcp[0]!.split(':').pop()) : null);
    };
    child.stderr?.on('data', check);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`pstorage exited while starting (code ${code}, signal ${signal}):\n${logText()}`));
    });
  });
}

export async function startNbdkit(options: { id: 'nbdkit-memory' | 'nbdkit-file'; sizeBytes: number; filePath?: string; workDir: string; transport: Transport }): Promise<RunningServer> {
  const socketPath = path.join(options.workDir, `${options.id}.sock`);
  const port = options.transport === 'tcp' ? await freePort() : null;
  const listenArgs = port !== null ? ['-i', '127.0.0.1', '-p', String(port)] : ['-U', socketPath];
  const pluginArgs = options.id === 'nbdkit-memory' ? ['memory', `size=${options.sizeBytes}`] : ['file', `file=${options.filePath!}`];
  // -f: stay in the foreground so the PID is nbdkit's own; --exit-with-parent: never outlive us.
  const command = ['nbdkit', '-f', '--exit-with-parent', ...listenArgs, ...pluginArgs];
  const child = spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const logPath = path.join(options.workDir, `${options.id}.log`);
  const log = logToFile(child, logPath);
  const uri = port !== null ? `nbd://127.0.0.1:${port}/default` : `nbd+unix:///default?socket=${socketPath}`;
  await waitForExport(uri, child, log.text);
  let stopping = false;
  return {
    id: options.id,
    label: SERVER_LABELS[options.id],
    pid: child.pid!,
    uri,
    command,
    logPath,
    child,
    problems: () => [
      ...exitProblem(options.id, child, () => stopping),
      ...log
        .text()
        .split('\n')
        .filter((line) => /error/i.test(line))
        .map((line) => `${options.id} logged: ${line}`),
    ],
    startupLog: () => null,
    stop: () => {
      stopping = true;
      return stopChild(child, STOP_GRACE_MS);
    },
  };
}

async function waitForExport(uri: string, child: ChildProcess, logText: () => string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (!isRunning(child)) throw new Error(`nbdkit exited while starting (code ${child.exitCode}):\n${logText()}`);
    const probe = await runCommand('nbdinfo', ['--size', uri], { timeoutMs: 5_000 });
    if (probe.code === 0) return;
    await sleep(100);
  }
  throw new Error(`nbdkit did not serve ${uri} within ${START_TIMEOUT_MS / 1000} s:\n${logText()}`);
}

/** The export size as a client sees it (nbdinfo --size). */
export async function exportSizeBytes(uri: string): Promise<number> {
  const result = await runCommand('nbdinfo', ['--size', uri], { timeoutMs: 10_000 });
  if (result.code !== 0) throw new Error(`nbdinfo --size ${uri} failed: ${result.stderr.trim()}`);
  return Number(result.stdout.trim());
}
