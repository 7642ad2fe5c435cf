/**
 * The chunk table: `chunk id → {physical address, stored length, codec, refcount, fingerprint}`,
 * the second level of address translation. Volume maps (and snapshots and clones) refer to chunks
 * by id, so GC moves a chunk by rewriting its one entry here and no map ever changes.
 *
 * Ids are handed out in increasing order and never reused, so chunks written together share a
 * page. Pages hold 256 entries; value format 2 (LevelDB 'chunks' sublevel, key = u64 page index):
 * the columns one after the other, little-endian: u32 erase block[256], u32 stream offset[256],
 * u32 stored bytes[256], u32 refcount[256], u8 codec[256], u8 fingerprint length[256], then 8-byte
 * fingerprints[256] (6656 bytes). A page with no live entry is deleted. A refcount of 0 marks a
 * free slot. The fingerprint is kept so that freeing a chunk can remove its dedup-index entry and
 * so that a dedup candidate can be checked against the chunk it names.
 *
 * Every change goes through this class and is journalled (meta/journal.ts) with absolute values
 * (the new entry, the new refcount, the new address); pages are written back lazily.
 *
 * Crash: ids allocated after the last commit may be handed out again after a crash, which is safe
 * because every read checks the chunk id in the record header and nothing committed names them.
 */
import { fail } from '../common/assert.js';
import type { PhysicalAddress } from '../ftl/log-stream.js';
import type { MetaJournal } from '../meta/journal.js';
import { u64Key } from '../meta/keys.js';
import type { MetaStore } from '../meta/meta-store.js';
import { Codec } from '../reduce/codec.js';
import { FINGERPRINT_BYTES } from '../reduce/fingerprint.js';
import { PageCache } from './page-cache.js';

export { Codec };

export const CHUNKS_PER_PAGE = 256;
const N = CHUNKS_PER_PAGE;
const VALUE_BYTES = N * (16 + 2 + FINGERPRINT_BYTES);
/** Bytes of a stored chunk page. */
export const CHUNK_PAGE_VALUE_BYTES = VALUE_BYTES;

export interface ChunkEntry {
  address: PhysicalAddress;
  storedBytes: number;
  refcount: number;
  codec: Codec;
  fingerprint: Buffer | null;
}

export class ChunkPage {
  referenced = false;
  version = 0;
  persistedVersion = 0;
  pins = 0;
  liveCount = 0;
  /**
   * Every column in one buffer, laid out as the stored value: one allocation per page (pages are
   * created at every 256th new chunk) and one copy to encode or decode it.
   */
  private readonly bytes = new Uint8Array(VALUE_BYTES);
  readonly block = new Uint32Array(this.bytes.buffer, 0, N);
  readonly offset = new Uint32Array(this.bytes.buffer, 4 * N, N);
  readonly stored = new Uint32Array(this.bytes.buffer, 8 * N, N);
  readonly refcount = new Uint32Array(this.bytes.buffer, 12 * N, N);
  readonly codec = new Uint8Array(this.bytes.buffer, 16 * N, N);
  readonly fingerprintBytes = new Uint8Array(this.bytes.buffer, 17 * N, N);
  readonly fingerprints = new Uint8Array(this.bytes.buffer, 18 * N, N * FINGERPRINT_BYTES);

  get sizeBytes(): number {
    return VALUE_BYTES + 400;
  }

  fingerprint(slot: number): Buffer | null {
    const length = this.fingerprintBytes[slot]!;
    if (length === 0) return null;
    return Buffer.from(this.fingerprints.subarray(slot * FINGERPRINT_BYTES, slot * FINGERPRINT_BYTES + length));
  }

  /** True when the live chunk in `slot` has exactly this fingerprint. */
  hasFingerprint(slot: number, fingerprint: Uint8Array): boolean {
    if (this.refcount[slot] === 0 || this.fingerprintBytes[slot] !== fingerprint.length) return false;
    const at = slot * FINGERPRINT_BYTES;
    for (let i = 0; i < fingerprint.length; i++) if (this.fingerprints[at + i] !== fingerprint[i]) return false;
    return true;
  }

