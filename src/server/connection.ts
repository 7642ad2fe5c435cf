/**
 * One NBD client connection: the I/O shell around the sans-IO handshake and request decoder.
 *
 * Requests run concurrently: data requests go to the device's fast path (`submit`, one request
 * object and one callback each, no promise), so a read the device serves from memory completes
 * before the decoder has moved on. Each reply is queued as it completes, and every reply queued
 * while one piece of work runs (one socket read, one batch of writes) goes out in one corked
 * write at the end of it (a microtask), so replies never interleave on the wire and a burst of
 * requests costs one system call.
 *
 * Memory in flight is bounded twice, before a request's payload is read or its reply buffer
 * taken: by `maxInFlightBytes` for this connection and by the server's `InFlightLimit` for all of
 * them. A READ or WRITE counts its length from admission until it is done: a WRITE until it has
 * been applied, a READ until the socket has written its reply (a client that stops reading replies
 * holds its share, and no more). A request that does not fit is held by the decoder, reading
 * stops (the socket is paused), and TCP holds the client back; so does a client not reading our
 * replies. When the socket closes, the replies not yet written are dropped and their bytes given
 * back at once; requests the engine is still running give theirs back as they finish (their
 * replies are dropped too), and nothing after them is read. So a client that leaves with large
 * reads in flight costs nothing once it has gone, and clients that stop reading their replies
 * hold at most `maxInFlightBytes` each.
 *
 * Reads land in one buffer that the server shares between its connections and reuses for every
 * read (Node's `onread` user buffer, which `net.Server` does not offer for accepted sockets, so it
 * is installed on the handle the way `net.Socket` does it). Sharing is safe because libuv reads
 * the sockets one after the other on this thread, and each read's bytes are framed or copied
 * before its callback returns. The default path allocates a fresh 64 KiB buffer per read, and at
 * a few hundred MB/s that memory outside V8's heap set off a full collection every 70–200 ms, each
 * a 3–7 ms pause that every request in flight waited for; a buffer per connection cost 256 KiB for
 * each client connected. The decoder copies payloads out of the read buffer (into pooled buffers)
 * and keeps only what it owns.
 *
 * TLS (STARTTLS, see tls.ts) replaces `socket` once, during the handshake, by a TLSSocket on the
 * same file descriptor; the shared read buffer is installed on it the same way (TLSWrap hands out
 * decrypted bytes through the same allocation hook, synchronously). Everything after the handshake
 * writes to `this.socket` whatever it is, so the plain path has no TLS branch or wrapper.
 */
