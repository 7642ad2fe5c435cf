/**
 * The NBD transmission phase, sans-IO: a request decoder (bytes in, typed requests out), the
 * request validator (the spec's rules, as one pure function) and the reply encoders.
 *
 * The decoder never buffers an oversized write: it skips its payload as it arrives and reports the
 * request only once the payload is consumed, so a rejected write keeps the stream in step and its
 * error reply never overtakes the client's own payload (libnbd, for one, treats a reply that
 * arrives before it has finished sending the request as a reply to an unknown cookie). The only
 * unrecoverable input is a bad request magic, after which nothing can be framed; the decoder then
 * reports `fatal` and the caller closes the connection.
 *
 * Admission: before it gathers a request's payload (or reports a request without one), the
 * decoder asks the caller's `admit`. A request refused is held, with everything after it, until the
 * caller calls `resume()`, so the caller can bound the memory of requests in flight and leave the
 * rest in the socket, where TCP holds the client back. An oversized write is never admitted: its
 * payload is skipped, not kept.
 */
import { ByteQueue } from './byte-queue.js';
import * as C from './constants.js';

export interface NbdRequest {
  flags: number;
  type: number;
  /** Opaque; echoed back unchanged in every reply to this request. */
  cookie: bigint;
  offset: bigint;
  length: number;
}

export type RequestEvent =
  | { type: 'request'; request: NbdRequest; payload: Buffer | null }
  /** A WRITE whose payload is larger than we accept, already skipped: answer with an error. */
  | { type: 'oversized-write'; request: NbdRequest }
  | { type: 'fatal'; reason: string };

export class RequestDecoder {
  private readonly queue = new ByteQueue();
  private pending: NbdRequest | null = null; // a WRITE waiting for the rest of its payload
  private payload: Buffer | null = null; // where that payload is being gathered
  private payloadFilled = 0;
  private skipBytesLeft = 0;
  private skipping: NbdRequest | null = null; // the oversized WRITE whose payload is being skipped
  private held: NbdRequest | null = null; // refused by `admit`, waiting for `resume`
  private failed = false;

  /**
   * `allocatePayload` provides the buffer a WRITE payload is copied into (the caller may pool
   * them): one that arrives in several chunks is gathered there as it comes, and so is every
   * payload of a transient chunk. A payload inside one chunk that is not transient is a view of it.
   * `admit` is asked once per request, in order, before it is gathered or reported; false holds it.
   */
  constructor(
    private readonly maxPayloadBytes: number,
    private readonly allocatePayload: (lengthBytes: number) => Buffer = Buffer.allocUnsafe,
    private readonly admit: (request: NbdRequest) => boolean = () => true,
  ) {}

  /** A request is held (refused by `admit`); nothing after it is framed until `resume()`. */
  get holding(): boolean {
    return this.held !== null;
  }

  /** Bytes received but not yet framed (counts toward the connection's buffered bytes). */
  get bufferedBytes(): number {
    return this.queue.length + this.payloadFilled;
  }

  /**
   * Frames what `chunk` completes. A `transient` chunk is reused by the caller once this returns
   * (a socket read buffer): nothing returned or kept refers to it.
   */
  push(chunk: Buffer, transient = false): RequestEvent[] {
    const events: RequestEvent[] = [];
    if (this.failed) return events;
    this.queue.push(chunk);
    if (this.held === null) this.frame(events, transient);
    if (transient) this.queue.retain();
    return events;
  }

  /** Asks `admit` again for the held request; if it is admitted now, frames on. */
  resume(): RequestEvent[] {
    const events: RequestEvent[] = [];
    const request = this.held;
    if (request === null || this.failed || !this.admit(request)) return events;
    this.held = null;
    this.accept(request, events);
    this.frame(events, false);
    return events;
  }

