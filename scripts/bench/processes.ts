/**
 * Child processes for the benchmark: running a command to completion with a time limit, reading a
 * process's CPU time and memory from /proc, and one registry of cleanups so that every server,
 * mount and loop device the benchmark set up is taken down again, in reverse order, on success,
 * on failure and on SIGINT/SIGTERM. Processes are only ever signalled by their own PID.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';

export interface CommandResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  wallSeconds: number;
}

/** Runs `command` to completion; after `timeoutMs` it is sent SIGKILL (by its PID) and reported. */
export function runCommand(command: string, args: readonly string[], options: { timeoutMs: number; cwd?: string }): Promise<CommandResult> {
  const startedAt = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: options.cwd });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
    child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
    }, options.timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut, wallSeconds: Number(process.hrtime.bigint() - startedAt) / 1e9 });
    });
  });
}

/** Like runCommand, but a non-zero exit is an error that quotes the command and its stderr. */
export async function runChecked(command: string, args: readonly string[], timeoutMs = 120_000): Promise<string> {
  const result = await runCommand(command, args, { timeoutMs });
  if (result.code !== 0) {
    const why = result.timedOut ? `timed out after ${timeoutMs / 1000} s` : `exited with ${result.code ?? result.signal}`;
    throw new Error(`${command} ${args.join(' ')} ${why}: ${result.stderr.trim() || result.stdout.trim()}`);
  }
  return result.stdout;
}

let clockTicksPerSecond: number | undefined;

function ticksPerSecond(): number {
  if (clockTicksPerSecond === undefined) {
    try {
      clockTicksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicksPerSecond = 100;
    }
  }
  return clockTicksPerSecond;
}

/**
 * User + system CPU seconds the process has used so far, all of its threads included (the
 * thread-group totals of /proc/PID/stat). Kernel work done on its behalf elsewhere, such as page
 * cache writeback by kworker threads, is not in it.
 */
export function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utimeTicks = Number(fields[11]);
  const stimeTicks = Number(fields[12]);
  return (utimeTicks + stimeTicks) / ticksPerSecond();
}

/** Peak resident set size (VmHWM) in bytes, or null once the process is gone. */
export function peakRssBytes(pid: number): number | null {
  try {
    const match = /^VmHWM:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) * 1024 : null;
  } catch {
    return null;
  }
}

export function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** Waits for the child to exit; resolves false if it is still running after `timeoutMs`. */
export function waitForExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (!isRunning(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), timeoutMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

export interface StopResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stopSeconds: number;
  killed: boolean;
}

/** SIGTERM by PID, then SIGKILL if it has not exited within `graceMs`. */
export async function stopChild(child: ChildProcess, graceMs: number): Promise<StopResult> {
  const startedAt = process.hrtime.bigint();
  let killed = false;
  if (isRunning(child) && child.pid !== undefined) {
    process.kill(child.pid, 'SIGTERM');
    if (!(await waitForExit(child, graceMs))) {
      killed = true;
      process.kill(child.pid, 'SIGKILL');
      await waitForExit(child, 10_000);
    }
  }
  return { code: child.exitCode, signal: child.signalCode, stopSeconds: Number(process.hrtime.bigint() - startedAt) / 1e9, killed };
}

type Cleanup = { label: string; run: () => Promise<void> };

/** Cleanups run last-registered first, each once, whatever the others do. */
export class CleanupStack {
  private readonly cleanups: Cleanup[] = [];

  push(label: string, run: () => Promise<void>): void {
    this.cleanups.push({ label, run });
  }

  async runAll(report: (message: string) => void): Promise<void> {
    while (this.cleanups.length > 0) {
      const cleanup = this.cleanups.pop()!;
      try {
        await cleanup.run();
      } catch (error) {
        report(`cleanup "${cleanup.label}" failed: ${(error as Error).message}`);
      }
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