import net, { type Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { IoCommand, concatReadExtents, type IoRequest, type ReadExtent, type ReadResult } from '../common/block-device.js';
import { isStorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import * as C from '../protocol/constants.js';
import { nbdErrnoOf } from '../protocol/errno.js';
import { Handshake, type BlockSizeConstraints, type NegotiatedSession } from '../protocol/handshake.js';
import {
  RequestDecoder,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeNoneChunk,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  OFFSET_DATA_HEADER_BYTES,
  writeOffsetDataHeaderAt,
  writeSimpleReplyAt,
  validateRequest,
  type NbdRequest,
  type RequestEvent,
} from '../protocol/transmission.js';
import type { ExportCatalog } from '../common/block-device.js';
import type { Grant, InFlightLimit } from './in-flight-limit.js';
import type { ExportIoStats, IoStats } from './io-stats.js';
import type { PayloadPool } from './payload-pool.js';
import { peerIdentity, upgradeToTls, type TlsServerConfig } from './tls.js';

export interface ConnectionOptions {
  catalog: ExportCatalog;
  logger: Logger;
  blockSizes: BlockSizeConstraints;
  /** READ and WRITE bytes this connection may have in flight (one larger request may run alone). */
  maxInFlightBytes: number;
  /** The server's bound on the bytes in flight on all connections. */
  inFlight: InFlightLimit;
  /** Where WRITE payloads are copied and READ replies filled (and given back). */
  payloads: PayloadPool;
  /** The read buffer every connection of the server shares (see the design note). */
  readBuffer: Buffer;
  maxInFlightRequests: number;
  isShuttingDown: () => boolean;
  /** Where requests are counted and timed, per export (see io-stats.ts); null: not counted. */
  ioStats?: IoStats | null;
  /** STARTTLS is offered (or required) with these credentials; null: the spec's NOTLS mode. */
  tls?: TlsServerConfig | null;
}

/** Bytes one socket read may return: a QD8 stream of 128 KiB writes in four reads. */
export const READ_BUFFER_BYTES = 256 * 1024;

/** Reply buffers handed to the socket, and the request bytes they hold until written. */
interface PendingWrite {
  releases: Buffer[];
  costBytes: number;
  /** The part of `costBytes` that large requests hold (see in-flight-limit.ts). */
  largeCostBytes: number;
  settled: boolean;
}

/** The symbols under which `net.Socket` keeps a user read buffer and its callback, if any. */
const USER_BUFFER_SYMBOLS = findUserBufferSymbols();

function findUserBufferSymbols(): { buffer: symbol; callback: symbol } | null {
  const probe = new net.Socket();
  const symbols = Object.getOwnPropertySymbols(probe);
  const buffer = symbols.find((symbol) => symbol.description === 'kBuffer');
  const callback = symbols.find((symbol) => symbol.description === 'kBufferCb');
  probe.destroy();
  return buffer !== undefined && callback !== undefined ? { buffer, callback } : null;
}

/**
 * Makes `socket` read into one reused buffer and call `onRead` with each read's bytes (valid only
 * during the call); false (and nothing changed) where this Node does not support it.
 */
function readIntoUserBuffer(socket: Socket, buffer: Buffer, onRead: (bytes: Buffer) => void): boolean {
  const handle = (socket as unknown as { _handle?: { useUserBuffer?: (buffer: Uint8Array) => void } })._handle;
  const symbols = USER_BUFFER_SYMBOLS;
  if (symbols === null || typeof handle?.useUserBuffer !== 'function') return false;
  const fields = socket as unknown as Record<symbol, unknown>;
  if (fields[symbols.buffer] !== null || fields[symbols.callback] !== null) return false;
  handle.useUserBuffer(buffer);
  fields[symbols.buffer] = buffer;
  fields[symbols.callback] = (lengthBytes: number) => {
    onRead(buffer.subarray(0, lengthBytes));
  };
  return true;
}

/** How long a server that is shutting down, or was told DISC, waits for the client to close its side after our FIN. */
const SHUTDOWN_GRACE_MS = 1000;
/** Before that FIN: replies still going out are cut off only when the client took none of them for this long. */
const STALLED_REPLY_MS = 10_000;
/**
 * Reply buffers this small go out copied together, one buffer per run of them: a flush of 32
 * write replies was 32 `socket.write` calls (an entry each in the stream's buffer, an iovec each
 * in the writev) for 512 bytes. Larger buffers (read payloads) go as they are, never copied.
 */
const COALESCE_MAX_BYTES = 512;

/**
 * Reply headers are written in place into a slab, back to back, and go out as views of it: no
 * buffer per reply (a 16-byte reply cost two allocations of about 110 bytes each, and a copy
 * when its flush coalesced it). Slab bytes are written once and never reused: a full slab is
 * replaced, and the old one is freed with the last write that refers to it.
 */
const REPLY_SLAB_BYTES = 16 * 1024;

/** Extents in BLOCK_STATUS replies are capped well under the spec's 2^20 per chunk. */
const MAX_STATUS_EXTENTS = 65536;

export class Connection {
  private readonly handshake: Handshake;
  private session: NegotiatedSession | null = null;
  private decoder: RequestDecoder | null = null;
  /** The attached export's counters, looked up once after the handshake. */
  private ioStats: ExportIoStats | null = null;
  /** READ and WRITE bytes admitted and not yet done (see the design note). */
  private inFlightBytes = 0;
  private inFlightRequests = 0;
  /** Bytes the server granted to the request the decoder holds, waiting to be taken by `admit`. */
  private grantedBytes = 0;
  /** Set while the held request waits for the server's grant. */
  private waitingForServer = false;
  private resumeScheduled = false;
  private disconnecting = false;
  private closed = false;
  private readonly idle: Array<() => void> = [];
  private outgoing: Buffer[] = [];
  /** Reply headers written in place (see REPLY_SLAB_BYTES); the run from `slabRunStart` is not yet in `outgoing`. */
  private slab = Buffer.allocUnsafe(REPLY_SLAB_BYTES);
  private slabAt = 0;
  private slabRunStart = 0;
  /** Pooled read buffers in `outgoing`, given back once the write that carries them completes... */
  private releases: Buffer[] = [];
  /** ...and the request bytes they hold until then. */
  private outgoingCostBytes = 0;
  private outgoingLargeCostBytes = 0;
  private readonly pendingWrites = new Set<PendingWrite>();
  private flushScheduled = false;
  private readonly onGrant: Grant = (bytes) => this.granted(bytes);
  readonly finished: Promise<void>;
  private resolveFinished!: () => void;
  /** Set from STARTTLS until the TLS handshake is done (nothing is read as NBD meanwhile). */
  private tlsPending = false;
  /**
   * The socket every reply is written to: the accepted one, or after STARTTLS the TLS socket on
   * top of it, so the transmission phase runs the same code either way.
   */
  private socket: Socket;
  private readonly onSocketData = (chunk: Buffer) => this.onData(chunk, false);
  private readonly onSocketDrain = () => this.updateFlow();
  private readonly onSocketError = (error: Error) => this.options.logger.debug('socket error', { error: error.message });
  private readonly onSocketClose = () => this.onClose();

  constructor(
    socket: Socket,
    private readonly options: ConnectionOptions,
  ) {
    this.socket = socket;
    this.finished = new Promise((resolve) => (this.resolveFinished = resolve));
    this.handshake = new Handshake({ catalog: options.catalog, blockSizes: options.blockSizes, isShuttingDown: options.isShuttingDown, tlsMode: options.tls?.mode ?? 'off' });
    socket.setNoDelay?.(true);
    this.listenTo(socket);
    socket.write(this.handshake.greeting());
  }

  private listenTo(socket: Socket): void {
    if (!readIntoUserBuffer(socket, this.options.readBuffer, (bytes) => this.onData(bytes, true))) socket.on('data', this.onSocketData);
    socket.on('drain', this.onSocketDrain);
    socket.on('error', this.onSocketError);
    socket.on('close', this.onSocketClose);
  }

  /** Resolves once no request is running on this connection. */
  whenIdle(): Promise<void> {
    if (this.inFlightRequests === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  /**
   * Server shutdown: let running requests finish, then close. A client that is negotiating, or
   * idle, may not read again for a long time (a blocking libnbd handle only notices our FIN on its
   * next call), so once our FIN is out it gets SHUTDOWN_GRACE_MS to close its side before the
   * socket is destroyed; otherwise one idle client would hold the whole server up forever.
   */
  async shutdown(): Promise<void> {
    if (this.session !== null) await this.whenIdle();
    this.endSocket();
    this.destroyAfterGrace();
    await this.finished;
  }

  /**
   * After our `end()`: the replies still queued go out for as long as the client keeps taking
   * them (one that took nothing for `STALLED_REPLY_MS` is cut off), and once all of it, our FIN
   * included, is out, the client has `SHUTDOWN_GRACE_MS` to close its side. The grace used to start
   * at `end()`: on a busy machine a client still reading a 1 MiB reply was cut off mid-reply and
   * waited for the rest forever (test/server/in-flight.test.ts, DISC after a large READ).
   */
  private destroyAfterGrace(): void {
    const socket = this.socket;
    let pendingBytes = socket.writableLength;
    let timer: NodeJS.Timeout | undefined;
    const start = (ms: number, then: () => void) => {
      timer = setTimeout(then, ms);
      timer.unref();
    };
    const onFinish = () => {
      clearTimeout(timer);
      start(SHUTDOWN_GRACE_MS, () => socket.destroy());
    };
    const watch = () => {
      if (socket.writableLength >= pendingBytes) {
        socket.destroy();
        return;
      }
      pendingBytes = socket.writableLength;
      start(STALLED_REPLY_MS, watch);
    };
    if (socket.writableFinished) onFinish();
    else {
      socket.once('finish', onFinish);
      start(STALLED_REPLY_MS, watch);
    }
    void this.finished.then(() => {
      clearTimeout(timer);
      socket.off('finish', onFinish);
    });
  }

  /** Gives back everything the connection holds; requests still running drop their replies. */
  private onClose(): void {
    this.closed = true;
    if (this.ioStats !== null) this.ioStats.connections -= 1;
    if (this.waitingForServer && this.options.inFlight.cancel(this.onGrant)) this.waitingForServer = false;
    this.options.inFlight.release(this.grantedBytes); // granted to the held request, never admitted
    this.grantedBytes = 0;
    for (const write of [...this.pendingWrites]) this.settleWrite(write);
    this.flushOutgoing();
    this.resolveFinished();
  }

  /** Bytes from the socket; `transient` ones are overwritten by the next read. */
  private onData(chunk: Buffer, transient: boolean): void {
    if (this.disconnecting) return;
    if (this.decoder === null) {
      this.runHandshake(transient ? Buffer.from(chunk) : chunk);
      return;
    }
    this.handleEvents(this.decoder.push(chunk, transient));
    // A request held in this read (no room for it yet) pauses reading here: `dispatch` looks only
    // before the next request is framed, so a held request that was the only one of its read (or
    // the last) paused nothing, and what followed was read and buffered without bound.
    if (this.decoder.holding) this.updateFlow();
  }

  private runHandshake(chunk: Buffer): void {
    if (this.tlsPending) {
      // Reading stopped at STARTTLS; bytes here would be plain text the TLS layer never saw.
      this.options.logger.info('handshake ended', { reason: 'client sent plain text during the TLS upgrade' });
      this.socket.destroy();
      return;
    }
    for (const action of this.handshake.receive(chunk)) {
      switch (action.type) {
        case 'send':
          this.socket.write(action.bytes);
          break;
        case 'close':
          // A client that lists exports and leaves is routine: debug, not info.
          if (action.normal) this.options.logger.debug('handshake ended', { reason: action.reason });
          else this.options.logger.info('handshake ended', { reason: action.reason });
          this.socket.end();
          return;
        case 'starttls':
          this.startTls(action.reply);
          return;
        case 'transmission':
          this.session = action.session;
          this.ioStats = this.options.ioStats?.forExport(action.session.exportEntry.name) ?? null;
          if (this.ioStats !== null) this.ioStats.connections += 1;
          this.decoder = new RequestDecoder(
            action.session.blockSizes.maximumPayloadBytes,
            (lengthBytes) => this.options.payloads.take(lengthBytes),
            (request) => this.admit(request),
          );
          this.options.logger.info('client attached', {
            export: action.session.exportEntry.name,
            structuredReplies: action.session.structuredReplies,
            metaContexts: [...action.session.metaContexts.values()],
            flags: `0x${action.session.transmissionFlags.toString(16)}`,
          });
          if (action.leftover.length > 0) this.handleEvents(this.decoder.push(action.leftover));
          return;
      }
    }
  }

  /**
   * STARTTLS was accepted: stop reading, write the ACK in plain text, and once it is out hand the
   * file descriptor to a TLS socket, which from then on is the socket everything is read from and
   * written to. The handshake resumes (state forgotten) when TLS is up; a failed TLS handshake
   * (garbage instead of a ClientHello, a client that hangs up, a refused certificate) closes the
   * connection like any other socket error.
   */
  private startTls(reply: Buffer): void {
    const plain = this.socket;
    const config = this.options.tls!;
    this.tlsPending = true;
    plain.pause();
    plain.write(reply, (error) => {
      if (error || this.closed || plain.destroyed) return;
      plain.off('data', this.onSocketData);
      plain.off('drain', this.onSocketDrain);
      plain.off('close', this.onSocketClose);
      plain.off('error', this.onSocketError);
      plain.on('error', () => {}); // its errors now reach the TLS socket, which reports them
      const upgrade = upgradeToTls(plain, config);
      const secure: TLSSocket = upgrade.socket;
      this.socket = secure;
      this.listenTo(secure);
      secure.on('error', (tlsError: Error) => {
        if (this.tlsPending) this.options.logger.info('TLS handshake failed', { error: tlsError.message });
      });
      secure.once('secure', () => {
        const { identity, refused } = peerIdentity(upgrade, config);
        if (refused !== null) {
          this.options.logger.info('TLS client refused', { reason: refused });
          secure.destroy();
          return;
        }
        this.tlsPending = false;
        this.options.logger.debug('TLS established', { protocol: secure.getProtocol(), cipher: secure.getCipher().name, identity });
        this.handshake.tlsEstablished(identity);
      });
    });
  }

  /** What a request holds in flight: the length of a READ or WRITE the server will serve. */
  private costOf(request: NbdRequest): number {
    if (request.type !== C.NBD_CMD_READ && request.type !== C.NBD_CMD_WRITE) return 0;
    return request.length <= this.session!.blockSizes.maximumPayloadBytes ? request.length : 0;
  }

  /**
   * The decoder's question before it takes a request: do its bytes fit, in this connection's share
   * and in the server's? If not, the request is held and reading pauses (see `updateFlow`) until
   * this connection's requests finish (`releaseBytes`) or the server grants the bytes (`granted`).
   */
  private admit(request: NbdRequest): boolean {
    const costBytes = this.costOf(request);
    if (costBytes === 0) return true;
    if (this.grantedBytes > 0) {
      this.inFlightBytes += this.grantedBytes;
      this.grantedBytes = 0;
      return true;
    }
    if (this.waitingForServer || this.closed || this.disconnecting) return false;
    if (this.inFlightBytes > 0 && this.inFlightBytes + costBytes > this.options.maxInFlightBytes) return false;
    if (!this.options.inFlight.acquire(costBytes, this.onGrant)) {
      this.waitingForServer = true;
      return false;
    }
    this.inFlightBytes += costBytes;
    return true;
  }

  private granted(bytes: number): void {
    this.waitingForServer = false;
    if (this.closed || this.disconnecting) {
      this.options.inFlight.release(bytes);
      return;
    }
    this.grantedBytes = bytes;
    this.scheduleResume();
  }

  /** Request bytes done: out of this connection's share and the server's. */
  /** `largeCostBytes`: for a sum of several requests' bytes, the large ones' part (see in-flight-limit.ts). */
  private releaseBytes(costBytes: number, largeCostBytes?: number): void {
    if (costBytes === 0) return;
    this.inFlightBytes -= costBytes;
    this.options.inFlight.release(costBytes, largeCostBytes);
    if (!this.waitingForServer && this.decoder?.holding) this.scheduleResume();
  }

  /** Lets the decoder try its held request again, outside the stack of whatever freed the room. */
  private scheduleResume(): void {
    if (this.resumeScheduled) return;
    this.resumeScheduled = true;
    queueMicrotask(() => {
      this.resumeScheduled = false;
      if (this.decoder === null || this.disconnecting) return;
      if (this.closed) {
        this.options.inFlight.release(this.grantedBytes);
        this.grantedBytes = 0;
        return;
      }
      this.handleEvents(this.decoder.resume());
      this.updateFlow();
    });
  }

  private handleEvents(events: RequestEvent[]): void {
    for (const event of events) {
      if (this.disconnecting) return;
      switch (event.type) {
        case 'fatal':
          this.options.logger.warn('closing connection', { reason: event.reason });
          this.disconnecting = true;
          this.socket.destroy();
          return;
        case 'oversized-write':
          this.ioStats?.rejected(C.NBD_CMD_WRITE, C.NBD_EINVAL);
          this.sendError(event.request, C.NBD_EINVAL, `WRITE of ${event.request.length} bytes exceeds the maximum payload`);
          break;
        case 'request':
          this.dispatch(event.request, event.payload);
          break;
      }
    }
  }

  private dispatch(request: NbdRequest, payload: Buffer | null): void {
    const session = this.session!;
    if (request.type === C.NBD_CMD_DISC) {
      this.disconnecting = true;
      this.socket.pause();
      void this.whenIdle().then(() => this.endAfterDisc());
      return;
    }
    const costBytes = this.costOf(request);
    if (this.options.isShuttingDown()) {
      this.options.payloads.give(payload);
      this.releaseBytes(costBytes);
      this.ioStats?.rejected(request.type, C.NBD_ESHUTDOWN);
      this.sendError(request, C.NBD_ESHUTDOWN, 'server is shutting down');
      return;
    }
    const device = session.exportEntry.device;
    const rejection = validateRequest(request, {
      sizeBytes: device.sizeBytes,
      readOnly: device.readOnly,
      structuredReplies: session.structuredReplies,
      metaContextCount: session.metaContexts.size,
      maxPayloadBytes: session.blockSizes.maximumPayloadBytes,
      minimumBlockBytes: session.blockSizes.minimumBytes,
    });
    if (rejection !== null) {
      this.options.logger.debug('request rejected', { errno: rejection.errno, reason: rejection.message });
      this.options.payloads.give(payload);
      this.releaseBytes(costBytes);
      this.ioStats?.rejected(request.type, rejection.errno);
      this.sendError(request, rejection.errno, rejection.message);
      return;
    }
    this.inFlightRequests += 1;
    this.updateFlow();
    if (request.type === C.NBD_CMD_BLOCK_STATUS) {
      this.sendBlockStatus(request, Number(request.offset)).then(
        () => this.settled(costBytes),
        (error: unknown) => {
          this.failRequest(request, error);
          this.settled(costBytes);
        },
      );
      return;
    }
    const io = new PendingIo(this, request, payload, costBytes);
    if (this.ioStats !== null) io.startedMs = this.ioStats.begin();
    // A read fills a pooled buffer, which goes back once its reply has been written.
    if (request.type === C.NBD_CMD_READ && request.length > 0) io.readInto = this.options.payloads.take(request.length);
    // Zero-length data requests do nothing (a FUA one flushes), and the device never sees them.
    if (request.length === 0 && request.type !== C.NBD_CMD_FLUSH) {
      if (io.fua) io.command = IoCommand.Flush;
      else {
        this.complete(io, null);
        return;
      }
    }
    session.exportEntry.device.submit(io);
  }

  /** A data request finished: reply, and account for it (a READ's bytes go with its reply). */
  complete(io: PendingIo, error: unknown): void {
    const request = io.nbd;
    let doneBytes = io.costBytes;
    this.ioStats?.finish(request.type, request.length, error === null ? 0 : nbdErrnoOf(error), io.startedMs);
    if (error !== null) {
      this.failRequest(request, error);
      this.options.payloads.give(io.readInto);
    } else if (request.type === C.NBD_CMD_READ) {
      this.sendRead(request, io.result, io.readInto, io.costBytes);
      doneBytes = 0;
    } else this.sendOk(request);
    this.options.payloads.give(io.data);
    this.settled(doneBytes);
  }

  private settled(doneBytes: number): void {
    this.releaseBytes(doneBytes);
    this.inFlightRequests -= 1;
    this.updateFlow();
    if (this.inFlightRequests === 0) for (const resolve of this.idle.splice(0)) resolve();
  }

  private failRequest(request: NbdRequest, error: unknown): void {
    const errno = nbdErrnoOf(error);
    const message = error instanceof Error ? error.message : String(error);
    if (isStorageError(error)) {
      this.options.logger.debug('request failed', { command: C.COMMAND_NAMES[request.type], code: error.code, error: message });
    } else {
      this.options.logger.error('request failed with an unexpected error', { command: C.COMMAND_NAMES[request.type], error: message, stack: (error as Error)?.stack });
    }
    this.sendError(request, errno, message);
  }

  private updateFlow(): void {
    if (this.closed || this.disconnecting) return;
    const overLimit =
      (this.decoder?.holding ?? false) ||
      this.inFlightRequests >= this.options.maxInFlightRequests ||
      this.socket.writableNeedDrain;
    if (overLimit && !this.socket.isPaused()) this.socket.pause();
    else if (!overLimit && this.socket.isPaused()) this.socket.resume();
  }

  /**
   * Queues one whole reply. Replies completed by the same piece of work go out in one writev at
   * its end, which matters at high queue depths; a reply is never split by another.
   */
  private writeAll(buffers: Buffer[], release: Buffer | null = null, costBytes = 0): void {
    if (!this.queueReply(release, costBytes)) return;
    this.closeSlabRun();
    for (const buffer of buffers) this.outgoing.push(buffer);
  }

  /**
   * Accounts for a reply about to be queued (its pooled buffer and request bytes) and schedules the
   * flush; false when the connection is closed (then both are released here and nothing is queued).
   */
  private queueReply(release: Buffer | null, costBytes: number): boolean {
    if (this.closed) {
      this.options.payloads.give(release);
      this.releaseBytes(costBytes);
      return false;
    }
    if (release !== null) this.releases.push(release);
    this.outgoingCostBytes += costBytes;
    if (costBytes > 0 && !this.options.inFlight.isSmall(costBytes)) this.outgoingLargeCostBytes += costBytes;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flushOutgoing());
    }
    return true;
  }

  /** Room for `bytes` of reply header in the slab, after everything queued: the offset to write it at. */
  private slabRoom(bytes: number): number {
    if (this.slabAt + bytes > this.slab.length) {
      this.closeSlabRun();
      this.slab = Buffer.allocUnsafe(REPLY_SLAB_BYTES);
      this.slabAt = 0;
      this.slabRunStart = 0;
    }
    const at = this.slabAt;
    this.slabAt += bytes;
    return at;
  }

  /** Queues the slab's pending run of headers (before a buffer that must follow them). */
  private closeSlabRun(): void {
    if (this.slabAt === this.slabRunStart) return;
    this.outgoing.push(this.slab.subarray(this.slabRunStart, this.slabAt));
    this.slabRunStart = this.slabAt;
  }

  /** A simple reply, its header written in place, and a READ's data after it. */
  private sendSimple(request: NbdRequest, errno: number, costBytes = 0, release: Buffer | null = null, data: Buffer | null = null): void {
    if (!this.queueReply(release, costBytes)) return;
    const at = this.slabRoom(C.SIMPLE_REPLY_HEADER_BYTES); // before reading this.slab: a full slab is replaced
    writeSimpleReplyAt(this.slab, at, request.cookie, errno);
    if (data === null) return;
    this.closeSlabRun();
    this.outgoing.push(data);
  }

  /**
   * After DISC and the replies before it: our FIN, then reading on (what comes is dropped) so that
   * the client's FIN is seen and the socket closes. A paused socket never saw it and never closed:
   * one leaked socket, and one connection counted until shutdown, per client that said goodbye.
   * A client that never closes its side is cut off after the grace period.
   */
  private endAfterDisc(): void {
    this.endSocket();
    this.socket.resume();
    this.destroyAfterGrace();
  }

  /** Sends every queued reply, then closes our side. */
  private endSocket(): void {
    this.flushOutgoing();
    this.socket.end();
  }

  private flushOutgoing(): void {
    this.flushScheduled = false;
    this.closeSlabRun();
    const buffers = this.outgoing;
    const write: PendingWrite = { releases: this.releases, costBytes: this.outgoingCostBytes, largeCostBytes: this.outgoingLargeCostBytes, settled: false };
    this.outgoing = [];
    this.releases = [];
    this.outgoingCostBytes = 0;
    this.outgoingLargeCostBytes = 0;
    if (this.closed || buffers.length === 0) {
      this.settleWrite(write);
      return;
    }
    this.socket.cork();
    const pieces = coalesceSmall(buffers);
    const last = pieces.length - 1;
    for (let i = 0; i < last; i++) this.socket.write(pieces[i]!);
    if (write.releases.length === 0 && write.costBytes === 0) this.socket.write(pieces[last]!);
    else {
      // Settled once the kernel has every byte of this flush (or the socket failed, or closed): not sooner.
      this.pendingWrites.add(write);
      this.socket.write(pieces[last]!, () => this.settleWrite(write));
    }
    this.socket.uncork();
    this.updateFlow();
  }

  /** Reply buffers written (or never to be): back to the pool, and their request bytes released. */
  private settleWrite(write: PendingWrite): void {
    if (write.settled) return;
    write.settled = true;
    this.pendingWrites.delete(write);
    for (const buffer of write.releases) this.options.payloads.give(buffer);
    this.releaseBytes(write.costBytes, write.largeCostBytes);
  }

  private sendOk(request: NbdRequest): void {
    if (this.session!.structuredReplies && request.type === C.NBD_CMD_READ) {
      this.writeAll([encodeNoneChunk(request.cookie)]);
    } else {
      this.sendSimple(request, C.NBD_OK);
    }
  }

  private sendError(request: NbdRequest, errno: number, message: string): void {
    if (this.session!.structuredReplies) this.writeAll([encodeErrorChunk(request.cookie, errno, message)]);
    else this.sendSimple(request, errno);
  }

  /**
   * The reply to a read; `readInto` (the pooled buffer it was offered) goes back, and the request's
   * `costBytes` are released, once the reply is written.
   */
  private sendRead(request: NbdRequest, result: ReadResult | null, readInto: Buffer | null, costBytes: number): void {
    const session = this.session!;
    const release = readInto !== null && result !== null && result.data.buffer === readInto.buffer ? readInto : null;
    if (release === null) this.options.payloads.give(readInto);
    if (request.length === 0 || result === null) {
      if (session.structuredReplies) this.writeAll([encodeNoneChunk(request.cookie)], null, costBytes);
      else this.sendSimple(request, C.NBD_OK, costBytes);
      return;
    }
    const extents: ReadExtent[] = result.extents;
    if (!session.structuredReplies) {
      this.sendSimple(request, C.NBD_OK, costBytes, release, result.data);
      return;
    }
    if ((request.flags & C.NBD_CMD_FLAG_DF) !== 0) {
      const data = result.data.length === request.length ? result.data : concatReadExtents(extents, request.length);
      this.sendData(request, request.offset, data, release, costBytes);
      return;
    }
    if (extents.length === 1 && extents[0]!.data !== null) {
      const only = extents[0]!;
      this.sendData(request, request.offset, only.data!.length === only.lengthBytes ? only.data! : only.data!.subarray(0, only.lengthBytes), release, costBytes);
      return;
    }
    // Adjacent data extents go out as one OFFSET_DATA chunk (its payload is several buffers), so a
    // 128 KiB read of 32 separately stored blocks costs one chunk header, not 32.
    const buffers: Buffer[] = [];
    let offset = request.offset;
    for (let index = 0; index < extents.length; ) {
      const extent = extents[index]!;
      if (extent.data === null) {
        index += 1;
        buffers.push(encodeOffsetHole(request.cookie, index === extents.length, offset, extent.lengthBytes));
        offset += BigInt(extent.lengthBytes);
        continue;
      }
      const headerAt = buffers.push(Buffer.alloc(0)) - 1;
      let runBytes = 0;
      for (; index < extents.length && extents[index]!.data !== null; index++) {
        const data = extents[index]!;
        buffers.push(data.data!.subarray(0, data.lengthBytes));
        runBytes += data.lengthBytes;
      }
      buffers[headerAt] = encodeOffsetDataHeader(request.cookie, index === extents.length, offset, runBytes);
      offset += BigInt(runBytes);
    }
    this.writeAll(buffers, release, costBytes);
  }

  /** A read's whole reply as one OFFSET_DATA chunk, its header written in place. */
  private sendData(request: NbdRequest, offset: bigint, data: Buffer, release: Buffer | null, costBytes: number): void {
    if (!this.queueReply(release, costBytes)) return;
    const at = this.slabRoom(OFFSET_DATA_HEADER_BYTES); // before reading this.slab: a full slab is replaced
    writeOffsetDataHeaderAt(this.slab, at, request.cookie, true, offset, data.length);
    this.closeSlabRun();
    this.outgoing.push(data);
  }

  private async sendBlockStatus(request: NbdRequest, offset: number): Promise<void> {
    const session = this.session!;
    const device = session.exportEntry.device;
    const reqOne = (request.flags & C.NBD_CMD_FLAG_REQ_ONE) !== 0;
    const chunks: Array<{ id: number; extents: Array<{ lengthBytes: number; flags: number }> }> = [];
    for (const [id, context] of session.metaContexts) {
      let extents = await device.blockStatus(context, offset, request.length);
      if (extents.length === 0) throw new Error(`blockStatus(${context}) returned no extents`);
      if (reqOne) {
        extents = [{ lengthBytes: Math.min(extents[0]!.lengthBytes, request.length), flags: extents[0]!.flags }];
      } else if (extents.length > MAX_STATUS_EXTENTS) {
        extents = extents.slice(0, MAX_STATUS_EXTENTS);
      }
      chunks.push({ id, extents });
    }
    this.writeAll(chunks.map((chunk, index) => encodeBlockStatusChunk(request.cookie, index === chunks.length - 1, chunk.id, chunk.extents)));
  }
}

/** An NBD data request on its way through the device's fast path. */
class PendingIo implements IoRequest {
  command: IoCommand;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly fua: boolean;
  readonly noHole: boolean;
  readonly fastZero: boolean;
  result: ReadResult | null = null;
  readInto: Buffer | null = null;
  /** `performance.now()` when dispatched, for the latency histogram (io-stats.ts). */
  startedMs = 0;

  constructor(
    private readonly connection: Connection,
    readonly nbd: NbdRequest,
    readonly data: Buffer | null,
    readonly costBytes: number,
  ) {
    this.command = COMMANDS[nbd.type]!;
    this.offsetBytes = Number(nbd.offset);
    this.lengthBytes = nbd.length;
    this.fua = (nbd.flags & C.NBD_CMD_FLAG_FUA) !== 0;
    this.noHole = (nbd.flags & C.NBD_CMD_FLAG_NO_HOLE) !== 0;
    this.fastZero = (nbd.flags & C.NBD_CMD_FLAG_FAST_ZERO) !== 0;
  }

  done(_request: IoRequest, error: unknown): void {
    this.connection.complete(this, error);
  }
}

/** `buffers` with every run of two or more buffers of at most `COALESCE_MAX_BYTES` copied into one. */
function coalesceSmall(buffers: Buffer[]): Buffer[] {
  let small = 0;
  for (const buffer of buffers) if (buffer.length <= COALESCE_MAX_BYTES) small += 1;
  if (small < 2) return buffers;
  const out: Buffer[] = [];
  for (let i = 0; i < buffers.length; ) {
    let end = i;
    let bytes = 0;
    while (end < buffers.length && buffers[end]!.length <= COALESCE_MAX_BYTES) bytes += buffers[end++]!.length;
    if (end - i < 2) {
      out.push(buffers[i]!);
      i += 1;
      continue;
    }
    const merged = Buffer.allocUnsafe(bytes);
    for (let at = 0; i < end; i++) {
      merged.set(buffers[i]!, at);
      at += buffers[i]!.length;
    }
    out.push(merged);
  }
  return out;
}

const COMMANDS: Record<number, IoCommand> = {
  [C.NBD_CMD_READ]: IoCommand.Read,
  [C.NBD_CMD_WRITE]: IoCommand.Write,
  [C.NBD_CMD_TRIM]: IoCommand.Trim,
  [C.NBD_CMD_WRITE_ZEROES]: IoCommand.WriteZeroes,
  [C.NBD_CMD_FLUSH]: IoCommand.Flush,
  [C.NBD_CMD_CACHE]: IoCommand.Cache,
};
