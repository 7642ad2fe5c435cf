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
 * Persistence: a summary per erase block (state, sequence, valid bytes, written bytes), grouped in
 * pages of 1024 blocks ('erase-blocks' sublevel, key u32 page index; value format 2: the columns
 * one after the other, u8 state, u32 sequence, u32 valid bytes, u32 written bytes, little-endian).
 * Every page changed since the last commit is written in that commit's batch, with the journal
 * value holding the chunk-table changes that altered it, so valid counts always agree with the
 * chunk table after a crash. Random overwrites change most blocks' valid bytes between two
 * commits: a page costs one put where a summary per block cost a thousand. P/E counts and bad
 * flags come from the NAND device.
 * After a crash, a block that was open is treated as full: pages past the last commit hold
 * nothing the metadata references.
 */
import { fail } from '../common/assert.js';

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

export const SUMMARIES_PER_PAGE = 1024;
const SUMMARY_BYTES = 13;

/** The summaries of the blocks of summary page `pageIndex`, as stored. */
export function decodeSummaryPage(pageIndex: number, bytes: Buffer): Array<[number, BlockSummary]> {
  if (!(bytes.length % SUMMARY_BYTES === 0 && bytes.length <= SUMMARIES_PER_PAGE * SUMMARY_BYTES)) fail(`erase-block summary page of ${bytes.length} bytes`);
  const count = bytes.length / SUMMARY_BYTES;
  const out: Array<[number, BlockSummary]> = [];
  for (let i = 0; i < count; i++) {
    out.push([
      pageIndex * SUMMARIES_PER_PAGE + i,
      { state: bytes[i]! as BlockState, sequence: bytes.readUInt32LE(count + i * 4), validBytes: bytes.readUInt32LE(count * 5 + i * 4), writtenBytes: bytes.readUInt32LE(count * 9 + i * 4) },
    ]);
  }
  return out;
}

export class EraseBlockTable {
  readonly state: Uint8Array;
  readonly sequence: Uint32Array;
  readonly validBytes: Uint32Array;
  readonly writtenBytes: Uint32Array;
  readonly eraseCount: Uint32Array;
  /** Summary pages changed since the last commit captured them. */
  private readonly dirtyPages: Uint8Array;
  private dirtyPageCount = 0;
  private freeCount = 0;
  private badCount = 0;
  private retiringCount = 0;
  /**
   * Free blocks as a binary min-heap on (erase count, block): `pickFree` takes the least-worn in
   * O(log n) instead of scanning every block at each block opened. Entries go stale when a block
   * leaves the free state some other way (or its count changes); they are dropped when popped.
   */
  private readonly freeHeap: number[] = [];
  /**
   * Blocks as they became free, newest last: `pickFree` prefers the newest whose wear is within
   * `warmWearSlack` of the least-worn free block (see there). Entries go stale like the heap's.
   */
  private recentFree: number[] = [];
  /** Erase cycles above the least-worn free block that a recently freed block may be ahead by and still be opened first. */
  warmWearSlack = 0;
  private validTotal = 0;

  constructor(readonly blockCount: number, readonly streamBytesPerBlock: number) {
    this.state = new Uint8Array(blockCount);
    this.sequence = new Uint32Array(blockCount);
    this.validBytes = new Uint32Array(blockCount);
    this.writtenBytes = new Uint32Array(blockCount);
    this.eraseCount = new Uint32Array(blockCount);
    this.freeCount = blockCount;
    for (let block = 0; block < blockCount; block++) this.freeHeap.push(block);
    this.dirtyPages = new Uint8Array(Math.ceil(blockCount / SUMMARIES_PER_PAGE));
  }

  markDirty(block: number): void {
    const page = Math.floor(block / SUMMARIES_PER_PAGE);
    if (this.dirtyPages[page] === 0) {
      this.dirtyPages[page] = 1;
      this.dirtyPageCount += 1;
    }
  }

  get hasDirtySummaries(): boolean {
    return this.dirtyPageCount > 0;
  }

  /** Forgets every change (a fresh table, or the state just loaded at recovery). */
  clearDirty(): void {
    this.dirtyPages.fill(0);
    this.dirtyPageCount = 0;
  }

  /** Encoded summary pages changed since the last capture (they are clean again). */
  captureSummaryPages(): Array<[number, Buffer]> {
    const out: Array<[number, Buffer]> = [];
    for (let page = 0; page < this.dirtyPages.length && out.length < this.dirtyPageCount; page++) {
      if (this.dirtyPages[page] === 0) continue;
      const first = page * SUMMARIES_PER_PAGE;
      const count = Math.min(SUMMARIES_PER_PAGE, this.blockCount - first);
      const value = Buffer.allocUnsafe(count * SUMMARY_BYTES);
      value.set(this.state.subarray(first, first + count), 0);
      value.set(new Uint8Array(this.sequence.buffer, first * 4, count * 4), count);
      value.set(new Uint8Array(this.validBytes.buffer, first * 4, count * 4), count * 5);
      value.set(new Uint8Array(this.writtenBytes.buffer, first * 4, count * 4), count * 9);
      out.push([page, value]);
    }
    this.clearDirty();
    return out;
  }

  /** A capture whose batch failed: its pages are dirty again. */
  restoreDirty(pages: Iterable<number>): void {
    for (const page of pages) this.markDirty(page * SUMMARIES_PER_PAGE);
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
    if (state === BlockState.Free) {
      this.freeCount += 1;
      if (before !== BlockState.Free) {
        this.heapPush(block);
        this.recentFree.push(block);
      }
    }
    const lost = (value: number) => value === BlockState.Bad || value === BlockState.Retiring;
    this.badCount += (lost(state) ? 1 : 0) - (lost(before) ? 1 : 0);
    this.retiringCount += (state === BlockState.Retiring ? 1 : 0) - (before === BlockState.Retiring ? 1 : 0);
    this.state[block] = state;
    this.markDirty(block);
  }

