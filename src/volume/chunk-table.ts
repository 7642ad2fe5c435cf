/**
 * The chunk table: `chunk id → {physical address, stored length, codec, refcount}`, the second
 * level of address translation. Volume maps (and later snapshots and clones) refer to chunks by
 * id, so GC moves a chunk by rewriting its one entry here and no map ever changes.
 *
 * Ids are handed out in increasing order and never reused, so chunks written together share a
 * page. Pages hold 256 entries; value format (LevelDB 'chunks' sublevel, key = u64 page index):
 * 256 entries of 52 bytes (u32 erase block, u32 stream offset, u32 stored bytes, u32 refcount,
 * u8 codec, u8 flags (1 = has fingerprint), 2 bytes reserved, 32-byte fingerprint), big-endian;
 * a page with no live entry is deleted. A refcount of 0 marks a free slot. The fingerprint is
 * kept so that freeing a chunk can remove its dedup-index entry.
 *
 * Crash: the table is only ever persisted in the commit batch together with the map pages and
 * erase-block summaries that agree with it; ids allocated after the last commit may be handed out
 * again after a crash, which is safe because every read checks the chunk id in the record header.
 */
import { assert } from '../common/assert.js';
import type { PhysicalAddress } from '../ftl/log-stream.js';
import type { MetaOp, MetaStore } from '../meta/meta-store.js';
import { u64Key } from '../meta/keys.js';
import { Codec } from '../reduce/codec.js';
import { PageCache, type CachedPage, type CapturedPage } from './page-cache.js';

export { Codec };

export const CHUNKS_PER_PAGE = 256;
const ENTRY_BYTES = 52;
const FP_BYTES = 32;

export interface ChunkEntry {
  address: PhysicalAddress;
  storedBytes: number;
  refcount: number;
  codec: Codec;
  fingerprint: Buffer | null;
}

export class ChunkPage implements CachedPage {
  version = 0;
  persistedVersion = 0;
  pins = 0;
  liveCount = 0;
  readonly block = new Uint32Array(CHUNKS_PER_PAGE);
  readonly offset = new Uint32Array(CHUNKS_PER_PAGE);
  readonly stored = new Uint32Array(CHUNKS_PER_PAGE);
  readonly refcount = new Uint32Array(CHUNKS_PER_PAGE);
  readonly codec = new Uint8Array(CHUNKS_PER_PAGE);
  readonly hasFingerprint = new Uint8Array(CHUNKS_PER_PAGE);
  readonly fingerprints = new Uint8Array(CHUNKS_PER_PAGE * FP_BYTES);

  get sizeBytes(): number {
    return CHUNKS_PER_PAGE * (18 + FP_BYTES) + 400;
  }

  fingerprint(slot: number): Buffer | null {
    if (this.hasFingerprint[slot] === 0) return null;
    return Buffer.from(this.fingerprints.subarray(slot * FP_BYTES, (slot + 1) * FP_BYTES));
  }

  static decode(bytes: Buffer | undefined): ChunkPage {
    const page = new ChunkPage();
    if (bytes === undefined) return page;
    assert(bytes.length === CHUNKS_PER_PAGE * ENTRY_BYTES, `chunk page of ${bytes.length} bytes`);
    for (let i = 0; i < CHUNKS_PER_PAGE; i++) {
      const at = i * ENTRY_BYTES;
      page.block[i] = bytes.readUInt32BE(at);
      page.offset[i] = bytes.readUInt32BE(at + 4);
      page.stored[i] = bytes.readUInt32BE(at + 8);
      page.refcount[i] = bytes.readUInt32BE(at + 12);
      page.codec[i] = bytes[at + 16]!;
      page.hasFingerprint[i] = bytes[at + 17]! & 1;
      page.fingerprints.set(bytes.subarray(at + 20, at + 20 + FP_BYTES), i * FP_BYTES);
      if (page.refcount[i]! > 0) page.liveCount += 1;
    }
    return page;
  }

  encode(): Buffer | null {
    if (this.liveCount === 0) return null;
    const out = Buffer.alloc(CHUNKS_PER_PAGE * ENTRY_BYTES);
    for (let i = 0; i < CHUNKS_PER_PAGE; i++) {
      const at = i * ENTRY_BYTES;
      out.writeUInt32BE(this.block[i]!, at);
      out.writeUInt32BE(this.offset[i]!, at + 4);
      out.writeUInt32BE(this.stored[i]!, at + 8);
      out.writeUInt32BE(this.refcount[i]!, at + 12);
      out[at + 16] = this.codec[i]!;
      out[at + 17] = this.hasFingerprint[i]!;
      out.set(this.fingerprints.subarray(i * FP_BYTES, (i + 1) * FP_BYTES), at + 20);
    }
    return out;
  }
}

export class ChunkTable {
  readonly cache: PageCache<ChunkPage>;
  private unpinAllocationPage: (() => void) | null = null;
  private allocationPageId = -1;

  constructor(
    store: MetaStore,
    budgetBytes: number,
    private next: number,
  ) {
    this.cache = new PageCache(store, 'chunks', (id) => u64Key(id), (_id, bytes) => ChunkPage.decode(bytes), budgetBytes);
  }

