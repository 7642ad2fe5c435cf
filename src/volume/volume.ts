/**
 * A thin volume: the `BlockDevice` an NBD export serves, over the array's volume map, chunk
 * table and FTL.
 *
 * Logical blocks are 4 KiB. A write is split into logical blocks; a block only partly covered is
 * read, merged and rewritten (read-modify-write) under a range lock so concurrent sector writes to
 * one block never lose each other. All-zero blocks become pattern entries and cost no NAND; every
 * other block becomes a chunk appended to the host log stream. TRIM and WRITE_ZEROES unmap whole
 * blocks (WRITE_ZEROES with NO_HOLE stores zero patterns instead) and zero the partial edges.
 *
 * Layers: a volume's map is a chain of layers (snapshots.ts). Reads take, per block, the entry of
 * the first layer that holds one; writes go to the top layer only, and release only the top
 * layer's old chunk (a lower layer belongs to a snapshot and keeps its reference). A snapshot is
 * served by the same class as a read-only view whose top is the snapshot's frozen layer.
 *
 * Each logical block changes in one synchronous step (map entry, chunk refcounts, valid bytes),
 * after every page it needs is loaded, so a crash or a concurrent read sees it old or new, never
 * mixed. Before that step the write checks space: if the array cannot hold the new data it fails
 * with NO_SPACE and changes nothing.
 */
import {
  BASE_ALLOCATION,
  STATE_HOLE,
  STATE_ZERO,
  type BlockDevice,
  type ReadExtent,
  type StatusExtent,
  type WriteOptions,
  type ZeroOptions,
} from '../common/block-device.js';
import { assert } from '../common/assert.js';
import { StorageError } from '../common/errors.js';
import { LogStream } from '../ftl/log-stream.js';
import { compressBlock, decompressBlock, type Codec } from '../reduce/codec.js';
import { detectPattern, expandPattern } from '../reduce/pattern.js';
import type { ReducedBlock } from '../reduce/reduction-pool.js';
import type { FlashArray } from './flash-array.js';
import { EntryKind, LBAS_PER_MAP_PAGE, type MapPage } from './map-page.js';
import { RangeLock } from './range-lock.js';

export const LBA_BYTES = 4096;
/** Unmap and block-status work is done this many map pages at a time. */
const MAP_PAGES_PER_STEP = 64;
const MAX_ATTEMPTS = 100;
/** Meta context of a snapshot export listing the blocks changed since an older snapshot. */
export const CHANGED_CONTEXT_PREFIX = 'pstorage:changed:';
/** The status bit of that context: the block was written after the older snapshot. */
export const STATE_CHANGED = 1;

export interface VolumeRecord {
  id: number;
  name: string;
  sizeBytes: number;
  createdAt: string;
  /** The writable layer on top of this volume's chain. */
  topLayerId: number;
  /** `volume@snapshot` this volume was cloned from, if any. */
  origin?: string;
  mappedBlocks: number;
  patternBlocks: number;
  hostBytesWritten: number;
  dedupHits: number;
}

export interface SnapshotRecord {
  id: number;
  name: string;
  volumeId: number;
  /** The frozen layer holding the volume's top as it was when the snapshot was taken. */
  layerId: number;
  createdAt: string;
  sizeBytes: number;
  mappedBlocks: number;
  patternBlocks: number;
}

export function mapCacheId(layerId: number, mapPageIndex: number): number {
  return layerId * 0x100000000 + mapPageIndex;
}

/** The entry deciding a block's content: where it is, or null when no layer holds one. */
interface Resolved {
  page: MapPage;
  slot: number;
}

/** What a logical block becomes. */
interface DataContent {
  type: 'data';
  bytes: Buffer;
  fingerprint: Buffer | null;
  /** Compressed (or raw) form, computed once when the block has to be stored. */
  reduced?: { stored: Buffer; codec: Codec };
}
type BlockContent = DataContent | { type: 'unmap' } | { type: 'pattern'; high: number; low: number };

