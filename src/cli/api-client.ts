/**
 * How the CLI reaches an array: through the management API of the server that owns the data
 * directory, or, when no server runs, by opening the directory itself.
 *
 * A server is "running" when its API socket (DATA_DIR/pstorage.sock) accepts a connection; a
 * stale socket left by a killed server refuses, and the CLI opens the directory instead. If the
 * directory is then locked (a server without a reachable API, or another CLI), the error is
 * DataDirectoryInUse, exit code 3.
 */
import { readKeyFile } from '../volume/array-key.js';
import http from 'node:http';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform, type Readable } from 'node:stream';
import { isStorageError, StorageError, type StorageErrorCode } from '../common/errors.js';
import { silentLogger } from '../common/log.js';
import { API_SOCKET_NAME } from '../mgmt/api-server.js';
import { FlashArray } from '../volume/flash-array.js';

export interface ApiResponse {
  status: number;
  body: unknown;
}

/** The data directory is locked by another process (exit code 3). */
export class DataDirectoryInUse extends StorageError {
  constructor(cause: StorageError) {
    super('BUSY', cause.message, { cause });
  }
}

export function socketPathOf(dataDir: string): string {
  return path.join(path.resolve(dataDir), API_SOCKET_NAME);
}

/** Connecting to the socket failed because no server listens there (none, or a stale socket). */
function noServer(error: NodeJS.ErrnoException): boolean {
  return error.syscall === 'connect' && (error.code === 'ENOENT' || error.code === 'ECONNREFUSED');
}

/** Calls the running server's API; resolves null when no server listens in `dataDir`. */
export function callApi(dataDir: string, method: string, route: string, body?: unknown): Promise<ApiResponse | null> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const request = http.request({ socketPath: socketPathOf(dataDir), method, path: route, headers: payload ? { 'content-type': 'application/json' } : {} }, (response) => {
      readBody(response).then((text) => resolve({ status: response.statusCode ?? 0, body: parseJson(text, response.statusCode ?? 0) }), reject);
    });
    request.on('error', (error: NodeJS.ErrnoException) => (noServer(error) ? resolve(null) : reject(error)));
    request.end(payload);
  });
}

async function readBody(stream: AsyncIterable<Buffer | string>): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function parseJson(text: string, status: number): unknown {
  if (text === '') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw StorageError.io(`the management API answered ${status} with something that is not JSON: ${text.slice(0, 200)}`);
  }
}

/**
 * The operation was refused because something depends on its target (clones on a snapshot,
 * snapshots on a volume): exit code 1, not 3, which means the data directory is in use.
 */
export class OperationConflict extends StorageError {
  constructor(message: string, cause?: unknown) {
    super('BUSY', message, { cause });
  }
}

function asConflict(error: unknown): unknown {
  return isStorageError(error) && error.code === 'BUSY' && !(error instanceof DataDirectoryInUse) ? new OperationConflict(error.message, error) : error;
}

/** Turns an API error response into the StorageError it stands for. */
export function apiError(response: ApiResponse): StorageError {
  const error = (response.body as { error?: { code?: StorageErrorCode; message?: string } } | undefined)?.error;
  const code = error?.code ?? 'IO';
  const message = error?.message ?? `management API answered ${response.status}`;
  return code === 'BUSY' ? new OperationConflict(message) : new StorageError(code, message);
}

/** Opens the data directory for a CLI command (no server runs), or says why not. */
export async function openLocal(dataDir: string, keyFile = process.env.PSTORAGE_KEY_FILE): Promise<FlashArray> {
  try {
    // An encrypted array opens with its key file: --key-file where the command has it, else PSTORAGE_KEY_FILE (array-key.ts).
    const { array } = await FlashArray.open(path.resolve(dataDir), silentLogger, { createIfMissing: false, keyFileBytes: keyFile === undefined || keyFile === '' ? undefined : readKeyFile(keyFile) });
    return array;
  } catch (error) {
    if (isStorageError(error) && error.code === 'BUSY') throw new DataDirectoryInUse(error);
    throw error;
  }
}

/**
 * Runs `viaApi` against the running server, or `local` on the array opened from the directory
 * (and closed again) when no server owns it.
 */
export async function withArray<T>(dataDir: string, viaApi: () => Promise<ApiResponse | null>, local: (array: FlashArray) => Promise<T>, keyFile?: string): Promise<T> {
  const response = await viaApi();
  if (response !== null) {
    if (response.status >= 400) throw apiError(response);
    return response.body as T;
  }
  const array = await openLocal(dataDir, keyFile);
  try {
    return await local(array);
  } catch (error) {
    throw asConflict(error);
  } finally {
    await array.close();
  }
}

/** Shorthand: the same route through the API, or `local` on the opened directory. */
export function request<T>(dataDir: string, method: string, route: string, body: unknown, local: (array: FlashArray) => Promise<T> | T): Promise<T> {
  return withArray(dataDir, () => callApi(dataDir, method, route, body), async (array) => local(array));
}

/** Counts bytes passing through, for a progress bar. */
function counter(onBytes: (doneBytes: number) => void): Transform {
  let done = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      done += chunk.length;
      onBytes(done);
      callback(null, chunk);
    },
  });
}

/**
 * Streams `source` to `PUT route` on the running server (with a content-length when the size is
 * known, chunked otherwise). Resolves null when no server runs, or the server's answer.
 */
export function upload(dataDir: string, route: string, source: Readable, sizeBytes: number | null, onProgress: (doneBytes: number) => void): Promise<ApiResponse | null> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      outcome();
    };
    const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/octet-stream' };
    if (sizeBytes !== null) headers['content-length'] = sizeBytes;
    const request = http.request({ socketPath: socketPathOf(dataDir), method: 'PUT', path: route, headers }, (response) => {
      readBody(response).then(
        (text) => finish(() => resolve({ status: response.statusCode ?? 0, body: parseJson(text, response.statusCode ?? 0) })),
        (error: unknown) => finish(() => reject(error)),
      );
    });
    request.on('error', (error: NodeJS.ErrnoException) => finish(() => (noServer(error) ? resolve(null) : reject(error))));
    // A failed upload (EPIPE when the server answered early) surfaces through the server's
    // answer or the request's 'error'; a failed read of the source is reported as itself.
    pipeline(source, counter(onProgress), request).catch((error: NodeJS.ErrnoException) => {
      if (error.syscall !== 'write' && error.code !== 'ECONNRESET' && error.code !== 'EPIPE') finish(() => reject(error));
    });
  });
}

/** `GET route` on the running server as a stream; null when no server runs. Throws on an API error. */
export function download(dataDir: string, route: string): Promise<{ sizeBytes: number; body: http.IncomingMessage } | null> {
  return new Promise((resolve, reject) => {
    const request = http.request({ socketPath: socketPathOf(dataDir), method: 'GET', path: route }, (response) => {
      if ((response.statusCode ?? 0) >= 400) {
        readBody(response).then((text) => reject(apiError({ status: response.statusCode ?? 0, body: parseJson(text, response.statusCode ?? 0) })), reject);
        return;
      }
      resolve({ sizeBytes: Number(response.headers['content-length']), body: response });
    });
    request.on('error', (error: NodeJS.ErrnoException) => (noServer(error) ? resolve(null) : reject(error)));
    request.end();
  });
}
