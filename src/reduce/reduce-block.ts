/**
 * What data reduction computes for whole 4 KiB logical blocks, before the write path decides
 * where each block goes: pattern detection, the dedup fingerprint, the stored form (compressed when
 * that pays, see codec.ts) and the record checksum of the stored form. Pure computation, no I/O,
 * the same on the main thread (`reduceInline`) and on the reduction workers.
 *
 * Results are kept column by column for a whole batch (`ReducedBlocks`), so a batch of any size
 * costs a handful of allocations, not a few objects per block.
 *
 * On the main thread the stored form is computed lazily (`ensureStored`): only for blocks the write
 * path decides to store. A block that turns out to be a dedup hit is never sampled or compressed
 * (that was an eighth of the main thread's time writing a second copy of data). The workers
 * compute everything, since the main thread is what they save.
 */
import { xxh64 } from '@node-rs/xxhash';
import { hashAndSample, hashInto, reduceRun } from '../common/native.js';
import { checksumOf, checksumOfHash } from '../ftl/page-format.js';
import { Codec, compressBlock, looksIncompressible } from './codec.js';
import { FINGERPRINT_BYTES, fingerprintKeyOf, type FingerprintFunction } from './fingerprint.js';
import { detectPattern } from './pattern.js';

export const BLOCK_BYTES = 4096;
const TWO_TO_32 = 2 ** 32;

/** Bytes of ReducedBlocks' numeric columns per block. */
const COLUMN_BYTES_PER_BLOCK = 4 * 4 + FINGERPRINT_BYTES + 4;
/**
 * Column memory is carved from a zeroed slab, one piece per batch and never reused (a slab is
 * freed when the last batch on it is): a fresh ArrayBuffer per batch cost about 0.5 µs a block at
 * 4 KiB writes, most of it the allocation of its backing store and its share of collection.
 * Pieces are 8-byte aligned, as the Uint32Array columns need.
 */
const SLAB_BYTES = 256 * 1024;
let slab = new ArrayBuffer(SLAB_BYTES);
let slabAt = 0;
/** The memory of the last `takeColumns`. */
let columns = slab;

/** Zeroed memory of `bytes` for one batch's columns: `columns` from the returned offset. */
function takeColumns(bytes: number): number {
  if (bytes > SLAB_BYTES / 4) {
    columns = new ArrayBuffer(bytes);
    return 0;
  }
  if (slabAt + bytes > SLAB_BYTES) {
    slab = new ArrayBuffer(SLAB_BYTES);
    slabAt = 0;
  }
  const at = slabAt;
  slabAt += (bytes + 7) & ~7;
  columns = slab;
  return at;
}

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
  /** 1 once `codec`, `compressed` and `checksum` hold the stored form. */
  readonly stored: Uint8Array;
  /** Stored forms computed so far, and how many of them compressed (for the scheduler). */
  storedCount = 0;
  compressedCount = 0;
  /** Low 32 bits of the block's keyed hash: its record checksum if it is stored raw. */
  readonly hashLow: Uint32Array;
  /**
   * The incompressibility sample's verdict, taken while the block is in the cache from hashing:
   * 0 not taken, 1 looks random, 2 worth compressing. (Taken later, from a block the rest of the
   * batch had pushed out of the L1 cache, the sample cost 1.3 µs a block: a tenth of the main
   * thread at 128K sequential writes; right after the hash it costs about 0.4.)
   */
  readonly random: Uint8Array;

  /** The blocks these are the results of, when the caller keeps them (so users need no view of their own). */
  blocks: readonly Buffer[] | null = null;

  constructor(readonly count: number) {
    // Every numeric column in one zeroed piece of a shared slab: no allocation of its own per batch.
    let at = takeColumns(count * COLUMN_BYTES_PER_BLOCK);
    const memory = columns;
    const take = (bytes: number): number => {
      const start = at;
      at += bytes;
      return start;
    };
    this.patternHigh = new Uint32Array(memory, take(4 * count), count);
    this.patternLow = new Uint32Array(memory, take(4 * count), count);
    this.checksum = new Uint32Array(memory, take(4 * count), count);
    this.hashLow = new Uint32Array(memory, take(4 * count), count);
    this.fingerprints = Buffer.from(memory, take(FINGERPRINT_BYTES * count), FINGERPRINT_BYTES * count);
    this.pattern = new Uint8Array(memory, take(count), count);
    this.codec = new Uint8Array(memory, take(count), count);
    this.stored = new Uint8Array(memory, take(count), count);
    this.random = new Uint8Array(memory, take(count), count);
    this.compressed = new Array<Buffer | null>(count).fill(null);
  }

  /** Records the stored form of block `index`. */
  setStored(index: number, codec: Codec, compressed: Buffer | null, checksum: number): void {
    this.codec[index] = codec;
    this.compressed[index] = compressed;
    this.checksum[index] = checksum;
    this.stored[index] = 1;
    this.storedCount += 1;
    if (compressed !== null) this.compressedCount += 1;
  }

  fingerprint(index: number): Buffer {
    return this.fingerprints.subarray(index * FINGERPRINT_BYTES, (index + 1) * FINGERPRINT_BYTES);
  }
}