  private frame(events: RequestEvent[], transient: boolean): void {
    while (this.held === null) {
      if (this.skipBytesLeft > 0) {
        this.skipBytesLeft -= this.queue.skip(this.skipBytesLeft);
        if (this.skipBytesLeft > 0) return;
      }
      if (this.skipping !== null) {
        events.push({ type: 'oversized-write', request: this.skipping });
        this.skipping = null;
      }
      if (this.pending !== null) {
        const request = this.pending;
        if (this.payload === null) {
          if (this.queue.length >= request.length && !transient) {
            events.push({ type: 'request', request, payload: this.queue.take(request.length, this.allocatePayload) });
            this.pending = null;
            continue;
          }
          this.payload = this.allocatePayload(request.length);
        }
        const count = Math.min(request.length - this.payloadFilled, this.queue.length);
        this.queue.copyOut(this.payload, this.payloadFilled, count);
        this.payloadFilled += count;
        if (this.payloadFilled < request.length) return;
        events.push({ type: 'request', request, payload: this.payload });
        this.pending = null;
        this.payload = null;
        this.payloadFilled = 0;
        continue;
      }
      if (this.queue.length < C.REQUEST_HEADER_BYTES) return;
      const header = this.queue.take(C.REQUEST_HEADER_BYTES);
      const magic = header.readUInt32BE(0);
      if (magic !== C.NBD_REQUEST_MAGIC) {
        this.failed = true;
        events.push({ type: 'fatal', reason: `bad request magic 0x${magic.toString(16)}` });
        return;
      }
      const request: NbdRequest = {
        flags: header.readUInt16BE(4),
        type: header.readUInt16BE(6),
        cookie: header.readBigUInt64BE(8),
        offset: header.readBigUInt64BE(16),
        length: header.readUInt32BE(24),
      };
      if (request.type === C.NBD_CMD_WRITE && request.length > this.maxPayloadBytes) {
        this.skipping = request;
        this.skipBytesLeft = request.length;
      } else if (this.admit(request)) {
        this.accept(request, events);
      } else {
        this.held = request;
      }
    }
  }

  /** An admitted request: reported now, or (a WRITE) once its payload is in. */
  private accept(request: NbdRequest, events: RequestEvent[]): void {
    if (request.type === C.NBD_CMD_WRITE) this.pending = request;
    else events.push({ type: 'request', request, payload: null });
  }
}

/** What `validateRequest` needs to know about the connection. */
export interface RequestContext {
  sizeBytes: number;
  readOnly: boolean;
  structuredReplies: boolean;
  metaContextCount: number;
  maxPayloadBytes: number;
  minimumBlockBytes: number;
}

const FLAGS_BY_COMMAND: Record<number, number> = {
  [C.NBD_CMD_READ]: C.NBD_CMD_FLAG_FUA | C.NBD_CMD_FLAG_DF,
  [C.NBD_CMD_WRITE]: C.NBD_CMD_FLAG_FUA,
  [C.NBD_CMD_DISC]: C.NBD_CMD_FLAG_FUA,
  [C.NBD_CMD_FLUSH]: C.NBD_CMD_FLAG_FUA,
  [C.NBD_CMD_TRIM]: C.NBD_CMD_FLAG_FUA,
  [C.NBD_CMD_CACHE]: C.NBD_CMD_FLAG_FUA,
  [C.NBD_CMD_WRITE_ZEROES]: C.NBD_CMD_FLAG_FUA | C.NBD_CMD_FLAG_NO_HOLE | C.NBD_CMD_FLAG_FAST_ZERO,
  [C.NBD_CMD_BLOCK_STATUS]: C.NBD_CMD_FLAG_FUA | C.NBD_CMD_FLAG_REQ_ONE,
};

export interface Rejection {
  errno: number;
  message: string;
}

/**
 * The spec's request rules (NBD.md sections 6, 7 and 11), in the order nbdkit applies them:
 * command, flags, permission, then range. Returns null when the request may proceed.
 */
