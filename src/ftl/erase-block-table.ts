/**
 * Erase-block table: the FTL's in-memory view of every erase block, and the policies that read it
 * (which free block to open next, which full block to clean next).
 *
 * Per erase block: state, sequence number (when it was opened; its age for cost-benefit), valid
 * bytes (record bytes still referenced by the chunk table), written bytes (stream bytes used) and
 * the P/E count (mirrored from the NAND device). States:
 *
 *   free ──open──▶ open ──fills──▶ full ──GC relocates, commit, erase──▶ free
 *                   │                │
 *                   └──program fails / endurance reached──▶ retiring ──relocated──▶ bad
 *
 * Persistence: a summary per erase block (state, sequence, valid bytes, written bytes) is written
 * in the same metadata batch as the chunk-table changes that alter it, so valid counts always
 * agree with the chunk table after a crash. P/E counts and bad flags come from the NAND device.
 * After a crash, a block that was open is treated as full: pages past the last commit hold
 * nothing the metadata references.
 */
import { assert } from '../common/assert.js';

export const enum BlockState {
  Free = 0,
  Open = 1,
  Full = 2,
  Retiring = 3,
  Bad = 4,
}

export type VictimPolicy = 'cost-benefit' | 'greedy';

export interface BlockSummary {
  state: BlockState;
  sequence: number;
  validBytes: number;
  writtenBytes: number;
}

export const SUMMARY_BYTES = 13;

export function encodeSummary(summary: BlockSummary): Buffer {
  const out = Buffer.alloc(SUMMARY_BYTES);
  out.writeUInt8(summary.state, 0);
  out.writeUInt32BE(summary.sequence >>> 0, 1);
  out.writeUInt32BE(summary.validBytes, 5);
  out.writeUInt32BE(summary.writtenBytes, 9);
  return out;
}

export function decodeSummary(bytes: Buffer): BlockSummary {
  assert(bytes.length === SUMMARY_BYTES, `erase-block summary of ${bytes.length} bytes`);
  return { state: bytes.readUInt8(0) as BlockState, sequence: bytes.readUInt32BE(1), validBytes: bytes.readUInt32BE(5), writtenBytes: bytes.readUInt32BE(9) };
}

export class EraseBlockTable {
  readonly state: Uint8Array;
  readonly sequence: Uint32Array;
  readonly validBytes: Uint32Array;
  readonly writtenBytes: Uint32Array;
  readonly eraseCount: Uint32Array;
  /** Blocks whose summary changed since the last commit captured it. */
  readonly dirty = new Set<number>();
  private freeCount = 0;
  private badCount = 0;
  private validTotal = 0;

  constructor(readonly blockCount: number, readonly streamBytesPerBlock: number) {
    this.state = new Uint8Array(blockCount);
    this.sequence = new Uint32Array(blockCount);
    this.validBytes = new Uint32Array(blockCount);
    this.writtenBytes = new Uint32Array(blockCount);
    this.eraseCount = new Uint32Array(blockCount);
    this.freeCount = blockCount;
  }

  get freeBlocks(): number {
    return this.freeCount;
  }

  /** Bad and retiring blocks: capacity that is gone. */
  get lostBlocks(): number {
    return this.badCount;
  }

  /** Sum of valid bytes over every block. */
  get totalValidBytes(): number {
    return this.validTotal;
  }

  load(block: number, summary: BlockSummary): void {
    this.setState(block, summary.state);
    this.sequence[block] = summary.sequence;
    this.validTotal += summary.validBytes - this.validBytes[block]!;
    this.validBytes[block] = summary.validBytes;
    this.writtenBytes[block] = summary.writtenBytes;
  }

  summary(block: number): BlockSummary {
    return { state: this.state[block]! as BlockState, sequence: this.sequence[block]!, validBytes: this.validBytes[block]!, writtenBytes: this.writtenBytes[block]! };
  }