  static decode(bytes: Buffer | undefined): ChunkPage {
    const page = new ChunkPage();
    if (bytes === undefined) return page;
    if (!(bytes.length === VALUE_BYTES)) fail(`chunk page of ${bytes.length} bytes`);
    page.bytes.set(bytes);
    for (let i = 0; i < N; i++) if (page.refcount[i]! > 0) page.liveCount += 1;
    return page;
  }

  encode(): Buffer | null {
    if (this.liveCount === 0) return null;
    const out = Buffer.allocUnsafe(VALUE_BYTES);
    out.set(this.bytes);
    return out;
  }

  /**
   * Sets a slot to a new live chunk (refcount 1) or, on replay, to what was journalled. The
   * fingerprint is the bytes of `fingerprint` from `fingerprintAt` on (at most 8).
   */
  /** The fingerprint is `fingerprint[fingerprintAt..]`, `fingerprintBytes` long (default: to its end), at most FINGERPRINT_BYTES kept. */
  setEntry(slot: number, block: number, offsetBytes: number, storedBytes: number, refcount: number, codec: Codec, fingerprint: Uint8Array | null, fingerprintAt = 0, fingerprintBytes = fingerprint === null ? 0 : fingerprint.length - fingerprintAt): void {
    if (this.refcount[slot] === 0 && refcount > 0) this.liveCount += 1;
    this.block[slot] = block;
    this.offset[slot] = offsetBytes;
    this.stored[slot] = storedBytes;
    this.refcount[slot] = refcount;
    this.codec[slot] = codec;
    const length = fingerprint === null ? 0 : Math.min(fingerprintBytes, FINGERPRINT_BYTES);
    this.fingerprintBytes[slot] = length;
    const at = slot * FINGERPRINT_BYTES;
    for (let k = 0; k < FINGERPRINT_BYTES; k++) this.fingerprints[at + k] = k < length ? fingerprint![fingerprintAt + k]! : 0;
  }