/** What the write does with one data block. */
type Decision = { kind: 'none' } | { kind: 'hit'; chunkId: number } | { kind: 'same-as'; index: number } | { kind: 'store' };

export class Volume implements BlockDevice {
  readonly readOnly: boolean;
  recordDirty = false;
  readonly locks = new RangeLock();

  constructor(
    private readonly array: FlashArray,
    readonly record: VolumeRecord,
    /** Set for the read-only view of a snapshot. */
    readonly snapshot: SnapshotRecord | null = null,
  ) {
    this.readOnly = snapshot !== null;
  }

  get name(): string {
    return this.snapshot === null ? this.record.name : `${this.record.name}@${this.snapshot.name}`;
  }

  get sizeBytes(): number {
    return this.snapshot === null ? this.record.sizeBytes : this.snapshot.sizeBytes;
  }

  get description(): string {
    if (this.snapshot !== null) return `pstorage snapshot of ${this.record.name} taken ${this.snapshot.createdAt} (read-only)`;
    return `pstorage thin volume, ${this.record.sizeBytes} bytes${this.record.origin ? `, cloned from ${this.record.origin}` : ''}`;
  }

  get topLayerId(): number {
    return this.snapshot === null ? this.record.topLayerId : this.snapshot.layerId;
  }

  /** base:allocation, and for a snapshot one `pstorage:changed:OLDER` per older snapshot. */
  get metaContexts(): readonly string[] {
    if (this.snapshot === null) return [BASE_ALLOCATION];
    return [BASE_ALLOCATION, ...this.array.olderSnapshots(this.snapshot).map((older) => `${CHANGED_CONTEXT_PREFIX}${older.name}`)];
  }

  // ---- Reads ---------------------------------------------------------------------------------

