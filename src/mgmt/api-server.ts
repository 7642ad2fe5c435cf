/**
 * The management API: HTTP/JSON on a Unix socket in the data directory (mode 0600, so only the
 * array's owner may use it), and optionally on a loopback TCP address, where every request must
 * carry `Authorization: Bearer TOKEN`. The CLI talks to a running array through it; the data
 * routes (`.../data`) stream whole images for import/export and are never on the NBD path.
 *
 * Routes (version 1) are the ROUTES table below; `GET /api/v1/openapi.json` describes each of
 * them (openapi.ts; a test checks the two agree). Errors are JSON `{ error: { code, message } }`
 * with a status that fits the StorageError code; 401 without the right token on TCP. One route is
 * not JSON: `GET /metrics`, the Prometheus text format (prometheus.ts), as scrapers expect it.
 * The web dashboard's static files (`GET /dashboard/...`, dashboard-assets.ts) are the only routes
 * served on TCP without the token: they hold no data, and the page sends the token on every data
 * route it calls.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { isStorageError, StorageError, type StorageErrorCode } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { FlashArray } from '../volume/flash-array.js';
import { METRICS_PATH, sendMetrics } from './metrics-server.js';
import { OPENAPI_DOCUMENT } from './openapi.js';
import * as ops from './operations.js';
import type { PrometheusMetrics } from './prometheus.js';
import type { IoStats } from '../server/io-stats.js';
import { exportFrom, importInto, tooLarge } from './volume-data.js';
import type { Analytics } from './analytics.js';
import { sendAsset } from './dashboard-assets.js';
import type { ReplicationApi } from '../replication/replication-service.js';

export const API_SOCKET_NAME = 'pstorage.sock';
const MAX_SOCKET_PATH_BYTES = 107;

/**
 * sun_path holds 108 bytes with the terminating NUL; a longer path would be cut short by the
 * kernel and the socket created somewhere else. Throws INVALID_ARGUMENT saying what to do.
 */
export function checkApiSocketPath(socketPath: string): void {
  const pathBytes = Buffer.byteLength(socketPath);
  if (pathBytes > MAX_SOCKET_PATH_BYTES) {
    throw StorageError.invalidArgument(`the management socket ${socketPath} would be ${pathBytes} bytes long, and a Unix socket path may have at most ${MAX_SOCKET_PATH_BYTES}: use a data directory with a shorter path`);
  }
}
const MAX_JSON_BODY_BYTES = 1024 * 1024;
const CLOSE_GRACE_MS = 10_000;

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

export interface RouteContext {
  array: FlashArray;
  /** The NBD server's per-export request statistics, when this process serves NBD. */
  io: IoStats | null;
  /** The server's analytics sampler, when it runs one (else a report is made from what is stored). */
  analytics: Analytics | null;
  /** ActiveCluster pods, when the server runs the replication service. */
  replication: ReplicationApi | null;
  params: Record<string, string>;
  query: URLSearchParams;
  body: unknown;
}

/** A pod volume is resized or deleted on both arrays at once, never on one alone. */
function notInPod(context: RouteContext): true {
  const pod = context.replication?.podOf(context.params.name!) ?? null;
  if (pod !== null) throw StorageError.busy(`volume ${context.params.name!} belongs to pod ${pod}: it cannot be resized or deleted on one array alone; "pstorage pod delete ${pod}" first makes its volumes ordinary volumes again`);
  return true;
}

function pods(context: RouteContext): ReplicationApi {
  if (context.replication === null) throw StorageError.notSupported('this server has no replication service');
  return context.replication;
}

interface RouteBase {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** OpenAPI-style template: `/api/v1/volumes/{name}`. */
  path: string;
  /** Served on TCP without the bearer token (the dashboard's static files only). */
  public?: boolean;
}
interface JsonRoute extends RouteBase {
  status?: number;
  handler: (context: RouteContext) => unknown;
}
/** What a stream route may use besides the array. */
export interface StreamContext {
  metrics: PrometheusMetrics | null;
  logger: Logger;
}
interface StreamRoute extends RouteBase {
  stream: (array: FlashArray, params: Record<string, string>, request: http.IncomingMessage, response: http.ServerResponse, context: StreamContext) => Promise<void>;
}
export type Route = JsonRoute | StreamRoute;

