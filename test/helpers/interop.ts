/**
 * Shared plumbing for the interop tests with real NBD clients (test/interop/): running external
 * tools with a time limit, starting a pstorage server whose cleanup is tied to the ava test,
 * stopping it with the exit-code check, and hashing files.
 *
 * Every helper that starts something registers its cleanup with `t.teardown`, so a failing test
 * still kills its processes and removes its temporary directories, and also with `cleanupOnExit`,
 * so that even a crashed test worker (an uncaught exception skips ava's teardowns) leaves no
 * server, FUSE mount or loop device behind.
 */
import { spawn, spawnSync, type SpawnOptions } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { REPO_ROOT, startPstorage, makeTempDir, type PstorageProcess } from './pstorage-process.js';

/** python3-libnbd imports only under the system interpreter. */
export const SYSTEM_PYTHON = '/usr/bin/python3';
export const INTEROP_DIR = path.join(REPO_ROOT, 'test/interop');
export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
/** The size of the `default` volume a fresh data directory gets. */
export const DEFAULT_EXPORT_BYTES = 16 * GiB;

export interface RunResult {
  command: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  elapsedMs: number;
}

export interface RunOptions {
  timeoutMs?: number;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  input?: string;
}

const exitCleanups = new Set<() => void>();
process.once('exit', () => {
  for (const cleanup of [...exitCleanups].reverse()) {
    try {
      cleanup();
    } catch {
      // Best effort: the process is going away.
    }
  }
});

/**
 * Registers a synchronous cleanup to run if the worker process exits before the test's own
 * teardown did it; returns a function that unregisters it (call it once cleaned up normally).
 */
export function cleanupOnExit(cleanup: () => void): () => void {
  exitCleanups.add(cleanup);
  return () => exitCleanups.delete(cleanup);
}

/** Runs a program to completion (SIGKILL after `timeoutMs`), capturing its output. Never throws for a non-zero exit. */
export function run(program: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  const command = [program, ...args].map((word) => (/^[\w./:=@,+-]+$/.test(word) ? word : JSON.stringify(word))).join(' ');
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const spawnOptions: SpawnOptions = { cwd: options.cwd, env: options.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] };
    const child = spawn(program, args, spawnOptions);
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (text: string) => (stdout += text));
    child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    // A program may exit without reading its input; that is not an error of ours.
    child.stdin!.on('error', () => {});
    if (options.input === undefined) child.stdin!.end();
    else child.stdin!.end(options.input);
    const timeoutMs = options.timeoutMs ?? 60_000;
    const timer = setTimeout(() => {
      stderr += `\n[test harness: killed after ${timeoutMs} ms]`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${command}: ${error.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ command, code, signal, stdout, stderr, elapsedMs: Date.now() - started });
    });
  });
}

export function describeRun(result: RunResult): string {
  const status = result.signal !== null ? `was killed by ${result.signal}` : `exited with code ${result.code}`;
  return `\`${result.command}\` ${status} after ${result.elapsedMs} ms\n--- stdout ---\n${result.stdout.trimEnd()}\n--- stderr ---\n${result.stderr.trimEnd()}`;
}

/** Runs a program that must succeed; throws (failing the test) with its full output otherwise. */
export async function mustRun(program: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  const result = await run(program, args, options);
  if (result.code !== 0) throw new Error(describeRun(result));
  return result;
}

/** Fails the test with a clear message when a client tool is missing (never a silent skip). */
export function requireTools(tools: string[]): void {
  const missing = tools.filter((tool) => spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status !== 0);
  if (missing.length > 0) {
    throw new Error(
      `interop test needs ${missing.join(', ')} on PATH; install the Debian packages listed in scripts/test.sh ` +
        '(libnbd-bin, which ships nbdinfo, nbdsh, nbdcopy and nbdfuse; python3-libnbd nbdkit fuse3 qemu-utils fio xfsprogs e2fsprogs util-linux)',
    );
  }
}

/** A fresh temporary directory, removed when the test ends. */
export function tempDir(t: ExecutionContext, prefix = 'pstorage-interop-'): string {
  const dir = makeTempDir(prefix);
  const remove = () => fs.rmSync(dir, { recursive: true, force: true });
  const unregister = cleanupOnExit(remove);
  t.teardown(() => {
    unregister();
    remove();
  });
  return dir;
}

/**
 * Starts `pstorage serve` for one test. Without `dataDir` it gets a fresh temporary one (removed
 * at teardown); the process is SIGKILLed at teardown if the test did not stop it.
 */
export async function startServer(t: ExecutionContext, options: { dataDir?: string; tcp?: boolean; args?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<PstorageProcess> {
  const dataDir = options.dataDir ?? path.join(tempDir(t), 'data');
  const server = await startPstorage({ dataDir, tcp: options.tcp ?? false, args: options.args, env: options.env });
  const unregister = cleanupOnExit(() => server.child.kill('SIGKILL'));
  t.teardown(async () => {
    unregister();
    if (server.child.exitCode === null && server.child.signalCode === null) await server.stop('SIGKILL');
  });
  return server;
}

/**
 * SIGTERM and assert a clean exit (code 0) within `timeoutMs`; on failure the server's log is in
 * the assertion message.
 */
export async function stopServer(t: ExecutionContext, server: PstorageProcess, timeoutMs = 15_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), timeoutMs)));
  const outcome = await Promise.race([server.stop('SIGTERM'), timedOut]);
  clearTimeout(timer);
  if (outcome === 'timeout') {
    await server.stop('SIGKILL');
    t.fail(`pstorage did not exit within ${timeoutMs} ms of SIGTERM\n${server.logs()}`);
    return;
  }
  t.deepEqual(outcome, { code: 0, signal: null }, `pstorage did not exit cleanly on SIGTERM\n${server.logs()}`);
}

/** Runs one of the Python scripts in test/interop/ under the system interpreter. */
export function runPython(script: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  return run(SYSTEM_PYTHON, [path.join(INTEROP_DIR, script), ...args], options);
}

/** sha256 (hex) of `lengthBytes` bytes of a file from `startBytes` (default: the whole file). */
export function sha256File(file: string, startBytes = 0, lengthBytes?: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    const end = lengthBytes === undefined ? undefined : startBytes + lengthBytes - 1;
    fs.createReadStream(file, { start: startBytes, end, highWaterMark: 4 * MiB })
      .on('data', (chunk) => hash.update(chunk))
      .on('error', reject)
      .on('end', () => resolve(hash.digest('hex')));
  });
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Deterministic pseudo-random bytes (AES-128-CTR keyed by the seed): a logged seed replays a failure. */
export function seededBytes(lengthBytes: number, seed: number): Buffer {
  const key = createHash('sha256').update(`pstorage interop ${seed}`).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const out = Buffer.allocUnsafe(lengthBytes);
  const zeroes = Buffer.alloc(Math.min(lengthBytes, 4 * MiB));
  for (let at = 0; at < lengthBytes; at += zeroes.length) {
    cipher.update(zeroes.subarray(0, Math.min(zeroes.length, lengthBytes - at))).copy(out, at);
  }
  return out;
}

/** Waits until `predicate` holds, polling every 50 ms; throws `message` after `timeoutMs`. */
export async function waitFor(predicate: () => boolean, timeoutMs: number, message: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(message());
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
