/**
 * How written data crosses an array-to-array link (pod writes, pod resync, asynchronous
 * replication): all-zero data as a header only (`z`), data LZ4-compressed when that shrinks it by
 * at least an eighth (`lz4`), else as it is. 4 KiB blocks that look random by the reducer's sample
 * (reduce/codec.ts) are not tried: LZ4 over random data costs about 18 µs a block and saves
 * nothing. The receiver expands a payload before anything else looks at it, and checks that it
 * expands to exactly the length the header claims (at most `MAX_PACKED_WRITE_BYTES`).
 *
 * Pure functions over buffers: no I/O, no link state.
 */
import { compressSync, uncompressSync } from 'lz4-napi';
import { StorageError } from '../common/errors.js';
import { looksIncompressible } from '../reduce/codec.js';
import type { LinkHeader } from './link-protocol.js';

/** Writes shorter than this are not compressed... */
const MIN_PACK_BYTES = 4096;
/** ...and a packed one expands to at most this (an NBD request is at most 32 MiB). */
export const MAX_PACKED_WRITE_BYTES = 64 * 1024 * 1024;
/** The unit of the incompressibility sample. */
const SAMPLE_BYTES = 4096;
/** Compared against, a slice at a time, by `isAllZero` (a memcmp, not a loop over bytes). */
const ZEROS = Buffer.alloc(64 * 1024);

export interface PackedWrite {
  z: boolean;
  lz4: boolean;
  /** The bytes to send: null for zeros, else the data or its LZ4 form. */
  bytes: Buffer | null;
}

export const NOT_PACKED: PackedWrite = { z: false, lz4: false, bytes: null };

export function isAllZero(data: Uint8Array): boolean {
  for (let at = 0; at < data.length; at += ZEROS.length) {
    const length = Math.min(ZEROS.length, data.length - at);
    if (Buffer.compare(data.subarray(at, at + length), ZEROS.subarray(0, length)) !== 0) return false;
  }
  return true;
}

/** A write's payload in its link form. */
export function packWrite(data: Buffer): PackedWrite {
  if (isAllZero(data)) return { z: true, lz4: false, bytes: null };
  if (data.length < MIN_PACK_BYTES || looksRandomThroughout(data)) return { z: false, lz4: false, bytes: data };
  const packed = compressSync(data);
  return packed.length <= data.length - (data.length >> 3) ? { z: false, lz4: true, bytes: packed } : { z: false, lz4: false, bytes: data };
}

/**
 * The payload of a packed write, `lengthBytes` long again (zeros allocated for `z`); a payload
 * that is not packed is returned as it is. Throws INVALID_ARGUMENT on a claim over the bound or a
 * payload that does not expand to `lengthBytes`.
 */
export function unpackWrite(header: LinkHeader, bytes: Buffer | null, lengthBytes: number): Buffer | null {
  if (header.z !== true && header.lz4 !== true) return bytes;
  if (!Number.isSafeInteger(lengthBytes) || lengthBytes < 0 || lengthBytes > MAX_PACKED_WRITE_BYTES) throw StorageError.invalidArgument(`peer sent a packed write of ${String(header.l)} bytes`);
  if (header.z === true) return Buffer.alloc(lengthBytes);
  if (bytes === null) return bytes;
  const data = uncompressSync(bytes);
  if (data.length !== lengthBytes) throw StorageError.invalidArgument(`peer sent a compressed write of ${data.length} bytes for ${lengthBytes}`);
  return data;
}

/** Every 4 KiB block of `data` looks random to the reducer's sample (compressing it would not pay). */
function looksRandomThroughout(data: Buffer): boolean {
  for (let at = 0; at + SAMPLE_BYTES <= data.length; at += SAMPLE_BYTES) {
    if (!looksIncompressible(data.subarray(at, at + SAMPLE_BYTES))) return false;
  }
  return true;
}
