/**
 * `pstorage serve --metrics-listen HOST:PORT`: a plain HTTP listener for Prometheus that serves
 * `GET /metrics` and nothing else (404), with no token. It exposes counters only, never data or
 * control, so unlike the management API it may listen on any address; the operator chooses who
 * can reach it. The same exposition is on the management API at `GET /metrics` (with its token
 * rules on TCP).
 */
import http from 'node:http';
import type { Logger } from '../common/log.js';
import type { PrometheusMetrics } from './prometheus.js';

export const METRICS_PATH = '/metrics';

/** Answers one scrape: the exposition with prom-client's content type, or 500 with the reason. */
export async function sendMetrics(metrics: PrometheusMetrics, response: http.ServerResponse, logger: Logger): Promise<void> {
  try {
    const body = await metrics.render();
    response.writeHead(200, { 'content-type': metrics.contentType, 'content-length': Buffer.byteLength(body) });
    response.end(body);
  } catch (error) {
    logger.error('metrics scrape failed', { error: (error as Error).message });
    const body = `metrics unavailable: ${(error as Error).message}\n`;
    response.writeHead(500, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body) });
    response.end(body);
  }
}

/** The request's path, or null when its target is not a URL path at all. */
function pathnameOf(request: http.IncomingMessage): string | null {
  try {
    return new URL(request.url ?? '/', 'http://pstorage').pathname;
  } catch {
    return null;
  }
}

export class MetricsServer {
  private server: http.Server | null = null;

  constructor(
    private readonly metrics: PrometheusMetrics,
    private readonly logger: Logger,
  ) {}

  /** Starts listening; resolves with the bound port (port 0 picks a free one). */
  async listen(address: { host: string; port: number }): Promise<number> {
    const server = http.createServer((request, response) => void this.handle(request, response));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(address.port, address.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (error) => this.logger.error('metrics listener error', { error: error.message }));
    this.server = server;
    return (server.address() as { port: number }).port;
  }

  private async handle(request: http.IncomingMessage, response: http.ServerResponse): Promise<void> {
    request.resume();
    if (request.method === 'GET' && pathnameOf(request) === METRICS_PATH) {
      await sendMetrics(this.metrics, response, this.logger);
      return;
    }
    const body = `not found: this listener serves only GET ${METRICS_PATH}\n`;
    response.writeHead(404, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body) });
    response.end(body);
  }

  async close(): Promise<void> {
    const server = this.server;
    if (server === null) return;
    this.server = null;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections(); // a scrape is short; nothing worth waiting for
    await closed;
  }
}
