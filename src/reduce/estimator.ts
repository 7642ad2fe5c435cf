/**
 * The data-reduction estimator: what the array would store for a stream of bytes, computed with
 * the same stages and the same rules as the write path (pattern removal, exact dedup over 4 KiB
 * logical blocks, compression kept only when it saves `MIN_SAVING_BYTES`, one record header per
 * stored chunk). It writes nothing.
 */
import { LogStream } from '../ftl/log-stream.js';
import { codecFor, compressBlock, type CompressionName } from './codec.js';
import { createHash } from 'node:crypto';
import { detectPattern } from './pattern.js';

export interface Estimate {
  logicalBytes: number;
  blocks: number;
  patternBlocks: number;
  duplicateBlocks: number;
  uniqueBlocks: number;
  /** Bytes the unique blocks take after compression (payloads only). */
  compressedBytes: number;
  /** What the array's `physicalBytes` would be: stored payloads plus record headers. */
  physicalBytes: number;
  savedByPatterns: number;
  savedByDedup: number;
  savedByCompression: number;
  dataReductionRatio: number;
}

const BLOCK_BYTES = 4096;

export class ReductionEstimator {
  private readonly seen = new Set<string>();
  private pending = Buffer.alloc(0);
  private readonly codec;
  readonly totals = { blocks: 0, patternBlocks: 0, duplicateBlocks: 0, uniqueBlocks: 0, compressedBytes: 0, physicalBytes: 0, logicalBytes: 0 };

  constructor(compression: CompressionName = 'lz4', private readonly dedup = true) {
    this.codec = codecFor(compression);
  }

  /** Feeds bytes in file order; blocks are cut at 4 KiB boundaries of the whole stream. */
  push(bytes: Buffer): void {
    let data = this.pending.length > 0 ? Buffer.concat([this.pending, bytes]) : bytes;
    let at = 0;
    for (; at + BLOCK_BYTES <= data.length; at += BLOCK_BYTES) this.addBlock(data.subarray(at, at + BLOCK_BYTES));
    this.pending = Buffer.from(data.subarray(at));
    data = Buffer.alloc(0);
  }

  /** Ends the stream: a short last block is padded with zeroes, as a volume would hold it. */
  finish(): Estimate {
    if (this.pending.length > 0) {
      const last = Buffer.alloc(BLOCK_BYTES);
      this.pending.copy(last);
      this.addBlock(last);
      this.pending = Buffer.alloc(0);
    }
    const t = this.totals;
    const savedByPatterns = t.patternBlocks * BLOCK_BYTES;
    const savedByDedup = t.duplicateBlocks * BLOCK_BYTES;
    return {
      logicalBytes: t.logicalBytes,
      blocks: t.blocks,
      patternBlocks: t.patternBlocks,
      duplicateBlocks: t.duplicateBlocks,
      uniqueBlocks: t.uniqueBlocks,
      compressedBytes: t.compressedBytes,
      physicalBytes: t.physicalBytes,
      savedByPatterns,
      savedByDedup,
      savedByCompression: t.uniqueBlocks * BLOCK_BYTES - t.compressedBytes,
      dataReductionRatio: t.physicalBytes > 0 ? Math.round((t.logicalBytes / t.physicalBytes) * 1000) / 1000 : 0,
    };
  }

  private addBlock(block: Buffer): void {
    const t = this.totals;
    t.blocks += 1;
    t.logicalBytes += BLOCK_BYTES;
    if (detectPattern(block) !== null) {
      t.patternBlocks += 1;
      return;
    }
    if (this.dedup) {
      // SHA-256 as an exact content key: the array's own dedup is exact too (every match is
      // compared byte for byte), so both count the same duplicates.
      const key = createHash('sha256').update(block).digest('base64');
      if (this.seen.has(key)) {
        t.duplicateBlocks += 1;
        return;
      }
      this.seen.add(key);
    }
    t.uniqueBlocks += 1;
    const { stored } = compressBlock(block, this.codec);
    t.compressedBytes += stored.length;
    t.physicalBytes += LogStream.recordBytes(stored.length);
  }
}
