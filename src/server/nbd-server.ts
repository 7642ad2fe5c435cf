/**
 * The NBD listener: TCP and/or Unix sockets, the set of live connections, and graceful shutdown.
 *
 * Shutdown order (the spec's SHOULDs): stop accepting, answer new options with
 * NBD_REP_ERR_SHUTDOWN and new requests with NBD_ESHUTDOWN, let running requests finish, close
 * every connection, then the caller flushes the storage.
 */
import net from 'node:net';
import fs from 'node:fs';
import type { ExportCatalog } from '../common/block-device.js';
import type { Logger } from '../common/log.js';
import { DEFAULT_BLOCK_SIZES, type BlockSizeConstraints } from '../protocol/handshake.js';
import { InFlightLimit } from './in-flight-limit.js';
import { PayloadPool, SLAB_BYTES } from './payload-pool.js';
import { Connection, READ_BUFFER_BYTES } from './connection.js';
import type { IoStats } from './io-stats.js';
import type { TlsServerConfig } from './tls.js';

export interface NbdServerOptions {
  catalog: ExportCatalog;
  logger: Logger;
  blockSizes?: BlockSizeConstraints;
  /**
   * READ and WRITE bytes in flight on all connections together (default 64 MiB): a request that
   * does not fit waits before its payload is read (see in-flight-limit.ts).
   */
  maxInFlightBytes?: number;
  /** The same for one connection (default half the server's). */
  maxConnectionInFlightBytes?: number;
  maxInFlightRequests?: number;
  /** Counts and times every request per export, for the metrics (see io-stats.ts). */
  ioStats?: IoStats;
  /** STARTTLS offered (`on`) or required (`require`) with these credentials; absent: no TLS. */
  tls?: TlsServerConfig | null;
}

export const DEFAULT_MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024;

export type ListenAddress = { host: string; port: number } | { path: string };

export class NbdServer {
  /** Request bytes in flight on all connections. */
  readonly inFlight: InFlightLimit;
  /** Buffers for WRITE payloads and READ replies, shared by every connection. */
  private readonly payloads: PayloadPool;
  /** The socket read buffer every connection shares (see connection.ts). */
  private readonly readBuffer = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
  private readonly servers: net.Server[] = [];
  private readonly connections = new Set<Connection>();
  private shuttingDown = false;
  private nextConnectionId = 1;

  constructor(private readonly options: NbdServerOptions) {
    this.inFlight = new InFlightLimit(options.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT_BYTES);
    // Idle pool memory stays within the in-flight bound, or one piece of the largest slab class
    // (a stream of 32 MiB reads then reuses its piece rather than making a slab each time).
    this.payloads = new PayloadPool(Math.max(this.inFlight.limitBytes, SLAB_BYTES / 2));
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Buffers kept for reuse (resident, or were): what `trimMemory` can give back. */
  get pooledBytes(): number {
    return this.payloads.retainedBytes;
  }

  /** Gives back the buffers kept for reuse (when idle); returns the bytes. */
  trimMemory(): number {
    return this.payloads.trim();
  }

  /** Starts listening; resolves with the address actually bound (port 0 picks a free port). */
  async listen(address: ListenAddress): Promise<ListenAddress> {
    const server = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
    if ('path' in address) removeStaleSocket(address.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if ('path' in address) server.listen(address.path, () => resolve());
      else server.listen(address.port, address.host, () => resolve());
    });
    server.on('error', (error) => this.options.logger.error('listener error', { error: error.message }));
    this.servers.push(server);
    const bound = server.address();
    if (bound !== null && typeof bound === 'object') return { host: bound.address, port: bound.port };
    return { path: String(bound) };
  }

  private accept(socket: net.Socket): void {
    const id = this.nextConnectionId++;
    const logger = this.options.logger.child({ conn: id, peer: socket.remoteAddress ?? 'unix' });
    if (this.shuttingDown) {
      socket.destroy();
      return;
    }
    const connection = new Connection(socket, {
      catalog: this.options.catalog,
      logger,
      blockSizes: this.options.blockSizes ?? DEFAULT_BLOCK_SIZES,
      maxInFlightBytes: this.options.maxConnectionInFlightBytes ?? Math.ceil(this.inFlight.limitBytes / 2),
      inFlight: this.inFlight,
      payloads: this.payloads,
      readBuffer: this.readBuffer,
      maxInFlightRequests: this.options.maxInFlightRequests ?? 1024,
      isShuttingDown: () => this.shuttingDown,
      ioStats: this.options.ioStats ?? null,
      tls: this.options.tls ?? null,
    });
    this.connections.add(connection);
    logger.debug('client connected');
    void connection.finished.then(() => {
      this.connections.delete(connection);
      logger.debug('client disconnected');
    });
  }

  /** Graceful shutdown: resolves once every connection has finished its running requests and closed. */
  async close(): Promise<void> {
    this.shuttingDown = true;
    const closing = this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    await Promise.all([...this.connections].map((connection) => connection.shutdown()));
    await Promise.all(closing);
  }
}

function removeStaleSocket(path: string): void {
  try {
    if (fs.statSync(path).isSocket()) fs.unlinkSync(path);
  } catch {
    // Nothing there.
  }
}
