/**
 * Block compression: LZ4 (lz4-napi, the default) or zstd (zstd-napi), chosen per array.
 *
 * A block is stored compressed only when that saves at least `MIN_SAVING_BYTES`; otherwise it is
 * stored raw, so incompressible data costs one record header and nothing more. Compressed chunks
 * are packed back to back by the log stream, so the saving is real NAND space.
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

export function codecFor(name: CompressionName): Codec {
  return name === 'lz4' ? Codec.Lz4 : name === 'zstd' ? Codec.Zstd : Codec.Raw;
}

/** The stored form of `block` and its codec: compressed if that pays, else the block itself. */
export function compressBlock(block: Buffer, codec: Codec): { stored: Buffer; codec: Codec } {
  if (codec === Codec.Raw) return { stored: block, codec: Codec.Raw };
  const compressed = codec === Codec.Lz4 ? lz4Compress(block) : zstdCompress(block, { compressionLevel: 3 });
  if (compressed.length + MIN_SAVING_BYTES > block.length) return { stored: block, codec: Codec.Raw };
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