export const ROUTES: Route[] = [
  { method: 'GET', path: '/api/v1/openapi.json', handler: () => OPENAPI_DOCUMENT },
  { method: 'GET', path: '/api/v1/volumes', handler: ({ array }) => ops.listVolumes(array) },
  { method: 'POST', path: '/api/v1/volumes', status: 201, handler: ({ array, body }) => ops.createVolume(array, body) },
  { method: 'GET', path: '/api/v1/volumes/{name}', handler: ({ array, params }) => ops.getVolume(array, params.name!) },
  { method: 'PATCH', path: '/api/v1/volumes/{name}', handler: (context) => notInPod(context) && ops.resize(context.array, context.params.name!, context.body) },
  { method: 'DELETE', path: '/api/v1/volumes/{name}', handler: (context) => notInPod(context) && ops.removeVolume(context.array, context.params.name!, context.query.get('force')) },
  { method: 'PUT', path: '/api/v1/volumes/{name}/access', handler: ({ array, params, body }) => ops.access(array, params.name!, body) },
  { method: 'DELETE', path: '/api/v1/volumes/{name}/access', handler: ({ array, params }) => ops.clearAccess(array, params.name!) },
  { method: 'GET', path: '/api/v1/volumes/{name}/snapshots', handler: ({ array, params }) => ops.snapshots(array, params.name!) },
  { method: 'POST', path: '/api/v1/volumes/{name}/snapshots', status: 201, handler: ({ array, params, body }) => ops.snapshot(array, params.name!, body) },
  { method: 'DELETE', path: '/api/v1/volumes/{name}/snapshots/{snapshot}', handler: ({ array, params }) => ops.removeSnapshot(array, params.name!, params.snapshot!) },
  { method: 'POST', path: '/api/v1/volumes/{name}/snapshots/{snapshot}/restore', handler: ({ array, params }) => ops.restore(array, params.name!, params.snapshot!) },
  { method: 'GET', path: '/api/v1/snapshots', handler: ({ array }) => ops.snapshots(array) },
  { method: 'POST', path: '/api/v1/clones', status: 201, handler: ({ array, body }) => ops.clone(array, body) },
  { method: 'GET', path: '/api/v1/diff', handler: ({ array, query }) => ops.changes(array, query.get('from'), query.get('to')) },
  { method: 'GET', path: '/api/v1/metrics', handler: ({ array, io }) => ops.metrics(array, undefined, io) },
  { method: 'GET', path: '/api/v1/metrics/reduction', handler: ({ array }) => ops.metrics(array, 'reduction') },
  { method: 'GET', path: '/api/v1/metrics/flash', handler: ({ array }) => ops.metrics(array, 'flash') },
  { method: 'GET', path: '/api/v1/analytics', handler: ({ array, analytics, query }) => ops.analytics(array, analytics, query.get('history')) },
  { method: 'GET', path: '/api/v1/flash/erase-blocks', handler: ({ array }) => ops.eraseBlocks(array) },
  { method: 'POST', path: '/api/v1/audit', handler: ({ array }) => ops.audit(array) },
  { method: 'POST', path: '/api/v1/volumes/{name}/replicate', handler: (context) => pods(context).replicate(context.params.name!, context.body) },
  { method: 'GET', path: '/api/v1/pods', handler: (context) => pods(context).listPods() },
  { method: 'POST', path: '/api/v1/pods', status: 201, handler: (context) => pods(context).createPod(context.body) },
  { method: 'GET', path: '/api/v1/pods/{name}', handler: (context) => pods(context).podStatus(context.params.name!) },
  { method: 'DELETE', path: '/api/v1/pods/{name}', handler: (context) => pods(context).deletePod(context.params.name!) },
  { method: 'POST', path: '/api/v1/pods/{name}/volumes', status: 201, handler: (context) => pods(context).createPodVolume(context.params.name!, context.body) },
  { method: 'PUT', path: '/api/v1/volumes/{name}/data', stream: putData },
  { method: 'GET', path: '/api/v1/volumes/{name}/data', stream: getData },
  { method: 'GET', path: METRICS_PATH, stream: getMetrics },
  { method: 'GET', path: '/dashboard/', public: true, stream: (_array, _params, request, response) => sendAsset('index.html', request, response) },
  { method: 'GET', path: '/dashboard/{asset}', public: true, stream: (_array, params, request, response) => sendAsset(params.asset!, request, response) },
];

