/**
 * Block compression: LZ4 (lz4-napi, the default) or zstd (zstd-napi), chosen per array.
 *
 * A block is stored compressed only when that saves at least `MIN_SAVING_BYTES`; otherwise it is
 * stored raw, so incompressible data costs one record header and nothing more. Compressed chunks
 * are packed back to back by the log stream, so the saving is real NAND space.
 *
 * Before compressing, `looksIncompressible` samples the block (127 bytes, one in each 32-byte
 * stretch at a varying offset: how many distinct byte values, and whether any sampled 4-byte word
 * repeats). Random or already-compressed data has nearly every byte value and no repeats, and LZ4
 * on it costs about 15 µs per 4 KiB here only to be thrown away; the sample costs about 1.5 µs.
 * The offset varies because a fixed stride can fall in step with structured "random" data: fio's
 * refilled buffers (64-bit words from a shift generator) showed only 64 distinct bytes at a
 * fixed stride of 32, and every block was compressed for nothing. Measured on 24,153 blocks of
 * /usr/bin/node, 1,667 of python3, 470 of libc, 1,989 of .gz files, 5,000 blocks of fio's
 * buffers and 3,000 random blocks: every random block and 99.8 % of fio's skipped, and the blocks
 * skipped that LZ4 would have shrunk by 256 bytes or more gave up 12 KiB of the ~50 MiB
 * compression saves on those files. The estimator (`pstorage estimate`) applies the same rule, so
 * it still predicts the array to the byte.
 */
import { compressSync as lz4Compress, uncompressSync as lz4Uncompress } from 'lz4-napi';
import { compress as zstdCompress, decompress as zstdDecompress } from 'zstd-napi';
import { StorageError } from '../common/errors.js';

export type CompressionName = 'lz4' | 'zstd' | 'none';

/** Codec ids as stored in the chunk table. */
export const enum Codec {
  Raw = 0,
  Lz4 = 1,
  Zstd = 2,
}

export const MIN_SAVING_BYTES = 256;
/** The smallest compressed record stored (ftl/record-cipher.ts's MIN_STORED_BYTES). */
export const MIN_STORED_BYTES = 16;

/** Sample stride and the distinct-byte count (of 127 samples) above which a block looks random. */
const SAMPLE_STRIDE = 32;
const SAMPLES = 127;
const RANDOM_DISTINCT_BYTES = 80;

export function codecFor(name: CompressionName): Codec {
  return name === 'lz4' ? Codec.Lz4 : name === 'zstd' ? Codec.Zstd : Codec.Raw;
}

/**
 * The stored form of `block` and its codec: compressed if that pays, else the block itself.
 * `looksRandom` is `looksIncompressible(block)` when the caller has it already.
 */
export function compressBlock(block: Buffer, codec: Codec, looksRandom?: boolean): { stored: Buffer; codec: Codec } {
  if (codec === Codec.Raw || (block.length === 4096 && (looksRandom ?? looksIncompressible(block)))) return { stored: block, codec: Codec.Raw };
  const compressed = codec === Codec.Lz4 ? lz4Compress(block) : zstdCompress(block, { compressionLevel: 3 });
  // Fewer than MIN_STORED_BYTES compressed bytes are stored raw (AES-XTS needs 16 bytes, see
  // ftl/record-cipher.ts); plain arrays make the same choice, so both store the same bytes.
  if (compressed.length + MIN_SAVING_BYTES > block.length || compressed.length < MIN_STORED_BYTES) return { stored: block, codec: Codec.Raw };
  return { stored: compressed, codec };
}

export function decompressBlock(stored: Buffer, codec: Codec, expectedBytes: number): Buffer {
  if (codec === Codec.Raw) return stored;
  let block: Buffer;
  try {
    block = codec === Codec.Lz4 ? lz4Uncompress(stored) : zstdDecompress(stored);
  } catch (error) {
    throw StorageError.corrupt(`chunk does not decompress (codec ${codec}): ${(error as Error).message}`, error);
  }
  if (block.length !== expectedBytes) throw StorageError.corrupt(`chunk decompressed to ${block.length} bytes, expected ${expectedBytes}`);
  return block;
}

// Per-thread scratch for the sample: byte values seen and sampled words, tagged with a generation
// so nothing has to be cleared between blocks.
const seenGeneration = new Uint32Array(256);
const wordValue = new Int32Array(256);
const wordGeneration = new Uint32Array(256);
let generation = 0;

/** True when a 4 KiB block looks random (see the design note): not worth compressing. */
export function looksIncompressible(block: Uint8Array): boolean {
  generation = (generation + 1) >>> 0 || 1;
  let distinct = 0;
  for (let k = 0; k < SAMPLES; k++) {
    const i = SAMPLE_STRIDE * k + ((k * 7) & (SAMPLE_STRIDE - 1));
    const byte = block[i]!;
    if (seenGeneration[byte] !== generation) {
      seenGeneration[byte] = generation;
      distinct += 1;
    }
    const at = i + 8 <= 4092 ? i + 8 : i - 8;
    const word = block[at]! | (block[at + 1]! << 8) | (block[at + 2]! << 16) | (block[at + 3]! << 24);
    const slot = Math.imul(word, 0x9e3779b1) >>> 24;
    if (wordGeneration[slot] === generation && wordValue[slot] === word) return false;
    wordGeneration[slot] = generation;
    wordValue[slot] = word;
  }
  return distinct > RANDOM_DISTINCT_BYTES;
}