export function validateRequest(request: NbdRequest, context: RequestContext): Rejection | null {
  const allowedFlags = FLAGS_BY_COMMAND[request.type];
  if (allowedFlags === undefined) {
    return { errno: C.NBD_EINVAL, message: `unknown command ${request.type}` };
  }
  const name = C.COMMAND_NAMES[request.type]!;
  if ((request.flags & ~allowedFlags) !== 0) {
    return { errno: C.NBD_EINVAL, message: `flags 0x${request.flags.toString(16)} are not valid for ${name}` };
  }
  if ((request.flags & C.NBD_CMD_FLAG_DF) !== 0 && !context.structuredReplies) {
    return { errno: C.NBD_EINVAL, message: 'DF needs structured replies' };
  }
  const writes = request.type === C.NBD_CMD_WRITE || request.type === C.NBD_CMD_TRIM || request.type === C.NBD_CMD_WRITE_ZEROES;
  if (writes && context.readOnly) {
    return { errno: C.NBD_EPERM, message: `${name} on a read-only export` };
  }
  if (request.type === C.NBD_CMD_FLUSH || request.type === C.NBD_CMD_DISC) {
    if (request.offset !== 0n || request.length !== 0) {
      return { errno: C.NBD_EINVAL, message: `${name} must have offset and length 0` };
    }
    return null;
  }
  if (request.type === C.NBD_CMD_BLOCK_STATUS) {
    if (!context.structuredReplies || context.metaContextCount === 0) {
      return { errno: C.NBD_EINVAL, message: 'BLOCK_STATUS needs structured replies and a meta context (NBD_OPT_SET_META_CONTEXT)' };
    }
    if (request.length === 0) {
      return { errno: C.NBD_EINVAL, message: 'BLOCK_STATUS of zero length' };
    }
  }
  const end = request.offset + BigInt(request.length);
  if (end > BigInt(context.sizeBytes)) {
    const errno = request.type === C.NBD_CMD_WRITE || request.type === C.NBD_CMD_WRITE_ZEROES ? C.NBD_ENOSPC : C.NBD_EINVAL;
    return { errno, message: `${name} of ${request.length} bytes at ${request.offset} is beyond the end of the export (${context.sizeBytes} bytes)` };
  }
  const carriesPayload = request.type === C.NBD_CMD_READ || request.type === C.NBD_CMD_WRITE;
  if (carriesPayload && request.length > context.maxPayloadBytes) {
    return { errno: C.NBD_EINVAL, message: `${name} of ${request.length} bytes exceeds the maximum payload of ${context.maxPayloadBytes} bytes` };
  }
  const mask = BigInt(context.minimumBlockBytes - 1);
  if (context.minimumBlockBytes > 1 && ((request.offset & mask) !== 0n || (BigInt(request.length) & mask) !== 0n)) {
    return { errno: C.NBD_EINVAL, message: `${name} is not aligned to ${context.minimumBlockBytes} bytes` };
  }
  return null;
}

// ---- Replies -------------------------------------------------------------------------------

export function encodeSimpleReply(cookie: bigint, errno: number): Buffer {
  const out = Buffer.allocUnsafe(C.SIMPLE_REPLY_HEADER_BYTES);
  writeSimpleReplyAt(out, 0, cookie, errno);
  return out;
}

/** A simple reply header written at `target[at..at + 16]` (the fast path writes many into one buffer). */
export function writeSimpleReplyAt(target: Buffer, at: number, cookie: bigint, errno: number): void {
  target.writeUInt32BE(C.NBD_SIMPLE_REPLY_MAGIC, at);
  target.writeUInt32BE(errno, at + 4);
  target.writeBigUInt64BE(cookie, at + 8);
}

export function encodeChunkHeader(cookie: bigint, flags: number, type: number, payloadBytes: number): Buffer {
  const out = Buffer.allocUnsafe(C.STRUCTURED_REPLY_HEADER_BYTES);
  writeChunkHeaderAt(out, 0, cookie, flags, type, payloadBytes);
  return out;
}

/** A structured reply chunk header written at `target[at..at + 20]`. */
export function writeChunkHeaderAt(target: Buffer, at: number, cookie: bigint, flags: number, type: number, payloadBytes: number): void {
  target.writeUInt32BE(C.NBD_STRUCTURED_REPLY_MAGIC, at);
  target.writeUInt16BE(flags, at + 4);
  target.writeUInt16BE(type, at + 6);
  target.writeBigUInt64BE(cookie, at + 8);
  target.writeUInt32BE(payloadBytes, at + 16);
}

