/**
 * How the CLI reaches an array: through the management API of the server that owns the data
 * directory, or, when no server runs, by opening the directory itself.
 */
import http from 'node:http';
import path from 'node:path';
import { StorageError, type StorageErrorCode } from '../common/errors.js';
import { silentLogger } from '../common/log.js';
import { API_SOCKET_NAME } from '../mgmt/api-server.js';
import { FlashArray } from '../volume/flash-array.js';

export interface ApiResponse {
  status: number;
  body: unknown;
}

/** Calls the running server's API; resolves null when no server listens in `dataDir`. */
export function callApi(dataDir: string, method: string, route: string, body?: unknown): Promise<ApiResponse | null> {
  const socketPath = path.join(path.resolve(dataDir), API_SOCKET_NAME);
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const request = http.request({ socketPath, method, path: route, headers: payload ? { 'content-type': 'application/json' } : {} }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: response.statusCode ?? 0, body: text ? JSON.parse(text) : undefined });
      });
    });
    request.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT' || error.code === 'ECONNREFUSED') resolve(null);
      else reject(error);
    });
    request.end(payload);
  });
}

/** Turns an API error response into the StorageError it stands for. */
export function apiError(response: ApiResponse): StorageError {
  const error = (response.body as { error?: { code?: StorageErrorCode; message?: string } } | undefined)?.error;
  return new StorageError(error?.code ?? 'IO', error?.message ?? `management API answered ${response.status}`);
}

/**
 * Runs `viaApi` against the running server, or `local` on the array opened from the directory
 * (and closed again) when no server owns it.
 */
export async function withArray<T>(dataDir: string, viaApi: () => Promise<ApiResponse | null>, local: (array: FlashArray) => Promise<T>): Promise<T> {
  const response = await viaApi();
  if (response !== null) {
    if (response.status >= 400) throw apiError(response);
    return response.body as T;
  }
  const { array } = await FlashArray.open(path.resolve(dataDir), silentLogger, { createIfMissing: false });
  try {
    return await local(array);
  } finally {
    await array.close();
  }
}