/** `/api/v1/volumes/{name}` → a regex with one capture group per parameter, and the names. */
function compile(template: string): { pattern: RegExp; names: string[] } {
  const names: string[] = [];
  const source = template.replace(/[.]/g, '\\.').replace(/\{(\w+)\}/g, (_, name: string) => {
    names.push(name);
    return '([^/]+)';
  });
  return { pattern: new RegExp(`^${source}$`), names };
}

const COMPILED = ROUTES.map((route) => ({ route, ...compile(route.path) }));

function matchRoute(method: string, pathname: string): { route: Route; params: Record<string, string> } | { allowed: string[] } | null {
  const allowed: string[] = [];
  for (const { route, pattern, names } of COMPILED) {
    const match = pattern.exec(pathname);
    if (match === null) continue;
    if (route.method !== method) {
      allowed.push(route.method);
      continue;
    }
    const params: Record<string, string> = {};
    names.forEach((name, i) => (params[name] = decodeParam(match[i + 1]!)));
    return { route, params };
  }
  return allowed.length > 0 ? { allowed } : null;
}

function decodeParam(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw StorageError.invalidArgument(`"${text}" is not a valid URL path segment`);
  }
}

export class ApiServer {
  private readonly servers: http.Server[] = [];
  private tokenDigest: Buffer | null = null;

  constructor(
    private readonly array: FlashArray,
    private readonly logger: Logger,
    /** Served at GET /metrics (prometheus.ts); null: that route answers 404. */
    private readonly metrics: PrometheusMetrics | null = null,
    /** The capacity-history sampler behind GET /api/v1/analytics; null: reports from what is stored. */
    private readonly analytics: Analytics | null = null,
    /** ActiveCluster pods (replication/); null: the pod routes answer 501. */
    private readonly replication: ReplicationApi | null = null,
  ) {}

  /** The Unix socket: no token; its mode 0600 is the guard. */
  async listen(socketPath: string): Promise<void> {
    checkApiSocketPath(socketPath);
    try {
      if (fs.statSync(socketPath).isSocket()) fs.unlinkSync(socketPath);
    } catch {
      // Nothing there.
    }
    await this.start(false, (server) => server.listen(socketPath));
    fs.chmodSync(socketPath, 0o600);
  }

  /** Loopback TCP: every request needs `Authorization: Bearer <token>`. Resolves with the bound port. */
  async listenTcp(address: { host: string; port: number }, token: string): Promise<number> {
    if (token.length === 0) throw StorageError.invalidArgument('the TCP management API needs a bearer token: pass --api-token TOKEN or set PSTORAGE_API_TOKEN');
    if (!isLoopback(address.host)) throw StorageError.invalidArgument(`the management API listens on loopback addresses only (127.0.0.1, ::1), not "${address.host}"`);
    this.tokenDigest = digest(token);
    const server = await this.start(true, (candidate) => candidate.listen(address.port, address.host));
    return (server.address() as { port: number }).port;
  }

