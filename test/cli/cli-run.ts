/**
 * Running the real CLI binary (`node bin/pstorage.js ...`) in tests, and small file helpers the
 * CLI and snapshot tests share.
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { describeRun, run, type RunResult } from '../helpers/interop.js';
import { PSTORAGE_BIN, type PstorageProcess } from '../helpers/pstorage-process.js';

export const BLOCK = 4096;

/** Runs `pstorage ARGS -d DATA_DIR` (the data directory flag last, so it works on every command). */
export function pstorage(dataDir: string | null, args: string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = { ...process.env, PSTORAGE_LOG: 'warn' };
  delete env.PSTORAGE_DATA_DIR;
  Object.assign(env, options.env);
  return run(process.execPath, [PSTORAGE_BIN, ...args, ...(dataDir === null ? [] : ['-d', dataDir])], { env, timeoutMs: options.timeoutMs ?? 120_000 });
}

/** `pstorage ...` that must exit 0; returns stdout. */
export async function ok(t: ExecutionContext, dataDir: string, args: string[]): Promise<string> {
  const result = await pstorage(dataDir, args);
  if (result.code !== 0) throw new Error(describeRun(result));
  t.log(`$ pstorage ${args.join(' ')}\n${result.stdout.trimEnd()}`);
  return result.stdout;
}

/** `pstorage ... --json` that must exit 0; returns the parsed document. */
export async function okJson<T>(dataDir: string, args: string[]): Promise<T> {
  const result = await pstorage(dataDir, [...args, '--json']);
  if (result.code !== 0) throw new Error(describeRun(result));
  return JSON.parse(result.stdout) as T;
}

/** Asserts the exit code and that stderr matches `message`. */
export async function fails(t: ExecutionContext, dataDir: string, args: string[], code: number, message: RegExp): Promise<void> {
  const result = await pstorage(dataDir, args);
  t.is(result.code, code, `exit code of pstorage ${args.join(' ')}\n${describeRun(result)}`);
  t.regex(result.stderr, message, `message of pstorage ${args.join(' ')}`);
}

/** A raw image with seeded random data in the given 4 KiB blocks and zeroes elsewhere. */
export function imageWithBlocks(sizeBytes: number, blocks: number[], seed: number): Buffer {
  const image = Buffer.alloc(sizeBytes);
  for (const lba of blocks) {
    for (let at = 0; at < BLOCK; at += 4) image.writeUInt32LE(((lba + 1) * 2654435761 + seed * 40503 + at * 97) >>> 0, lba * BLOCK + at);
  }
  return image;
}

/** Sorted block numbers → merged byte ranges, the shape `pstorage diff --json` reports. */
export function rangesOf(blocks: number[]): Array<{ offsetBytes: number; lengthBytes: number }> {
  const ranges: Array<{ offsetBytes: number; lengthBytes: number }> = [];
  for (const lba of [...new Set(blocks)].sort((a, b) => a - b)) {
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last.offsetBytes + last.lengthBytes === lba * BLOCK) last.lengthBytes += BLOCK;
    else ranges.push({ offsetBytes: lba * BLOCK, lengthBytes: BLOCK });
  }
  return ranges;
}

/** Bytes a file occupies on disk (holes excluded). */
export function allocatedBytes(file: string): number {
  return fs.statSync(file).blocks * 512;
}

/** The port of the TCP management API, from the server's "management API listening" log line. */
export function apiPortOf(server: PstorageProcess): number {
  for (const line of server.logs().split('\n')) {
    if (!line.includes('"msg":"management API listening"')) continue;
    const tcp = (JSON.parse(line) as { tcp: string | null }).tcp;
    if (tcp !== null) return Number(tcp.split(':').pop());
  }
  throw new Error(`no TCP management API in the log:\n${server.logs()}`);
}

/** One HTTP request to the management API (Unix socket, or TCP port); JSON both ways. */
export function apiRequest(target: { socketPath: string } | { port: number }, method: string, route: string, options: { body?: unknown; headers?: Record<string, string> } = {}): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
    const where = 'socketPath' in target ? { socketPath: target.socketPath } : { host: '127.0.0.1', port: target.port };
    const request = http.request({ ...where, method, path: route, headers: { ...(payload ? { 'content-type': 'application/json' } : {}), ...options.headers } }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: response.statusCode ?? 0, body: text === '' ? undefined : JSON.parse(text) });
      });
    });
    request.on('error', reject);
    request.end(payload);
  });
}

export function apiSocketOf(dataDir: string): string {
  return path.join(dataDir, 'pstorage.sock');
}
