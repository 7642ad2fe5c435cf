/**
 * `pstorage serve` as the measuring scripts run it: a child process of this Node, its log at info
 * level on standard error, and the TCP ports it reports in its log records ("listening",
 * "metrics listening", "management API listening"), read once every one asked for is there.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

const START_TIMEOUT_MS = 30_000;

export interface ServeProcess {
  child: ChildProcess;
  /** Port of each log message asked for, by message. */
  ports: Map<string, number>;
}

/**
 * Starts `node [nodeArgs] REPO/bin/pstorage.js serve ARGS` and resolves once each message in
 * `portMessages` has been logged with a TCP address (default: just "listening", the NBD port).
 */
export async function startServe(repo: string, args: string[], options: { env?: NodeJS.ProcessEnv; nodeArgs?: string[]; portMessages?: string[] } = {}): Promise<ServeProcess> {
  const portMessages = options.portMessages ?? ['listening'];
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), path.join(repo, 'bin/pstorage.js'), 'serve', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, PSTORAGE_LOG: 'info', ...options.env },
  });
  let log = '';
  const portOf = (message: string): number | null => {
    for (const line of log.split('\n')) {
      if (!line.includes(`"msg":"${message}"`)) continue;
      const tcp = (JSON.parse(line) as { tcp: string | string[] | null }).tcp;
      const address = Array.isArray(tcp) ? tcp[0] : tcp;
      if (address !== undefined && address !== null) return Number(address.split(':').pop());
    }
    return null;
  };
  const ports = await new Promise<Map<string, number>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`pstorage did not start:\n${log}`)), START_TIMEOUT_MS);
    child.stderr!.on('data', (chunk: Buffer) => {
      log += chunk.toString();
      const found = new Map<string, number>();
      for (const message of portMessages) {
        const port = portOf(message);
        if (port === null) return;
        found.set(message, port);
      }
      clearTimeout(timer);
      resolve(found);
    });
    child.once('exit', (code) => reject(new Error(`pstorage exited (${code}):\n${log}`)));
  });
  return { child, ports };
}

/** SIGTERM, then waits for the process to end. */
export async function stopServe(server: ServeProcess): Promise<void> {
  if (server.child.exitCode !== null) return;
  const exited = new Promise((resolve) => server.child.once('exit', resolve));
  server.child.kill('SIGTERM');
  await exited;
}

/** The median of a non-empty list. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}