export function encodeNoneChunk(cookie: bigint): Buffer {
  return encodeChunkHeader(cookie, C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_TYPE_NONE, 0);
}

/** Bytes of an OFFSET_DATA chunk before its data: the chunk header and the offset. */
export const OFFSET_DATA_HEADER_BYTES = C.STRUCTURED_REPLY_HEADER_BYTES + 8;

/** Header and offset of an OFFSET_DATA chunk; the data follows on the wire. */
export function encodeOffsetDataHeader(cookie: bigint, done: boolean, offset: bigint, dataBytes: number): Buffer {
  const out = Buffer.allocUnsafe(OFFSET_DATA_HEADER_BYTES);
  writeOffsetDataHeaderAt(out, 0, cookie, done, offset, dataBytes);
  return out;
}

/** `encodeOffsetDataHeader` written at `target[at..at + OFFSET_DATA_HEADER_BYTES]`. */
export function writeOffsetDataHeaderAt(target: Buffer, at: number, cookie: bigint, done: boolean, offset: bigint, dataBytes: number): void {
  writeChunkHeaderAt(target, at, cookie, done ? C.NBD_REPLY_FLAG_DONE : 0, C.NBD_REPLY_TYPE_OFFSET_DATA, 8 + dataBytes);
  target.writeBigUInt64BE(offset, at + C.STRUCTURED_REPLY_HEADER_BYTES);
}

export function encodeOffsetHole(cookie: bigint, done: boolean, offset: bigint, holeBytes: number): Buffer {
  const out = Buffer.alloc(C.STRUCTURED_REPLY_HEADER_BYTES + 12);
  encodeChunkHeader(cookie, done ? C.NBD_REPLY_FLAG_DONE : 0, C.NBD_REPLY_TYPE_OFFSET_HOLE, 12).copy(out, 0);
  out.writeBigUInt64BE(offset, C.STRUCTURED_REPLY_HEADER_BYTES);
  out.writeUInt32BE(holeBytes, C.STRUCTURED_REPLY_HEADER_BYTES + 8);
  return out;
}

/** An NBD_REPLY_TYPE_ERROR chunk; always the final chunk of its reply. */
export function encodeErrorChunk(cookie: bigint, errno: number, message: string): Buffer {
  const text = Buffer.from(message, 'utf8').subarray(0, C.NBD_MAX_STRING_BYTES);
  const out = Buffer.alloc(C.STRUCTURED_REPLY_HEADER_BYTES + 6 + text.length);
  encodeChunkHeader(cookie, C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_TYPE_ERROR, 6 + text.length).copy(out, 0);
  out.writeUInt32BE(errno, C.STRUCTURED_REPLY_HEADER_BYTES);
  out.writeUInt16BE(text.length, C.STRUCTURED_REPLY_HEADER_BYTES + 4);
  text.copy(out, C.STRUCTURED_REPLY_HEADER_BYTES + 6);
  return out;
}

export function encodeBlockStatusChunk(
  cookie: bigint,
  done: boolean,
  contextId: number,
  extents: ReadonlyArray<{ lengthBytes: number; flags: number }>,
): Buffer {
  const payloadBytes = 4 + 8 * extents.length;
  const out = Buffer.alloc(C.STRUCTURED_REPLY_HEADER_BYTES + payloadBytes);
  encodeChunkHeader(cookie, done ? C.NBD_REPLY_FLAG_DONE : 0, C.NBD_REPLY_TYPE_BLOCK_STATUS, payloadBytes).copy(out, 0);
  let at = C.STRUCTURED_REPLY_HEADER_BYTES;
  out.writeUInt32BE(contextId, at);
  at += 4;
  for (const extent of extents) {
    out.writeUInt32BE(extent.lengthBytes, at);
    out.writeUInt32BE(extent.flags, at + 4);
    at += 8;
  }
  return out;
}