  setRefcount(slot: number, refcount: number): void {
    if (refcount === 0) {
      if (this.refcount[slot] !== 0) this.liveCount -= 1;
      this.setEntry(slot, 0, 0, 0, 0, Codec.Raw, null);
      return;
    }
    if (this.refcount[slot] === 0) this.liveCount += 1;
    this.refcount[slot] = refcount;
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
    private readonly journal: MetaJournal,
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

  /** The loaded page holding `chunkId` (its slot is `chunkId % CHUNKS_PER_PAGE`), or undefined. */
  pageOf(chunkId: number): ChunkPage | undefined {
    return this.cache.get(pageOf(chunkId));
  }

  /** The entry of a live chunk, or undefined if the chunk is free. The page must be loaded. */
  get(chunkId: number): ChunkEntry | undefined {
    const page = this.page(chunkId);
    const slot = chunkId % N;
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
   * The id the next `add` takes, with its page cached and pinned: the caller stores the record
   * under it (the record header carries the id, so the id comes first), then calls `add`.
   */
  nextId(): number {
    const chunkId = this.next;
    const pageId = pageOf(chunkId);
    if (pageId !== this.allocationPageId) {
      // Ids only grow, so a new allocation page has never been stored.
      this.unpinAllocationPage?.();
      if (!this.cache.has(pageId)) this.cache.create(pageId);
      this.allocationPageId = pageId;
      this.unpinAllocationPage = this.cache.pin([pageId]);
    }
    return chunkId;
  }

  /**
   * Allocates the chunk `nextId()` named, refcount 1, its record stored at `address`. Its
   * fingerprint is the 8 bytes of `fingerprint` from `fingerprintAt` on (a batch's fingerprints,
   * without a view of each).
   */
  add(storedBytes: number, codec: Codec, fingerprint: Uint8Array | null, address: PhysicalAddress, fingerprintAt = 0): number {
    const chunkId = this.nextId();
    this.next += 1;
    const pageId = pageOf(chunkId);
    const page = this.cache.peek(pageId)!;
    const slot = chunkId % N;
    page.setEntry(slot, address.block, address.offsetBytes, storedBytes, 1, codec, fingerprint, fingerprintAt);
    this.journal.chunkNew(chunkId, address.block, address.offsetBytes, storedBytes, codec, page.fingerprints, slot * FINGERPRINT_BYTES, page.fingerprintBytes[slot]!);
    this.cache.markDirty(pageId, page, this.journal.seq);
    return chunkId;
  }

  incref(chunkId: number): void {
    const page = this.page(chunkId);
    const slot = chunkId % N;
    if (!(page.refcount[slot]! > 0)) fail(`incref of free chunk ${chunkId}`);
    this.setRefcount(page, chunkId, page.refcount[slot]! + 1);
  }

  /**
   * Drops one reference. The last one frees the slot (its entry is cleared): a caller that needs
   * the entry of a chunk it frees reads it from `pageOf(chunkId)` first.
   */
  decref(chunkId: number): void {
    const page = this.page(chunkId);
    const slot = chunkId % N;
    const refcount = page.refcount[slot]!;
    if (!(refcount > 0)) fail(`decref of free chunk ${chunkId}`);
    this.setRefcount(page, chunkId, refcount - 1);
  }

  moveTo(chunkId: number, address: PhysicalAddress): void {
    const page = this.page(chunkId);
    const slot = chunkId % N;
    if (!(page.refcount[slot]! > 0)) fail(`move of free chunk ${chunkId}`);
    page.block[slot] = address.block;
    page.offset[slot] = address.offsetBytes;
    this.journal.chunkMove(chunkId, address.block, address.offsetBytes);
    this.cache.markDirty(pageOf(chunkId), page, this.journal.seq);
  }

  // ---- Replay (journalled changes, applied again at open; no new journal entries) ------------

  replayNew(chunkId: number, block: number, offsetBytes: number, storedBytes: number, codec: Codec, source: Uint8Array, fingerprintAt: number, fingerprintBytes: number, seq: number): void {
    const page = this.cache.peek(pageOf(chunkId))!;
    page.setEntry(chunkId % N, block, offsetBytes, storedBytes, 1, codec, fingerprintBytes === 0 ? null : source, fingerprintAt, fingerprintBytes);
    this.cache.markDirty(pageOf(chunkId), page, seq);
    if (chunkId >= this.next) this.next = chunkId + 1;
  }

  replayRefs(chunkId: number, refcount: number, seq: number): void {
    const page = this.cache.peek(pageOf(chunkId))!;
    page.setRefcount(chunkId % N, refcount);
    this.cache.markDirty(pageOf(chunkId), page, seq);
  }

  replayMove(chunkId: number, block: number, offsetBytes: number, seq: number): void {
    const page = this.cache.peek(pageOf(chunkId))!;
    page.block[chunkId % N] = block;
    page.offset[chunkId % N] = offsetBytes;
    this.cache.markDirty(pageOf(chunkId), page, seq);
  }

  private setRefcount(page: ChunkPage, chunkId: number, refcount: number): void {
    page.setRefcount(chunkId % N, refcount);
    this.journal.chunkRefs(chunkId, refcount);
    this.cache.markDirty(pageOf(chunkId), page, this.journal.seq);
  }

  private page(chunkId: number): ChunkPage {
    const page = this.cache.get(pageOf(chunkId));
    if (!(page !== undefined)) fail(`chunk page of ${chunkId} is not loaded`);
    return page;
  }
}

export function pageOf(chunkId: number): number {
  return Math.floor(chunkId / CHUNKS_PER_PAGE);
}