  setState(block: number, state: BlockState): void {
    const before = this.state[block]!;
    if (before === BlockState.Free) this.freeCount -= 1;
    if (state === BlockState.Free) this.freeCount += 1;
    const lost = (value: number) => value === BlockState.Bad || value === BlockState.Retiring;
    this.badCount += (lost(state) ? 1 : 0) - (lost(before) ? 1 : 0);
    this.state[block] = state;
    this.dirty.add(block);
  }

  addValid(block: number, deltaBytes: number): void {
    const next = this.validBytes[block]! + deltaBytes;
    assert(next >= 0 && next <= this.streamBytesPerBlock, `valid bytes of erase block ${block} would be ${next}`);
    this.validBytes[block] = next;
    this.validTotal += deltaBytes;
    this.dirty.add(block);
  }

  /** Sets valid bytes outright (a block just opened, erased or retired). */
  resetValid(block: number, bytes = 0): void {
    this.validTotal += bytes - this.validBytes[block]!;
    this.validBytes[block] = bytes;
    this.dirty.add(block);
  }

  /** Dynamic wear leveling: the least-worn free block, or -1. */
  pickFree(): number {
    let best = -1;
    for (let block = 0; block < this.blockCount; block++) {
      if (this.state[block] === BlockState.Free && (best < 0 || this.eraseCount[block]! < this.eraseCount[best]!)) best = block;
    }
    return best;
  }

  /**
   * The next block to clean: retiring blocks first (their data must move), then by policy among
   * full blocks with something to gain. Cost-benefit (Rosenblum & Ousterhout): maximise
   * (1 - u) * age / (1 + u), u being the valid fraction. Greedy: least valid bytes.
   */
  pickVictim(policy: VictimPolicy, currentSequence: number, exclude: ReadonlySet<number>): number {
    let best = -1;
    let bestScore = -Infinity;
    for (let block = 0; block < this.blockCount; block++) {
      if (exclude.has(block)) continue;
      const state = this.state[block];
      if (state === BlockState.Retiring) return block;
      if (state !== BlockState.Full) continue;
      const valid = this.validBytes[block]!;
      if (valid >= this.writtenBytes[block]! && valid > 0) continue; // nothing to gain
      const u = valid / this.streamBytesPerBlock;
      const score = policy === 'greedy' ? -valid : ((1 - u) * (currentSequence - this.sequence[block]! + 1)) / (1 + u);
      if (score > bestScore) {
        bestScore = score;
        best = block;
      }
    }
    return best;
  }

  /** Static wear leveling: the full block with the lowest P/E count, if the spread is too wide. */
  pickColdBlock(spreadThreshold: number, exclude: ReadonlySet<number>): number {
    let coldest = -1;
    let maxCount = 0;
    for (let block = 0; block < this.blockCount; block++) {
      const state = this.state[block];
      if (state === BlockState.Bad || state === BlockState.Retiring) continue;
      maxCount = Math.max(maxCount, this.eraseCount[block]!);
      if (state === BlockState.Full && !exclude.has(block) && (coldest < 0 || this.eraseCount[block]! < this.eraseCount[coldest]!)) coldest = block;
    }
    if (coldest < 0 || maxCount - this.eraseCount[coldest]! <= spreadThreshold) return -1;
    return coldest;
  }

  wearStats(): { min: number; mean: number; max: number } {
    let min = Infinity;
    let max = 0;
    let sum = 0;
    let count = 0;
    for (let block = 0; block < this.blockCount; block++) {
      if (this.state[block] === BlockState.Bad) continue;
      const value = this.eraseCount[block]!;
      min = Math.min(min, value);
      max = Math.max(max, value);
      sum += value;
      count += 1;
    }
    return { min: count ? min : 0, mean: count ? sum / count : 0, max };
  }

  count(state: BlockState): number {
    let total = 0;
    for (let block = 0; block < this.blockCount; block++) if (this.state[block] === state) total += 1;
    return total;
  }
}