  /** The next id to hand out (persisted in the superblock at every commit). */
  get nextChunkId(): number {
    return this.next;
  }

  /** Loads (and keeps in memory) the page new ids are allocated from. */
  async open(): Promise<void> {
    await this.cache.load([pageOf(this.next)]);
    this.allocationPageId = pageOf(this.next);
    this.unpinAllocationPage = this.cache.pin([this.allocationPageId]);
  }

  pageIdsOf(chunkIds: Iterable<number>): number[] {
    const ids = new Set<number>();
    for (const chunkId of chunkIds) ids.add(pageOf(chunkId));
    return [...ids];
  }

  load(chunkIds: Iterable<number>): Promise<void> {
    return this.cache.load(this.pageIdsOf(chunkIds));
  }

  isLoaded(chunkId: number): boolean {
    return this.cache.has(pageOf(chunkId));
  }

  pin(chunkIds: Iterable<number>): () => void {
    return this.cache.pin(this.pageIdsOf(chunkIds));
  }

  /** The entry of a live chunk, or undefined if the chunk is free. The page must be loaded. */
  get(chunkId: number): ChunkEntry | undefined {
    const page = this.page(chunkId);
    const slot = chunkId % CHUNKS_PER_PAGE;
    if (page.refcount[slot] === 0) return undefined;
    return {
      address: { block: page.block[slot]!, offsetBytes: page.offset[slot]! },
      storedBytes: page.stored[slot]!,
      refcount: page.refcount[slot]!,
      codec: page.codec[slot]! as Codec,
      fingerprint: page.fingerprint(slot),
    };
  }

  /**
   * Allocates a chunk with refcount 1. `place(chunkId)` stores its record and returns where: the
   * record header carries the id, so the id comes first.
   */
  add(storedBytes: number, codec: Codec, fingerprint: Buffer | null, place: (chunkId: number) => PhysicalAddress): number {
    const chunkId = this.next;
    const pageId = pageOf(chunkId);
    if (pageId !== this.allocationPageId) {
      // Ids only grow, so a new allocation page has never been stored.
      this.unpinAllocationPage?.();
      if (!this.cache.has(pageId)) this.cache.create(pageId);
      this.allocationPageId = pageId;
      this.unpinAllocationPage = this.cache.pin([pageId]);
    }
    const address = place(chunkId);
    this.next += 1;
    const page = this.cache.get(pageId)!;
    const slot = chunkId % CHUNKS_PER_PAGE;
    page.block[slot] = address.block;
    page.offset[slot] = address.offsetBytes;
    page.stored[slot] = storedBytes;
    page.refcount[slot] = 1;
    page.codec[slot] = codec;
    page.hasFingerprint[slot] = fingerprint === null ? 0 : 1;
    if (fingerprint !== null) page.fingerprints.set(fingerprint, slot * FP_BYTES);
    page.liveCount += 1;
    this.cache.markDirty(pageId, page);
    return chunkId;
  }

  incref(chunkId: number): void {
    const page = this.page(chunkId);
    const slot = chunkId % CHUNKS_PER_PAGE;
    assert(page.refcount[slot]! > 0, `incref of free chunk ${chunkId}`);
    page.refcount[slot] = page.refcount[slot]! + 1;
    this.cache.markDirty(pageOf(chunkId), page);
  }

  /** Drops one reference; returns the entry as it was if this freed the chunk. */
  decref(chunkId: number): ChunkEntry | undefined {
    const entry = this.get(chunkId);
    assert(entry !== undefined, `decref of free chunk ${chunkId}`);
    const page = this.page(chunkId);
    const slot = chunkId % CHUNKS_PER_PAGE;
    page.refcount[slot] = entry.refcount - 1;
    if (entry.refcount === 1) {
      page.liveCount -= 1;
      page.stored[slot] = 0;
      page.block[slot] = 0;
      page.offset[slot] = 0;
      page.hasFingerprint[slot] = 0;
      page.fingerprints.fill(0, slot * FP_BYTES, (slot + 1) * FP_BYTES);
    }
    this.cache.markDirty(pageOf(chunkId), page);
    return entry.refcount === 1 ? entry : undefined;
  }

  moveTo(chunkId: number, address: PhysicalAddress): void {
    const page = this.page(chunkId);
    const slot = chunkId % CHUNKS_PER_PAGE;
    assert(page.refcount[slot]! > 0, `move of free chunk ${chunkId}`);
    page.block[slot] = address.block;
    page.offset[slot] = address.offsetBytes;
    this.cache.markDirty(pageOf(chunkId), page);
  }

  capture(ops: MetaOp[]): Array<CapturedPage<ChunkPage>> {
    return this.cache.capture(ops);
  }

  private page(chunkId: number): ChunkPage {
    const page = this.cache.get(pageOf(chunkId));
    assert(page !== undefined, `chunk page of ${chunkId} is not loaded`);
    return page;
  }
}

export function pageOf(chunkId: number): number {
  return Math.floor(chunkId / CHUNKS_PER_PAGE);
}