export interface ReduceSettings {
  codec: Codec;
  /** Null when dedup is off (no fingerprints). */
  fingerprint: FingerprintFunction | null;
  /** Seed of record checksums: the array's fingerprint key (page-format.ts). */
  recordSeed: bigint;
}

/**
 * Reduces `blocks[i]` into `out` at `first + i`, on this thread: patterns and fingerprints, and
 * the stored forms too when `stored` is set (else `ensureStored` computes them on demand). With
 * the array's keyed fingerprint, one xxHash64 of the block is its fingerprint and, when it is
 * stored as it is, its record checksum too (both use the array's key as seed). With
 * `zeroPatternsOnly` a block of a repeated non-zero word is reduced as data (an encrypted array's).
 */
export function reduceInline(blocks: readonly Buffer[], out: ReducedBlocks, first: number, settings: ReduceSettings, stored = true, zeroPatternsOnly = false): void {
  const key = settings.fingerprint === null ? null : fingerprintKeyOf(settings.fingerprint);
  // The addon writes the fingerprint and returns the checksum without a BigInt per block.
  const keyHigh = key === null ? 0 : Number(key >> 32n);
  const keyLow = key === null ? 0 : Number(key & 0xffff_ffffn);
  // Runs of blocks back to back in one buffer (the blocks of one large write) go to the addon
  // in one call when the hash is also the record checksum and the sample is wanted.
  const runs = !stored && key !== null && key === settings.recordSeed && settings.codec !== Codec.Raw && reduceRun !== null;
  for (let i = 0; i < blocks.length; i++) {
    const block = blocks[i]!;
    const index = first + i;
    if (runs && block.length === BLOCK_BYTES) {
      const count = runLength(blocks, i);
      if (count > 1) {
        const { fingerprints, hashLow, random, pattern, patternHigh, patternLow } = out;
        reduceRun!(new Uint8Array(block.buffer, block.byteOffset, count * BLOCK_BYTES), count, keyHigh, keyLow, fingerprints, hashLow, random, pattern, patternHigh, patternLow, index);
        i += count - 1;
        continue;
      }
    }
    const pattern = detectPattern(block);
    if (pattern !== null && !(zeroPatternsOnly && (pattern.high | pattern.low) !== 0)) {
      out.pattern[index] = 1;
      out.patternHigh[index] = pattern.high;
      out.patternLow[index] = pattern.low;
      continue;
    }
    if (key !== null) {
      const sample = !stored && settings.codec !== Codec.Raw;
      if (sample && hashAndSample !== null && block.length === BLOCK_BYTES) {
        // One native call: the sample is taken in C while the block is in the cache from hashing.
        const both = hashAndSample(block, keyHigh, keyLow, out.fingerprints, index * FINGERPRINT_BYTES);
        if (key === settings.recordSeed) out.hashLow[index] = both >>> 0;
        out.random[index] = both >= TWO_TO_32 ? 1 : 2;
        continue;
      }
      if (hashInto !== null) {
        const low = hashInto(block, keyHigh, keyLow, out.fingerprints, index * FINGERPRINT_BYTES);
        if (key === settings.recordSeed) out.hashLow[index] = low;
      } else {
        const hash = xxh64(block, key);
        out.fingerprints.writeBigUInt64BE(hash, index * FINGERPRINT_BYTES);
        if (key === settings.recordSeed) out.hashLow[index] = checksumOfHash(hash);
      }
      if (sample) out.random[index] = looksIncompressible(block) ? 1 : 2;
    } else if (settings.fingerprint !== null) {
      settings.fingerprint(block).copy(out.fingerprints, index * FINGERPRINT_BYTES, 0, FINGERPRINT_BYTES);
    }
    if (stored) ensureStored(out, index, block, settings);
  }
}

/** How many 4 KiB blocks from `blocks[from]` on lie back to back in one buffer. */
function runLength(blocks: readonly Buffer[], from: number): number {
  const first = blocks[from]!;
  let count = 1;
  while (from + count < blocks.length) {
    const next = blocks[from + count]!;
    if (next.buffer !== first.buffer || next.length !== BLOCK_BYTES || next.byteOffset !== first.byteOffset + count * BLOCK_BYTES) break;
    count += 1;
  }
  return count;
}

/** Computes block `index`'s stored form (compressed when that pays) and record checksum, once. */
export function ensureStored(out: ReducedBlocks, index: number, block: Buffer, settings: ReduceSettings): void {
  if (out.stored[index] === 1) return;
  const verdict = out.random[index];
  const { stored, codec } = compressBlock(block, settings.codec, verdict === 0 ? undefined : verdict === 1);
  const hashIsChecksum = settings.fingerprint !== null && fingerprintKeyOf(settings.fingerprint) === settings.recordSeed;
  const checksum = codec === Codec.Raw && hashIsChecksum ? out.hashLow[index]! : checksumOf(stored, settings.recordSeed);
  out.setStored(index, codec, codec === Codec.Raw ? null : stored, checksum);
}