  /** Blocks whose data must move before they are retired. */
  get retiringBlocks(): number {
    return this.retiringCount;
  }

  /** The erase counts changed (the device's counts were loaded): rebuild the free heap. */
  rebuildFreeHeap(): void {
    this.freeHeap.length = 0;
    for (let block = 0; block < this.blockCount; block++) if (this.state[block] === BlockState.Free) this.heapPush(block);
    this.recentFree = this.recentFree.filter((block) => this.state[block] === BlockState.Free);
  }

  addValid(block: number, deltaBytes: number): void {
    const next = this.validBytes[block]! + deltaBytes;
    if (!(next >= 0 && next <= this.streamBytesPerBlock)) fail(`valid bytes of erase block ${block} would be ${next}`);
    this.validBytes[block] = next;
    this.validTotal += deltaBytes;
    this.markDirty(block);
  }

  /** Sets valid bytes outright (a block just opened, erased or retired). */
  resetValid(block: number, bytes = 0): void {
    this.validTotal += bytes - this.validBytes[block]!;
    this.validBytes[block] = bytes;
    this.markDirty(block);
  }

  /**
   * Dynamic wear leveling: the least-worn free block (the lowest index among equals), or -1; but
   * with a `warmWearSlack`, the most recently freed block if it is at most that many cycles more
   * worn. A block just erased still has its pages in the host's page cache (file-nand.ts, the warm
   * pool), and programming it costs a memory copy where a block not used for long costs the
   * kernel new memory and the file system new disk blocks. The slack bounds what this costs in
   * wear: once the recently freed blocks are that far ahead, the least-worn ones are opened again.
   */
  pickFree(): number {
    // Blocks taken from one structure leave stale entries in the other: drop them now and then.
    if (this.freeHeap.length > 2 * this.freeCount + 64 || this.recentFree.length > 2 * this.freeCount + 64) this.rebuildFreeHeap();
    if (this.warmWearSlack > 0) {
      const recent = this.recentFree;
      let floor = -1;
      while (recent.length > 0) {
        const block = recent.pop()!;
        if (this.state[block] !== BlockState.Free) continue;
        if (floor < 0) floor = this.leastFreeWear();
        if (this.eraseCount[block]! <= floor + this.warmWearSlack) return block;
      }
    }
    while (this.freeHeap.length > 0) {
      const block = this.heapPop();
      // Stale: no longer free, or already in the heap again with its new count.
      if (this.state[block] !== BlockState.Free) continue;
      return block;
    }
    return -1;
  }

  /** The erase count of the least-worn free block (stale heap tops dropped), or 0 with none. */
  private leastFreeWear(): number {
    const heap = this.freeHeap;
    while (heap.length > 0 && this.state[heap[0]!] !== BlockState.Free) this.heapPop();
    return heap.length > 0 ? this.eraseCount[heap[0]!]! : 0;
  }

  private less(a: number, b: number): boolean {
    const wearA = this.eraseCount[a]!;
    const wearB = this.eraseCount[b]!;
    return wearA < wearB || (wearA === wearB && a < b);
  }

  private heapPush(block: number): void {
    const heap = this.freeHeap;
    let at = heap.push(block) - 1;
    while (at > 0) {
      const parent = (at - 1) >> 1;
      if (!this.less(heap[at]!, heap[parent]!)) break;
      [heap[at], heap[parent]] = [heap[parent]!, heap[at]!];
      at = parent;
    }
  }

  private heapPop(): number {
    const heap = this.freeHeap;
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      let at = 0;
      for (;;) {
        const left = 2 * at + 1;
        const right = left + 1;
        let smallest = at;
        if (left < heap.length && this.less(heap[left]!, heap[smallest]!)) smallest = left;
        if (right < heap.length && this.less(heap[right]!, heap[smallest]!)) smallest = right;
        if (smallest === at) break;
        [heap[at], heap[smallest]] = [heap[smallest]!, heap[at]!];
        at = smallest;
      }
    }
    return top;
  }

  /**
   * Up to `count` blocks to clean, best first, from one scan: retiring blocks first (their data
   * must move), then by policy among full blocks with something to gain. Cost-benefit (Rosenblum
   * & Ousterhout): maximise (1 - u) * age / (1 + u), u being the valid fraction. Greedy: least
   * valid bytes. (One scan per GC round, not one per victim: a round may take hundreds.)
   */
  pickVictims(policy: VictimPolicy, currentSequence: number, exclude: ReadonlySet<number>, count: number): number[] {
    const retiring: number[] = [];
    const candidates: number[] = [];
    const scores = new Float64Array(this.blockCount);
    for (let block = 0; block < this.blockCount; block++) {
      if (exclude.has(block)) continue;
      const state = this.state[block];
      if (state === BlockState.Retiring) {
        retiring.push(block);
        continue;
      }
      if (state !== BlockState.Full) continue;
      const valid = this.validBytes[block]!;
      if (valid >= this.writtenBytes[block]! && valid > 0) continue; // nothing to gain
      const u = valid / this.streamBytesPerBlock;
      scores[block] = policy === 'greedy' ? -valid : ((1 - u) * (currentSequence - this.sequence[block]! + 1)) / (1 + u);
      candidates.push(block);
    }
    if (retiring.length >= count) return retiring.slice(0, count);
    // Best score first; equal scores keep block order (the sort is stable).
    candidates.sort((a, b) => scores[b]! - scores[a]!);
    return retiring.concat(candidates.slice(0, count - retiring.length));
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
