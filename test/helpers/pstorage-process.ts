/**
 * Starts the real `pstorage serve` process for interop and crash tests, on a fresh (or given)
 * data directory, with a Unix socket and optionally a TCP port picked by the kernel.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const PSTORAGE_BIN = path.join(REPO_ROOT, 'bin/pstorage.js');

export interface PstorageProcess {
  child: ChildProcess;
  dataDir: string;
  socketPath: string;
  port: number | null;
  /** libnbd URI of an export over the Unix socket. */
  unixUri(exportName?: string): string;
  /** libnbd URI of an export over TCP (needs `tcp: true`). */
  tcpUri(exportName?: string): string;
  /** Everything the process wrote to stderr so far (JSON log lines). */
  logs(): string;
  /** SIGTERM (or another signal) and wait for exit; resolves with the exit code or signal. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function makeTempDir(prefix = 'pstorage-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export async function startPstorage(options: { dataDir?: string; tcp?: boolean; args?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<PstorageProcess> {
  const dataDir = options.dataDir ?? path.join(makeTempDir(), 'data');
  const socketPath = path.join(path.dirname(dataDir), `nbd-${path.basename(dataDir)}.sock`);
  // "No TCP listener" goes through PSTORAGE_LISTEN=none rather than `--listen none`: commander
  // turns an option parser's null result into '' (commander 14, lib/command.js "val = ''"), so
  // `--listen none` on the command line reaches serve() as '' and crashes it.
  const listenArgs = options.tcp ? ['--listen', '127.0.0.1:0'] : [];
  const args = [PSTORAGE_BIN, 'serve', '--data-dir', dataDir, '--socket', socketPath, ...listenArgs, ...(options.args ?? [])];
  const env = { ...process.env, PSTORAGE_LOG: 'info', PSTORAGE_LISTEN: 'none', ...options.env };
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stdout!.resume();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const port = await new Promise<number | null>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`pstorage did not start within 30 s:\n${stderr}`)), 30_000);
    child.stderr!.on('data', (text: string) => {
      stderr += text;
      for (const line of stderr.split('\n')) {
        if (!line.includes('"msg":"listening"')) continue;
        clearTimeout(timer);
        const record = JSON.parse(line) as { tcp: string[] };
        resolve(record.tcp.length > 0 ? Number(record.tcp[0]!.split(':').pop()) : null);
        return;
      }
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`pstorage exited early (code ${code}, signal ${signal}):\n${stderr}`));
    });
  });
  return {
    child,
    dataDir,
    socketPath,
    port,
    unixUri: (name = 'default') => `nbd+unix:///${name}?socket=${socketPath}`,
    tcpUri: (name = 'default') => {
      if (port === null) throw new Error('started without tcp: true');
      return `nbd://127.0.0.1:${port}/${name}`;
    },
    logs: () => stderr,
    stop: async (signal: NodeJS.Signals = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}