  async read(offsetBytes: number, lengthBytes: number): Promise<ReadExtent[]> {
    this.checkRange(offsetBytes, lengthBytes);
    const first = Math.floor(offsetBytes / LBA_BYTES);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / LBA_BYTES);
    const blocks = await this.readBlocks(first, last);
    const extents: ReadExtent[] = [];
    for (let i = 0; i < blocks.length; i++) {
      const blockStart = (first + i) * LBA_BYTES;
      const from = Math.max(offsetBytes, blockStart) - blockStart;
      const to = Math.min(offsetBytes + lengthBytes, blockStart + LBA_BYTES) - blockStart;
      const data = blocks[i]!;
      const last = extents[extents.length - 1];
      if (data === null && last !== undefined && last.data === null) last.lengthBytes += to - from;
      else extents.push({ lengthBytes: to - from, data: data === null ? null : data.subarray(from, to) });
    }
    return extents;
  }

  /** Contents of logical blocks `first..last`: a 4 KiB buffer each, or null for zeroes. */
  async readBlocks(first: number, last: number): Promise<Array<Buffer | null>> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const unpinMap = await this.array.mapCache.loadPinned(this.mapPageIds(this.chain(), first, last));
      let plan: ReturnType<Volume['planRead']>;
      try {
        const chunkIds = this.chunkIdsIn(first, last);
        if (chunkIds === null) continue;
        const unpinChunks = await this.array.chunks.cache.loadPinned(this.array.chunks.pageIdsOf(chunkIds));
        // Nothing awaited between here and readRecords: the addresses are current when the FTL
        // registers the read, so GC cannot erase them underneath it.
        plan = this.planRead(first, last);
        unpinChunks();
      } finally {
        unpinMap();
      }
      if (plan === null) continue;
      const payloads = await this.array.ftl.readRecords(plan.requests);
      payloads.forEach((payload, k) => (plan.blocks[plan.slots[k]!] = decompressBlock(payload, plan.codecs[k]!, LBA_BYTES)));
      return plan.blocks;
    }
    throw StorageError.io('read could not load its metadata (cache thrashing): raise --cache-mb');
  }

  private planRead(first: number, last: number) {
    const blocks: Array<Buffer | null> = new Array(last - first + 1).fill(null);
    const requests: Array<{ address: { block: number; offsetBytes: number }; chunkId: number; storedBytes: number }> = [];
    const slots: number[] = [];
    const codecs: Codec[] = [];
    const chain = this.chain();
    for (let lba = first; lba <= last; lba++) {
      const resolved = this.resolve(chain, lba);
      if (resolved === undefined) return null;
      if (resolved === null) continue;
      const { page, slot } = resolved;
      const kind = page.kind(slot);
      if (kind === EntryKind.Pattern) {
        blocks[lba - first] = patternBlock(page.high[slot]!, page.low[slot]!);
      } else if (kind === EntryKind.Chunk) {
        const chunkId = page.chunkId(slot);
        if (!this.array.chunks.isLoaded(chunkId)) return null;
        const entry = this.array.chunks.get(chunkId);
        assert(entry !== undefined, `volume ${this.record.name} lba ${lba} maps to free chunk ${chunkId}`);
        requests.push({ address: entry.address, chunkId, storedBytes: entry.storedBytes });
        slots.push(lba - first);
        codecs.push(entry.codec);
      }
    }
    return { blocks, requests, slots, codecs };
  }

  // ---- Writes --------------------------------------------------------------------------------

  async write(offsetBytes: number, data: Buffer, options: WriteOptions): Promise<void> {
    this.checkWritable();
    this.checkRange(offsetBytes, data.length);
    // Whole blocks are hashed and compressed on the reduction workers before taking any lock.
    const firstWhole = Math.ceil(offsetBytes / LBA_BYTES);
    const endWhole = Math.floor((offsetBytes + data.length) / LBA_BYTES);
    const wholeBlocks: Buffer[] = [];
    for (let lba = firstWhole; lba < endWhole; lba++) wholeBlocks.push(data.subarray(lba * LBA_BYTES - offsetBytes, (lba + 1) * LBA_BYTES - offsetBytes));
    const reduced = this.array.reducer === null ? null : await this.array.reducer.reduce(wholeBlocks);
    await this.mutate(offsetBytes, data.length, (lba, old) => {
      const blockStart = lba * LBA_BYTES;
      const from = Math.max(offsetBytes, blockStart);
      const to = Math.min(offsetBytes + data.length, blockStart + LBA_BYTES);
      if (to - from === LBA_BYTES) {
        const bytes = data.subarray(from - offsetBytes, to - offsetBytes);
        return reduced === null ? this.dataContent(bytes) : this.reducedContent(bytes, reduced[lba - firstWhole]!);
      }
      const merged = Buffer.alloc(LBA_BYTES);
      old?.copy(merged);
      data.copy(merged, from - blockStart, from - offsetBytes, to - offsetBytes);
      return this.dataContent(merged);
    });
    this.array.counters.hostBytesWritten += data.length;
    this.record.hostBytesWritten += data.length;
    this.recordDirty = true;
    if (options.fua) await this.array.flush();
  }

  async trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void> {
    this.checkWritable();
    this.checkRange(offsetBytes, lengthBytes);
    // TRIM is a hint: only whole logical blocks are unmapped.
    const first = Math.ceil(offsetBytes / LBA_BYTES);
    const end = Math.floor((offsetBytes + lengthBytes) / LBA_BYTES);
    if (end > first) await this.unmapRange(first, end - 1, { type: 'unmap' });
    if (options.fua) await this.array.flush();
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void> {
    this.checkWritable();
    this.checkRange(offsetBytes, lengthBytes);
    // Zeroing is a metadata change here, always faster than writing, so FAST_ZERO never fails.
    const first = Math.ceil(offsetBytes / LBA_BYTES);
    const end = Math.floor((offsetBytes + lengthBytes) / LBA_BYTES);
    const whole: BlockContent = options.noHole ? { type: 'pattern', high: 0, low: 0 } : { type: 'unmap' };
    if (end > first) await this.unmapRange(first, end - 1, whole);
    const zeroPart = (from: number, to: number) => (to > from ? this.write(from, Buffer.alloc(to - from), { fua: false }) : undefined);
    if (end > first) {
      await zeroPart(offsetBytes, first * LBA_BYTES);
      await zeroPart(end * LBA_BYTES, offsetBytes + lengthBytes);
    } else {
      await zeroPart(offsetBytes, offsetBytes + lengthBytes);
    }
    if (options.fua) await this.array.flush();
  }

  async flush(): Promise<void> {
    await this.array.flush();
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes);
    const first = Math.floor(offsetBytes / LBA_BYTES);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / LBA_BYTES);
    await this.loadMap(first, Math.min(last, first + MAP_PAGES_PER_STEP * LBAS_PER_MAP_PAGE - 1));
  }

  /** Unmaps (or zero-patterns) whole logical blocks, a bounded number of map pages at a time. */
  async unmapRange(first: number, last: number, content: BlockContent): Promise<void> {
    const step = MAP_PAGES_PER_STEP * LBAS_PER_MAP_PAGE;
    for (let from = first; from <= last; from += step) {
      const to = Math.min(last, from + step - 1);
      if (content.type !== 'unmap') {
        await this.mutate(from * LBA_BYTES, (to - from + 1) * LBA_BYTES, () => content);
        continue;
      }
      // Unmapping what no layer holds changes nothing: only visit map pages that exist.
      const pages = await this.array.existingMapPages(this.chain(), Math.floor(from / LBAS_PER_MAP_PAGE), Math.floor(to / LBAS_PER_MAP_PAGE));
      for (const pageIndex of [...pages].sort((a, b) => a - b)) {
        const pageFirst = Math.max(from, pageIndex * LBAS_PER_MAP_PAGE);
        const pageLast = Math.min(to, (pageIndex + 1) * LBAS_PER_MAP_PAGE - 1);
        await this.mutate(pageFirst * LBA_BYTES, (pageLast - pageFirst + 1) * LBA_BYTES, () => content);
      }
    }
  }

  /**
   * The write path shared by WRITE, TRIM and WRITE_ZEROES: lock the blocks, read the partial
   * ones, compute the new contents, then load, check space, and apply in one synchronous step.
   */
  private async mutate(offsetBytes: number, lengthBytes: number, produce: (lba: number, old: Buffer | null) => BlockContent): Promise<void> {
    const first = Math.floor(offsetBytes / LBA_BYTES);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / LBA_BYTES);
    const release = await this.locks.acquire(first, last);
    try {
      const headPartial = offsetBytes % LBA_BYTES !== 0 || lengthBytes < LBA_BYTES;
      const tailPartial = (offsetBytes + lengthBytes) % LBA_BYTES !== 0;
      const head = headPartial ? (await this.readBlocks(first, first))[0]! : null;
      const tail = tailPartial && last !== first ? (await this.readBlocks(last, last))[0]! : tailPartial ? head : null;
      const contents: BlockContent[] = [];
      for (let lba = first; lba <= last; lba++) contents.push(produce(lba, lba === first ? head : lba === last ? tail : null));
      await this.applyWhenReady(first, contents);
    } finally {
      release();
    }
  }

  /**
   * Loads what the change needs, decides per block (pattern, dedup hit, or new chunk), checks
   * space, and applies — the last three in one synchronous step, so the plan still holds when it
   * is applied and a concurrent identical block finds the chunk this one creates.
   */
  private async applyWhenReady(first: number, contents: BlockContent[]): Promise<void> {
    const last = first + contents.length - 1;
    const { ftl, chunks, dedup } = this.array;
    const fingerprints = contents.flatMap((content) => (content.type === 'data' && content.fingerprint !== null ? [content.fingerprint] : []));
    // Untrusted fingerprints: per block index, the candidate chunk proven byte-identical to it.
    const verified = new Map<number, number>();
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      let unpinMap = await this.array.mapCache.loadPinned(this.mapPageIds(this.chain(), first, last));
      const oldChunks = this.topChunkIdsIn(first, last);
      if (oldChunks === null) {
        unpinMap();
        continue;
      }
      let unpinChunks: () => void = () => undefined;
      try {
        if (dedup !== null && fingerprints.length > 0) await dedup.prepare(fingerprints);
        const candidates = dedup === null ? [] : fingerprints.flatMap((fingerprint) => dedup.peek(fingerprint) ?? []);
        unpinChunks = await chunks.cache.loadPinned(chunks.pageIdsOf([...oldChunks, ...candidates]));
        if (!this.array.fingerprint.cryptographic) await this.verifyCandidates(contents, verified);
      } catch (error) {
        unpinMap();
        unpinChunks();
        throw error;
      }
      // From here to apply() nothing is awaited unless we start over.
      const unpin = () => {
        unpinMap();
        unpinChunks();
        unpinMap = unpinChunks = () => undefined;
      };
      try {
        const plan = this.plan(contents, verified);
        const freed = this.freedBytes(first, last);
        if (freed === null) continue;
        if (plan.newBytes > 0 && ftl.liveBytes + plan.newBytes - freed > ftl.usableBytes) {
          throw StorageError.noSpace(`the array is full (${ftl.liveBytes} of ${ftl.usableBytes} bytes used); delete volumes or trim data to free space`);
        }
        if (plan.newBytes > 0 && !ftl.hasHostSpace(plan.newBytes)) {
          unpin();
          await ftl.ensureHostSpace(plan.newBytes);
          continue;
        }
        this.apply(first, contents, plan.decisions);
      } finally {
        unpin();
      }
      this.array.maybeWriteback();
      return;
    }
    throw StorageError.io('write could not load its metadata (cache thrashing): raise --cache-mb');
  }

  /** Per block: share an existing chunk, share one created earlier in this request, or store anew. */
  private plan(contents: BlockContent[], verified: ReadonlyMap<number, number>): { decisions: Decision[]; newBytes: number } {
    const { chunks, dedup } = this.array;
    const trusted = this.array.fingerprint.cryptographic;
    const firstMiss = new Map<string, number>();
    let newBytes = 0;
    const decisions = contents.map((content, index): Decision => {
      if (content.type !== 'data') return { kind: 'none' };
      if (content.fingerprint !== null && dedup !== null) {
        const candidate = dedup.peek(content.fingerprint);
        if (candidate !== undefined && chunks.isLoaded(candidate) && chunks.get(candidate) !== undefined && (trusted || verified.get(index) === candidate)) {
          return { kind: 'hit', chunkId: candidate };
        }
        const key = content.fingerprint.toString('base64');
        const earlier = firstMiss.get(key);
        if (earlier !== undefined && (trusted || (contents[earlier] as DataContent).bytes.equals(content.bytes))) return { kind: 'same-as', index: earlier };
        firstMiss.set(key, index);
      }
      content.reduced ??= compressBlock(content.bytes, this.array.codec);
      newBytes += LogStream.recordBytes(content.reduced.stored.length);
      return { kind: 'store' };
    });
    return { decisions, newBytes };
  }

  /**
   * Untrusted fingerprints: a candidate is shared with a block only if its bytes equal that very
   * block's (verification is per block, never per chunk: two different blocks may collide).
   */
  private async verifyCandidates(contents: BlockContent[], verified: Map<number, number>): Promise<void> {
    const dedup = this.array.dedup!;
    for (const [index, content] of contents.entries()) {
      if (content.type !== 'data' || content.fingerprint === null) continue;
      const candidate = dedup.peek(content.fingerprint);
      if (candidate === undefined || verified.get(index) === candidate) continue;
      const existing = await this.array.readChunk(candidate).catch(() => null);
      if (existing !== null && existing.equals(content.bytes)) verified.set(index, candidate);
    }
  }

  private apply(first: number, contents: BlockContent[], decisions: Decision[]): void {
    const { chunks, ftl, dedup, reduction } = this.array;
    const chain = this.chain();
    const hasParent = chain.length > 1;
    const created: number[] = [];
    // Old chunks are released after every new reference is in place: a block of this write may
    // share the very chunk that another block of it overwrites.
    const released: number[] = [];
    let mappedDelta = 0;
    let patternDelta = 0;
    contents.forEach((content, i) => {
      const lba = first + i;
      const page = this.topPage(lba)!;
      const slot = lba % LBAS_PER_MAP_PAGE;
      const before = resolvedKind(this.resolve(chain, lba)!);
      const oldTopKind = page.kind(slot);
      const oldChunk = oldTopKind === EntryKind.Chunk ? page.chunkId(slot) : -1;
      if (content.type === 'unmap' && (before === EntryKind.Absent || before === EntryKind.Hole) && oldTopKind !== EntryKind.Chunk) return;
      const decision = decisions[i]!;
      if (content.type === 'data') {
        let chunkId: number;
        if (decision.kind === 'hit' || decision.kind === 'same-as') {
          chunkId = decision.kind === 'hit' ? decision.chunkId : created[decision.index]!;
          chunks.incref(chunkId);
          reduction.dedupHits += 1;
          this.record.dedupHits += 1;
        } else {
          const { stored, codec } = content.reduced!;
          chunkId = chunks.add(stored.length, codec, content.fingerprint, (id) => ftl.append('host', id, stored));
          reduction.onChunkStored(stored.length);
          if (content.fingerprint !== null && dedup !== null) dedup.insert(content.fingerprint, chunkId);
        }
        created[i] = chunkId;
        page.setChunk(slot, chunkId);
      } else if (content.type === 'pattern') {
        page.set(slot, EntryKind.Pattern, content.high, content.low);
      } else {
        // With a parent layer an explicit hole must hide what the parent holds.
        page.set(slot, hasParent ? EntryKind.Hole : EntryKind.Absent, 0, 0);
      }
      const after = resolvedKind({ page, slot });
      mappedDelta += (isMapped(after) ? 1 : 0) - (isMapped(before) ? 1 : 0);
      patternDelta += (after === EntryKind.Pattern ? 1 : 0) - (before === EntryKind.Pattern ? 1 : 0);
      if (oldChunk >= 0) released.push(oldChunk);
      this.array.mapCache.markDirty(mapCacheId(this.topLayerId, Math.floor(lba / LBAS_PER_MAP_PAGE)), page);
    });
    for (const chunkId of released) this.array.releaseChunk(chunkId);
    if (mappedDelta !== 0 || patternDelta !== 0) {
      this.record.mappedBlocks += mappedDelta;
      this.record.patternBlocks += patternDelta;
      this.recordDirty = true;
    }
  }

  /** Record bytes that overwriting `first..last` would free, or null if a page is not loaded. */
  private freedBytes(first: number, last: number): number | null {
    let freed = 0;
    for (let lba = first; lba <= last; lba++) {
      const page = this.topPage(lba);
      if (page === undefined) return null;
      const slot = lba % LBAS_PER_MAP_PAGE;
      if (page.kind(slot) !== EntryKind.Chunk) continue;
      const chunkId = page.chunkId(slot);
      if (!this.array.chunks.isLoaded(chunkId)) return null;
      const entry = this.array.chunks.get(chunkId);
      if (entry !== undefined && entry.refcount === 1) freed += LogStream.recordBytes(entry.storedBytes);
    }
    return freed;
  }

  /** A whole block the reduction workers already looked at. */
  private reducedContent(bytes: Buffer, result: ReducedBlock): BlockContent {
    if (result.pattern !== null) return { type: 'pattern', high: result.pattern.high, low: result.pattern.low };
    return { type: 'data', bytes, fingerprint: this.array.dedup === null ? null : result.fingerprint, reduced: result.reduced ?? undefined };
  }

  /** Pattern removal first (it costs nothing to store); then the block's fingerprint for dedup. */
  private dataContent(bytes: Buffer): BlockContent {
    const pattern = detectPattern(bytes);
    if (pattern !== null) return { type: 'pattern', high: pattern.high, low: pattern.low };
    return { type: 'data', bytes, fingerprint: this.array.dedup === null ? null : this.array.fingerprint(bytes) };
  }

  // ---- Block status --------------------------------------------------------------------------

  async blockStatus(context: string, offsetBytes: number, lengthBytes: number): Promise<StatusExtent[]> {
    this.checkRange(offsetBytes, lengthBytes);
    const changedSince = context === BASE_ALLOCATION ? null : this.changedContextLayers(context);
    const first = Math.floor(offsetBytes / LBA_BYTES);
    const limit = Math.floor((offsetBytes + lengthBytes - 1) / LBA_BYTES);
    const last = Math.min(limit, (Math.floor(first / LBAS_PER_MAP_PAGE) + MAP_PAGES_PER_STEP) * LBAS_PER_MAP_PAGE - 1);
    const layers = changedSince ?? this.chain();
    // Map pages no layer holds are holes (or unchanged) without loading anything.
    const existing = await this.array.existingMapPages(layers, Math.floor(first / LBAS_PER_MAP_PAGE), Math.floor(last / LBAS_PER_MAP_PAGE));
    const empty = changedSince === null ? STATE_HOLE | STATE_ZERO : 0;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      await this.array.mapCache.load(layers.flatMap((layerId) => [...existing].map((pageIndex) => mapCacheId(layerId, pageIndex))));
      const chain = this.chain();
      const extents: StatusExtent[] = [];
      let complete = true;
      for (let lba = first; lba <= last; lba++) {
        const present = existing.has(Math.floor(lba / LBAS_PER_MAP_PAGE));
        const flags = !present ? empty : changedSince === null ? this.allocationFlags(chain, lba) : this.changedFlags(changedSince, lba);
        if (flags === undefined) {
          complete = false;
          break;
        }
        const from = Math.max(offsetBytes, lba * LBA_BYTES);
        const to = Math.min(offsetBytes + lengthBytes, (lba + 1) * LBA_BYTES);
        const tail = extents[extents.length - 1];
        if (tail !== undefined && tail.flags === flags) tail.lengthBytes += to - from;
        else extents.push({ lengthBytes: to - from, flags });
      }
      if (complete) return extents;
    }
    throw StorageError.io('block status could not load its metadata (cache thrashing): raise --cache-mb');
  }

  // ---- Helpers -------------------------------------------------------------------------------

  private checkRange(offsetBytes: number, lengthBytes: number): void {
    assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0 && lengthBytes > 0, `bad range ${offsetBytes}+${lengthBytes}`);
    if (offsetBytes + lengthBytes > this.sizeBytes) {
      throw StorageError.outOfRange(`range ${offsetBytes}+${lengthBytes} is beyond the end of ${this.name} (${this.sizeBytes} bytes)`);
    }
  }

  private checkWritable(): void {
    if (this.readOnly) throw StorageError.readOnly(`${this.name} is a snapshot and cannot be written; clone it to get a writable volume`);
  }

  /** Layer ids from the top of this view down to the root. */
  chain(): number[] {
    return this.array.layerChain(this.topLayerId);
  }

  private mapPageIds(chain: readonly number[], first: number, last: number): number[] {
    const ids: number[] = [];
    for (const layerId of chain) {
      for (let index = Math.floor(first / LBAS_PER_MAP_PAGE); index <= Math.floor(last / LBAS_PER_MAP_PAGE); index++) ids.push(mapCacheId(layerId, index));
    }
    return ids;
  }

  private topPage(lba: number): MapPage | undefined {
    return this.array.mapCache.get(mapCacheId(this.topLayerId, Math.floor(lba / LBAS_PER_MAP_PAGE)));
  }

  /** The first layer's entry for `lba`; null if no layer holds one; undefined if not loaded. */
  private resolve(chain: readonly number[], lba: number): Resolved | null | undefined {
    const pageIndex = Math.floor(lba / LBAS_PER_MAP_PAGE);
    const slot = lba % LBAS_PER_MAP_PAGE;
    for (const layerId of chain) {
      const page = this.array.mapCache.get(mapCacheId(layerId, pageIndex));
      if (page === undefined) return undefined;
      if (page.kind(slot) !== EntryKind.Absent) return { page, slot };
    }
    return null;
  }

  loadMap(first: number, last: number): Promise<void> {
    return this.array.mapCache.load(this.mapPageIds(this.chain(), first, last));
  }

  /** Chunk ids the resolved entries of `first..last` name, or null if a page is not loaded. */
  private chunkIdsIn(first: number, last: number): number[] | null {
    const chain = this.chain();
    const ids: number[] = [];
    for (let lba = first; lba <= last; lba++) {
      const resolved = this.resolve(chain, lba);
      if (resolved === undefined) return null;
      if (resolved !== null && resolved.page.kind(resolved.slot) === EntryKind.Chunk) ids.push(resolved.page.chunkId(resolved.slot));
    }
    return ids;
  }

  /** Chunk ids the top layer holds for `first..last` (the ones a write may release). */
  private topChunkIdsIn(first: number, last: number): number[] | null {
    const ids: number[] = [];
    for (let lba = first; lba <= last; lba++) {
      const page = this.topPage(lba);
      if (page === undefined) return null;
      const slot = lba % LBAS_PER_MAP_PAGE;
      if (page.kind(slot) === EntryKind.Chunk) ids.push(page.chunkId(slot));
    }
    return ids;
  }

  private allocationFlags(chain: readonly number[], lba: number): number | undefined {
    const resolved = this.resolve(chain, lba);
    if (resolved === undefined) return undefined;
    if (resolved === null) return STATE_HOLE | STATE_ZERO;
    const { page, slot } = resolved;
    switch (page.kind(slot)) {
      case EntryKind.Hole:
        return STATE_HOLE | STATE_ZERO;
      case EntryKind.Pattern:
        return page.high[slot] === 0 && page.low[slot] === 0 ? STATE_ZERO : 0;
      default:
        return 0;
    }
  }

  /** For `pstorage:changed:OLDER`: the layers written after OLDER, up to this snapshot. */
  private changedContextLayers(context: string): number[] {
    assert(this.snapshot !== null && context.startsWith(CHANGED_CONTEXT_PREFIX), `unknown meta context ${context}`);
    const older = this.array.olderSnapshots(this.snapshot).find((candidate) => `${CHANGED_CONTEXT_PREFIX}${candidate.name}` === context);
    assert(older !== undefined, `unknown meta context ${context}`);
    return this.array.layersBetween(older.layerId, this.snapshot.layerId);
  }

  /** 1 (changed) if any layer written since the older snapshot holds an entry for `lba`. */
  private changedFlags(layers: readonly number[], lba: number): number | undefined {
    const pageIndex = Math.floor(lba / LBAS_PER_MAP_PAGE);
    const slot = lba % LBAS_PER_MAP_PAGE;
    for (const layerId of layers) {
      const page = this.array.mapCache.get(mapCacheId(layerId, pageIndex));
      if (page === undefined) return undefined;
      if (page.kind(slot) !== EntryKind.Absent) return STATE_CHANGED;
    }
    return 0;
  }
}

function resolvedKind(resolved: Resolved | null): EntryKind {
  return resolved === null ? EntryKind.Absent : resolved.page.kind(resolved.slot);
}

function isMapped(kind: EntryKind): boolean {
  return kind === EntryKind.Chunk || kind === EntryKind.Pattern;
}

function patternBlock(high: number, low: number): Buffer | null {
  if (high === 0 && low === 0) return null;
  return expandPattern({ high, low }, LBA_BYTES);
}
