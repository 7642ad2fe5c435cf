/**
 * The management API: HTTP/JSON on a Unix socket in the data directory (mode 0600, so only the
 * array's owner may use it). The CLI talks to a running array through it; nothing here is on the
 * read/write path.
 *
 * Routes (version 1):
 *   GET  /api/v1/metrics            array-wide counters (the `pstorage stats` document)
 *   GET  /api/v1/volumes            volumes
 *   POST /api/v1/audit              runs the audit (commits first) and returns its report
 * Errors are JSON `{ error: { code, message } }` with a status that fits the StorageError code.
 */
import fs from 'node:fs';
import http from 'node:http';
import { isStorageError, StorageError, type StorageErrorCode } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { auditArray } from '../volume/audit.js';
import type { FlashArray } from '../volume/flash-array.js';

export const API_SOCKET_NAME = 'pstorage.sock';

const STATUS_BY_CODE: Partial<Record<StorageErrorCode, number>> = {
  INVALID_ARGUMENT: 400,
  OUT_OF_RANGE: 400,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  BUSY: 409,
  READ_ONLY: 403,
  NO_SPACE: 507,
  SHUTTING_DOWN: 503,
  NOT_SUPPORTED: 501,
};

type Handler = (array: FlashArray, body: unknown, params: string[]) => Promise<unknown>;

const ROUTES: Array<{ method: string; pattern: RegExp; handler: Handler }> = [
  { method: 'GET', pattern: /^\/api\/v1\/metrics$/, handler: async (array) => array.stats() },
  {
    method: 'GET',
    pattern: /^\/api\/v1\/volumes$/,
    handler: async (array) => [...array.volumes.values()].map((volume) => ({ ...volume.record, logicalBytes: volume.record.mappedBlocks * 4096 })),
  },
  { method: 'POST', pattern: /^\/api\/v1\/audit$/, handler: async (array) => auditArray(array) },
];

export class ApiServer {
  private server: http.Server | null = null;

  constructor(
    private readonly array: FlashArray,
    private readonly logger: Logger,
  ) {}

  async listen(socketPath: string): Promise<void> {
    try {
      if (fs.statSync(socketPath).isSocket()) fs.unlinkSync(socketPath);
    } catch {
      // Nothing there.
    }
    const server = http.createServer((request, response) => void this.handle(request, response));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
    fs.chmodSync(socketPath, 0o600);
    this.server = server;
  }

  private async handle(request: http.IncomingMessage, response: http.ServerResponse): Promise<void> {
    const url = new URL(request.url ?? '/', 'http://pstorage');
    const route = ROUTES.find((candidate) => candidate.method === request.method && candidate.pattern.test(url.pathname));
    try {
      if (route === undefined) throw StorageError.notFound(`no route ${request.method} ${url.pathname}`);
      const body = await readJson(request);
      const params = route.pattern.exec(url.pathname)!.slice(1).map(decodeURIComponent);
      send(response, 200, await route.handler(this.array, body, params));
    } catch (error) {
      const code = isStorageError(error) ? error.code : 'IO';
      if (!isStorageError(error)) this.logger.error('management request failed', { path: url.pathname, error: (error as Error).message });
      send(response, STATUS_BY_CODE[code] ?? 500, { error: { code, message: (error as Error).message } });
    }
  }

  async close(): Promise<void> {
    const server = this.server;
    if (server === null) return;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections?.();
  }
}

async function readJson(request: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of request) {
    total += (chunk as Buffer).length;
    if (total > 1024 * 1024) throw StorageError.invalidArgument('request body too large');
    chunks.push(chunk as Buffer);
  }
  if (total === 0) return undefined;
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw StorageError.invalidArgument('request body is not valid JSON');
  }
}

function send(response: http.ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value, null, 2) + '\n';
  response.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  response.end(body);
}