  private async start(viaTcp: boolean, bind: (server: http.Server) => void): Promise<http.Server> {
    // requestTimeout 0: an import or export of a large volume may take longer than Node's default 5 minutes.
    const server = http.createServer({ requestTimeout: 0 }, (request, response) => void this.handle(request, response, viaTcp));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.once('listening', () => {
        server.off('error', reject);
        resolve();
      });
      bind(server);
    });
    this.servers.push(server);
    return server;
  }

  private authorized(request: http.IncomingMessage): boolean {
    const header = request.headers.authorization ?? '';
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    return match !== null && this.tokenDigest !== null && timingSafeEqual(digest(match[1]!), this.tokenDigest);
  }

  private async handle(request: http.IncomingMessage, response: http.ServerResponse, viaTcp: boolean): Promise<void> {
    const url = new URL(request.url ?? '/', 'http://pstorage');
    try {
      const found = matchRoute(request.method ?? 'GET', url.pathname);
      const isPublic = found !== null && 'route' in found && found.route.public === true;
      if (viaTcp && !isPublic && !this.authorized(request)) {
        request.resume();
        response.setHeader('www-authenticate', 'Bearer realm="pstorage"');
        send(response, 401, { error: { code: 'UNAUTHORIZED', message: 'missing or wrong bearer token: send "Authorization: Bearer TOKEN" with the token pstorage serve was given (--api-token or PSTORAGE_API_TOKEN)' } });
        return;
      }
      if (found === null) throw StorageError.notFound(`no route ${request.method} ${url.pathname}; GET /api/v1/openapi.json lists them`);
      if ('allowed' in found) {
        request.resume();
        response.setHeader('allow', found.allowed.join(', '));
        send(response, 405, { error: { code: 'NOT_SUPPORTED', message: `${request.method} is not allowed on ${url.pathname}; use ${found.allowed.join(' or ')}` } });
        return;
      }
      const { route, params } = found;
      if ('stream' in route) {
        await route.stream(this.array, params, request, response, { metrics: this.metrics, logger: this.logger });
        return;
      }
      const body = await readJson(request);
      const result = await route.handler({ array: this.array, io: this.metrics?.io ?? null, analytics: this.analytics, replication: this.replication, params, query: url.searchParams, body });
      send(response, route.status ?? 200, result);
    } catch (error) {
      this.fail(request, response, url.pathname, error);
    }
  }

  private fail(request: http.IncomingMessage, response: http.ServerResponse, pathname: string, error: unknown): void {
    const code = isStorageError(error) ? error.code : 'IO';
    if (!isStorageError(error)) this.logger.error('management request failed', { method: request.method, path: pathname, error: (error as Error).message });
    if (response.headersSent) {
      // A stream already under way: cut it, so the client sees a short body and not a truncated success.
      response.destroy(error as Error);
      return;
    }
    if (!request.readableEnded) {
      response.setHeader('connection', 'close');
      request.resume();
    }
    send(response, STATUS_BY_CODE[code] ?? 500, { error: { code, message: (error as Error).message } });
  }

  async close(): Promise<void> {
    await Promise.all(
      this.servers.map(async (server) => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        // Running requests (an import, say) get a grace period to finish, then are cut.
        const timer = setTimeout(() => server.closeAllConnections(), CLOSE_GRACE_MS);
        await closed;
        clearTimeout(timer);
      }),
    );
    this.servers.length = 0;
  }
}

/** `PUT /api/v1/volumes/{name}/data`: the raw body becomes the volume's content from offset 0. */
async function putData(array: FlashArray, params: Record<string, string>, request: http.IncomingMessage, response: http.ServerResponse): Promise<void> {
  const device = ops.deviceFor(array, params.name!);
  const declared = Number(request.headers['content-length'] ?? NaN);
  if (Number.isSafeInteger(declared) && declared > device.sizeBytes) throw tooLarge(declared, params.name!, device.sizeBytes);
  const startedMs = Date.now();
  const writtenBytes = await importInto(device, params.name!, request);
  send(response, 200, { volume: params.name, writtenBytes, durationMs: Date.now() - startedMs });
}

/** `GET /api/v1/volumes/{name}/data`: the volume's (or `volume@snapshot`'s) raw content. */
async function getData(array: FlashArray, params: Record<string, string>, request: http.IncomingMessage, response: http.ServerResponse): Promise<void> {
  const device = ops.deviceFor(array, params.name!);
  request.resume();
  response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': device.sizeBytes });
  for await (const chunk of exportFrom(device)) {
    if (response.destroyed) return;
    if (!response.write(chunk)) await drained(response);
  }
  response.end();
}

/** `GET /metrics`: the Prometheus text exposition (the same as on `--metrics-listen`). */
async function getMetrics(_array: FlashArray, _params: Record<string, string>, request: http.IncomingMessage, response: http.ServerResponse, context: StreamContext): Promise<void> {
  if (context.metrics === null) throw StorageError.notFound('this server has no metrics');
  request.resume();
  await sendMetrics(context.metrics, response, context.logger);
}

/** Resolves when the response can take more, or is gone (the client hung up). */
function drained(response: http.ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      response.off('drain', done);
      response.off('close', done);
      resolve();
    };
    response.on('drain', done);
    response.on('close', done);
  });
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

async function readJson(request: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of request) {
    total += (chunk as Buffer).length;
    if (total > MAX_JSON_BODY_BYTES) throw StorageError.invalidArgument('request body too large (1 MiB at most for JSON)');
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
