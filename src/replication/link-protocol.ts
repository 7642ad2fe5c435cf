/**
 * The array-to-array link's wire format, sans-IO: bytes in, messages out (and back).
 *
 * A frame is `u32 headerLength, u32 dataLength, header (UTF-8 JSON), data`. The header is a small
 * JSON object whose `type` names the message; `data` carries block payloads (a replicated write,
 * a resync chunk) so that they never pass through JSON. JSON keeps the control messages readable
 * and cheap to extend; its cost (a few µs) is small next to a network round trip, and the link is
 * used by pod volumes only.
 *
 * Bounds: a header may be at most 1 MiB and a payload at most 64 MiB (a larger frame is a
 * protocol error and closes the link), so a bad or hostile peer cannot make the decoder buffer
 * without limit. Authentication happens before anything but the handshake messages is accepted
 * (see peer-link.ts).
 */
import { StorageError } from '../common/errors.js';

export const MAX_HEADER_BYTES = 1024 * 1024;
export const MAX_DATA_BYTES = 64 * 1024 * 1024;
const PREFIX_BYTES = 8;

/** A decoded message: its JSON header and its payload (empty when there is none). */
export interface LinkMessage {
  header: LinkHeader;
  data: Buffer | null;
}

export interface LinkHeader {
  type: string;
  [field: string]: unknown;
}

/** Encodes one frame as two buffers (prefix+header, data) so the payload is never copied. */
export function encodeFrame(header: LinkHeader, data: Buffer | null): Buffer[] {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  if (json.length > MAX_HEADER_BYTES) throw StorageError.invalidArgument(`link header of ${json.length} bytes is over ${MAX_HEADER_BYTES}`);
  const dataBytes = data === null ? 0 : data.length;
  if (dataBytes > MAX_DATA_BYTES) throw StorageError.invalidArgument(`link payload of ${dataBytes} bytes is over ${MAX_DATA_BYTES}`);
  const head = Buffer.allocUnsafe(PREFIX_BYTES + json.length);
  head.writeUInt32BE(json.length, 0);
  head.writeUInt32BE(dataBytes, 4);
  json.copy(head, PREFIX_BYTES);
  return data === null || dataBytes === 0 ? [head] : [head, data];
}

/**
 * Incremental decoder: `push` bytes as they arrive (any split), get whole messages back.
 * Throws CORRUPT on a frame that breaks the bounds or is not JSON; the caller closes the link.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;

  push(bytes: Buffer): LinkMessage[] {
    this.chunks.push(bytes);
    this.bufferedBytes += bytes.length;
    const out: LinkMessage[] = [];
    for (;;) {
      if (this.bufferedBytes < PREFIX_BYTES) break;
      const prefix = this.peek(PREFIX_BYTES);
      const headerBytes = prefix.readUInt32BE(0);
      const dataBytes = prefix.readUInt32BE(4);
      if (headerBytes > MAX_HEADER_BYTES || dataBytes > MAX_DATA_BYTES || headerBytes === 0) {
        throw StorageError.corrupt(`link frame out of bounds (header ${headerBytes} bytes, data ${dataBytes} bytes)`);
      }
      const frameBytes = PREFIX_BYTES + headerBytes + dataBytes;
      if (this.bufferedBytes < frameBytes) break;
      const frame = this.take(frameBytes);
      let header: LinkHeader;
      try {
        header = JSON.parse(frame.subarray(PREFIX_BYTES, PREFIX_BYTES + headerBytes).toString('utf8')) as LinkHeader;
      } catch (error) {
        throw StorageError.corrupt('link frame header is not JSON', error);
      }
      if (typeof header !== 'object' || header === null || typeof header.type !== 'string') throw StorageError.corrupt('link frame header has no type');
      out.push({ header, data: dataBytes === 0 ? null : frame.subarray(PREFIX_BYTES + headerBytes) });
    }
    return out;
  }

  private peek(lengthBytes: number): Buffer {
    if (this.chunks[0]!.length >= lengthBytes) return this.chunks[0]!;
    return this.flatten().subarray(0, lengthBytes);
  }

  /** Removes and returns the first `lengthBytes` bytes (a view when they lie in one chunk). */
  private take(lengthBytes: number): Buffer {
    let first = this.chunks[0]!;
    if (first.length < lengthBytes) first = this.flatten();
    const frame = first.subarray(0, lengthBytes);
    const rest = first.subarray(lengthBytes);
    if (rest.length > 0) this.chunks[0] = rest;
    else this.chunks.shift();
    this.bufferedBytes -= lengthBytes;
    return frame;
  }

  private flatten(): Buffer {
    const whole = Buffer.concat(this.chunks, this.bufferedBytes);
    this.chunks = [whole];
    return whole;
  }
}
