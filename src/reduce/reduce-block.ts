/**
 * What data reduction computes for whole 4 KiB logical blocks, before the write path decides
 * where each block goes: pattern detection, the dedup fingerprint, the stored form (compressed when
 * that pays, see codec.ts) and the record checksum of the stored form. Pure computation, no I/O,
 * the same on the main thread (`reduceInline`) and on the reduction workers.
 *
 * Results are kept column by column for a whole batch (`ReducedBlocks`), so a batch of any size
 * costs a handful of allocations, not a few objects per block.
 */
import { xxh64 } from '@node-rs/xxhash';
import { checksumOf } from '../ftl/page-format.js';
import { Codec, compressBlock } from './codec.js';
import { FINGERPRINT_BYTES, fingerprintKeyOf, type FingerprintFunction } from './fingerprint.js';
import { detectPattern } from './pattern.js';

export const BLOCK_BYTES = 4096;

/** Results for `count` blocks, one column per field. */
export class ReducedBlocks {
  /** 1 when the block is one 8-byte word repeated (then only `patternHigh/Low` mean anything). */
  readonly pattern: Uint8Array;
  readonly patternHigh: Uint32Array;
  readonly patternLow: Uint32Array;
  /** 8 bytes per block (zeros when dedup is off). */
  readonly fingerprints: Buffer;
  readonly codec: Uint8Array;
  /** Checksum of the stored form, for the record header. */
  readonly checksum: Uint32Array;
  /** The compressed form, or null when the block is stored as it is (codec Raw). */
  readonly compressed: Array<Buffer | null>;

  constructor(readonly count: number) {
    this.pattern = new Uint8Array(count);
    this.patternHigh = new Uint32Array(count);
    this.patternLow = new Uint32Array(count);
    this.fingerprints = Buffer.alloc(count * FINGERPRINT_BYTES);
    this.codec = new Uint8Array(count);
    this.checksum = new Uint32Array(count);
    this.compressed = new Array<Buffer | null>(count).fill(null);
  }

  fingerprint(index: number): Buffer {
    return this.fingerprints.subarray(index * FINGERPRINT_BYTES, (index + 1) * FINGERPRINT_BYTES);
  }
}

export interface ReduceSettings {
  codec: Codec;
  /** Null when dedup is off (no fingerprints). */
  fingerprint: FingerprintFunction | null;
}

/** Reduces `blocks[i]` into `out` at `first + i`, on this thread. */
export function reduceInline(blocks: readonly Buffer[], out: ReducedBlocks, first: number, settings: ReduceSettings): void {
  const key = settings.fingerprint === null ? null : fingerprintKeyOf(settings.fingerprint);
  for (let i = 0; i < blocks.length; i++) {
    const block = blocks[i]!;
    const index = first + i;
    const pattern = detectPattern(block);
    if (pattern !== null) {
      out.pattern[index] = 1;
      out.patternHigh[index] = pattern.high;
      out.patternLow[index] = pattern.low;
      continue;
    }
    if (key !== null) out.fingerprints.writeBigUInt64BE(xxh64(block, key), index * FINGERPRINT_BYTES);
    else if (settings.fingerprint !== null) settings.fingerprint(block).copy(out.fingerprints, index * FINGERPRINT_BYTES, 0, FINGERPRINT_BYTES);
    const { stored, codec } = compressBlock(block, settings.codec);
    out.codec[index] = codec;
    out.compressed[index] = codec === Codec.Raw ? null : stored;
    out.checksum[index] = checksumOf(stored);
  }
}
