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
import type { FlashArray } from './flash-array.js';
import { EntryKind, LBAS_PER_MAP_PAGE, type MapPage } from './map-page.js';
import { RangeLock } from './range-lock.js';

export const LBA_BYTES = 4096;
/** Unmap and block-status work is done this many map pages at a time. */
const MAP_PAGES_PER_STEP = 64;
const MAX_ATTEMPTS = 100;

export interface VolumeRecord {
  id: number;
  name: string;
  sizeBytes: number;
  createdAt: string;
  mappedBlocks: number;
  patternBlocks: number;
  hostBytesWritten: number;
  dedupHits: number;
}

export function mapCacheId(volumeId: number, mapPageIndex: number): number {
  return volumeId * 0x100000000 + mapPageIndex;
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
  readonly metaContexts = [BASE_ALLOCATION];
  readonly readOnly = false;
  recordDirty = false;
  private readonly locks = new RangeLock();

  constructor(
    private readonly array: FlashArray,
    readonly record: VolumeRecord,
  ) {}

  get sizeBytes(): number {
    return this.record.sizeBytes;
  }

  get description(): string {
    return `pstorage thin volume, ${this.record.sizeBytes} bytes`;
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
      await this.loadMap(first, last);
      const chunkIds = this.chunkIdsIn(first, last);
      if (chunkIds === null) continue;
      await this.array.chunks.load(chunkIds);
      // Nothing awaited between here and readRecords: the addresses are current when the FTL
      // registers the read, so GC cannot erase them underneath it.
      const plan = this.planRead(first, last);
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
    for (let lba = first; lba <= last; lba++) {
      const page = this.mapPage(lba);
      if (page === undefined) return null;
      const slot = lba % LBAS_PER_MAP_PAGE;
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
    this.checkRange(offsetBytes, data.length);
    await this.mutate(offsetBytes, data.length, (lba, old) => {
      const blockStart = lba * LBA_BYTES;
      const from = Math.max(offsetBytes, blockStart);
      const to = Math.min(offsetBytes + data.length, blockStart + LBA_BYTES);
      if (to - from === LBA_BYTES) return this.dataContent(data.subarray(from - offsetBytes, to - offsetBytes));
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
    this.checkRange(offsetBytes, lengthBytes);
    // TRIM is a hint: only whole logical blocks are unmapped.
    const first = Math.ceil(offsetBytes / LBA_BYTES);
    const end = Math.floor((offsetBytes + lengthBytes) / LBA_BYTES);
    if (end > first) await this.unmapRange(first, end - 1, { type: 'unmap' });
    if (options.fua) await this.array.flush();
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void> {
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
  private async unmapRange(first: number, last: number, content: BlockContent): Promise<void> {
    const step = MAP_PAGES_PER_STEP * LBAS_PER_MAP_PAGE;
    for (let from = first; from <= last; from += step) {
      const to = Math.min(last, from + step - 1);
      await this.mutate(from * LBA_BYTES, (to - from + 1) * LBA_BYTES, () => content);
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
    const verified = new Set<number>();
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      await this.loadMap(first, last);
      const oldChunks = this.chunkIdsIn(first, last);
      if (oldChunks === null) continue;
      if (dedup !== null && fingerprints.length > 0) await dedup.prepare(fingerprints);
      const candidates = dedup === null ? [] : fingerprints.flatMap((fingerprint) => dedup.peek(fingerprint) ?? []);
      await chunks.load([...oldChunks, ...candidates]);
      if (!this.array.fingerprint.cryptographic) await this.verifyCandidates(contents, verified);
      // From here to apply() nothing is awaited unless we start over.
      const unpin = this.pinRange(first, last, [...oldChunks, ...candidates]);
      try {
        const plan = this.plan(contents, verified);
        const freed = this.freedBytes(first, last);
        if (freed === null) continue;
        if (plan.newBytes > 0 && ftl.liveBytes + plan.newBytes - freed > ftl.usableBytes) {
          throw StorageError.noSpace(`the array is full (${ftl.liveBytes} of ${ftl.usableBytes} bytes used); delete volumes or trim data to free space`);
        }
        if (!ftl.hasHostSpace(plan.newBytes)) {
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
  private plan(contents: BlockContent[], verified: ReadonlySet<number>): { decisions: Decision[]; newBytes: number } {
    const { chunks, dedup } = this.array;
    const trusted = this.array.fingerprint.cryptographic;
    const firstMiss = new Map<string, number>();
    let newBytes = 0;
    const decisions = contents.map((content, index): Decision => {
      if (content.type !== 'data') return { kind: 'none' };
      if (content.fingerprint !== null && dedup !== null) {
        const candidate = dedup.peek(content.fingerprint);
        if (candidate !== undefined && chunks.isLoaded(candidate) && chunks.get(candidate) !== undefined && (trusted || verified.has(candidate))) {
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

  /** Untrusted fingerprints: a candidate is shared only if its bytes equal the new block's. */
  private async verifyCandidates(contents: BlockContent[], verified: Set<number>): Promise<void> {
    const dedup = this.array.dedup!;
    for (const content of contents) {
      if (content.type !== 'data' || content.fingerprint === null) continue;
      const candidate = dedup.peek(content.fingerprint);
      if (candidate === undefined || verified.has(candidate)) continue;
      const existing = await this.array.readChunk(candidate).catch(() => null);
      if (existing !== null && existing.equals(content.bytes)) verified.add(candidate);
    }
  }

  private pinRange(first: number, last: number, chunkIds: number[]): () => void {
    const mapIds: number[] = [];
    for (let index = Math.floor(first / LBAS_PER_MAP_PAGE); index <= Math.floor(last / LBAS_PER_MAP_PAGE); index++) mapIds.push(mapCacheId(this.record.id, index));
    const unpinMap = this.array.mapCache.pin(mapIds);
    const unpinChunks = this.array.chunks.pin(chunkIds);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      unpinMap();
      unpinChunks();
    };
  }

  private apply(first: number, contents: BlockContent[], decisions: Decision[]): void {
    const { chunks, ftl, dedup, reduction } = this.array;
    const created: number[] = [];
    // Old chunks are released after every new reference is in place: a block of this write may
    // share the very chunk that another block of it overwrites.
    const released: number[] = [];
    let mappedDelta = 0;
    let patternDelta = 0;
    contents.forEach((content, i) => {
      const lba = first + i;
      const page = this.mapPage(lba)!;
      const slot = lba % LBAS_PER_MAP_PAGE;
      const oldKind = page.kind(slot);
      const oldChunk = oldKind === EntryKind.Chunk ? page.chunkId(slot) : -1;
      if (content.type === 'unmap' && oldKind === EntryKind.Unmapped) return;
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
        page.set(slot, EntryKind.Unmapped, 0, 0);
      }
      mappedDelta += (page.kind(slot) !== EntryKind.Unmapped ? 1 : 0) - (oldKind !== EntryKind.Unmapped ? 1 : 0);
      patternDelta += (page.kind(slot) === EntryKind.Pattern ? 1 : 0) - (oldKind === EntryKind.Pattern ? 1 : 0);
      if (oldChunk >= 0) released.push(oldChunk);
      this.array.mapCache.markDirty(mapCacheId(this.record.id, Math.floor(lba / LBAS_PER_MAP_PAGE)), page);
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
      const page = this.mapPage(lba);
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

  /** Pattern removal first (it costs nothing to store); then the block's fingerprint for dedup. */
  private dataContent(bytes: Buffer): BlockContent {
    const pattern = detectPattern(bytes);
    if (pattern !== null) return { type: 'pattern', high: pattern.high, low: pattern.low };
    return { type: 'data', bytes, fingerprint: this.array.dedup === null ? null : this.array.fingerprint(bytes) };
  }

  // ---- Block status --------------------------------------------------------------------------

  async blockStatus(context: string, offsetBytes: number, lengthBytes: number): Promise<StatusExtent[]> {
    assert(context === BASE_ALLOCATION, `unknown meta context ${context}`);
    this.checkRange(offsetBytes, lengthBytes);
    const first = Math.floor(offsetBytes / LBA_BYTES);
    const limit = Math.floor((offsetBytes + lengthBytes - 1) / LBA_BYTES);
    const last = Math.min(limit, (Math.floor(first / LBAS_PER_MAP_PAGE) + MAP_PAGES_PER_STEP) * LBAS_PER_MAP_PAGE - 1);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      await this.loadMap(first, last);
      const extents: StatusExtent[] = [];
      let complete = true;
      for (let lba = first; lba <= last; lba++) {
        const page = this.mapPage(lba);
        if (page === undefined) {
          complete = false;
          break;
        }
        const flags = statusFlags(page, lba % LBAS_PER_MAP_PAGE);
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
    if (offsetBytes + lengthBytes > this.record.sizeBytes) {
      throw StorageError.outOfRange(`range ${offsetBytes}+${lengthBytes} is beyond the end of volume ${this.record.name} (${this.record.sizeBytes} bytes)`);
    }
  }

  private mapPage(lba: number): MapPage | undefined {
    return this.array.mapCache.get(mapCacheId(this.record.id, Math.floor(lba / LBAS_PER_MAP_PAGE)));
  }

  private loadMap(first: number, last: number): Promise<void> {
    const ids: number[] = [];
    for (let index = Math.floor(first / LBAS_PER_MAP_PAGE); index <= Math.floor(last / LBAS_PER_MAP_PAGE); index++) {
      ids.push(mapCacheId(this.record.id, index));
    }
    return this.array.mapCache.load(ids);
  }

  /** Chunk ids the map holds for `first..last`, or null if a map page is not loaded. */
  private chunkIdsIn(first: number, last: number): number[] | null {
    const ids: number[] = [];
    for (let lba = first; lba <= last; lba++) {
      const page = this.mapPage(lba);
      if (page === undefined) return null;
      const slot = lba % LBAS_PER_MAP_PAGE;
      if (page.kind(slot) === EntryKind.Chunk) ids.push(page.chunkId(slot));
    }
    return ids;
  }
}


function patternBlock(high: number, low: number): Buffer | null {
  if (high === 0 && low === 0) return null;
  return expandPattern({ high, low }, LBA_BYTES);
}


function statusFlags(page: MapPage, slot: number): number {
  switch (page.kind(slot)) {
    case EntryKind.Unmapped:
      return STATE_HOLE | STATE_ZERO;
    case EntryKind.Pattern:
      return page.high[slot] === 0 && page.low[slot] === 0 ? STATE_ZERO : 0;
    default:
      return 0;
  }
}
