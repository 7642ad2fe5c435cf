/**
 * A thin volume: the `BlockDevice` an NBD export serves, over the array's volume maps, chunk table
 * and FTL.
 *
 * Logical blocks are 4 KiB. All-zero (and other one-word) blocks become pattern entries and cost
 * no NAND; every other block becomes a chunk appended to the host log stream, or shares a stored
 * chunk with the same content (dedup). TRIM and WRITE_ZEROES unmap whole blocks (WRITE_ZEROES
 * with NO_HOLE stores zero patterns instead) and zero the partial edges.
 *
 * Reads are served at once, synchronously when every map and chunk page they need is cached and
 * the NAND's pages come from the page cache (the common case: one resolve, one pread, one copy,
 * no promise). Otherwise the pages are loaded and the read is planned again.
 *
 * Writes, TRIM and WRITE_ZEROES go through the array's I/O scheduler (io-scheduler.ts), which
 * reduces whole blocks in batches and then applies requests one at a time in submission order by
 * calling `applyChange`. That function first plans the whole request without changing anything:
 * it resolves every block, reads the old content of partly written blocks (read-modify-write),
 * decides per block (pattern, dedup hit after a byte-for-byte check, or a new chunk), and checks
 * space. If a page it needs is not cached it returns what is missing (the scheduler loads it and
 * calls again); if the host stream needs GC first it says how many bytes. Only then does it apply
 * every change in one synchronous step, so a crash or a concurrent read sees each request old or
 * new, never mixed, and a write that cannot fit fails with NO_SPACE having changed nothing.
 *
 * Layers: a volume's map is a chain of layers (snapshots.ts). Reads take, per block, the entry of
 * the first layer that holds one; writes go to the top layer only, and release only the top
 * layer's old chunk (a lower layer belongs to a snapshot and keeps its reference). A snapshot is
 * served by the same class as a read-only view whose top is the snapshot's frozen layer.
 */
import {
  BASE_ALLOCATION,
  IoCommand,
  STATE_HOLE,
  STATE_ZERO,
  submitAsync,
  type BlockDevice,
  type IoRequest,
  type ReadExtent,
  type ReadResult,
  type StatusExtent,
  type WriteOptions,
  type ZeroOptions,
} from '../common/block-device.js';
import { assert, fail } from '../common/assert.js';
import { StorageError } from '../common/errors.js';
import { TurnSlicer } from '../common/turns.js';
import { LogStream } from '../ftl/log-stream.js';
import type { RecordRef } from '../ftl/ftl.js';
import { Codec, decompressBlock } from '../reduce/codec.js';
import { MAYBE_STORED } from '../reduce/dedup-index.js';
import { FINGERPRINT_BYTES } from '../reduce/fingerprint.js';
import { ReducedBlocks, ensureStored, reduceInline } from '../reduce/reduce-block.js';
import type { FlashArray } from './flash-array.js';
import { EntryKind, LBAS_PER_MAP_PAGE, type MapPage } from './map-page.js';
import { mapCacheId } from './map-table.js';
import type { WriteAges } from './write-age.js';

export const LBA_BYTES = 4096;
/** Unmap and block-status work is done this many map pages at a time. */
const MAP_PAGES_PER_STEP = 64;
/** A long TRIM or WRITE_ZEROES lets the event loop turn after this much work. */
const UNMAP_SLICE_MS = 2;
const MAX_ATTEMPTS = 100;
/** Meta context of a snapshot export listing the blocks changed since an older snapshot. */
export const CHANGED_CONTEXT_PREFIX = 'pstorage:changed:';
/** The status bit of that context: the block was written after the older snapshot. */
export const STATE_CHANGED = 1;

export { mapCacheId };

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
  /**
   * Client identities (TLS certificate common names, PSK usernames) allowed to attach this volume
   * and its snapshots over NBD; absent (as in records written before access lists existed): every
   * client. A volume with a list is never served to plain (non-TLS) clients.
   */
  accessList?: string[];
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

/** Pages a plan needs that are not cached, and fingerprints the dedup index must look up. */
export interface Missing {
  mapIds: number[];
  chunkIds: number[];
  fingerprints: Buffer[];
}

/** What `applyChange` did: null when applied, else what it needs first. */
export type ChangeOutcome = null | { missing: Missing } | { spaceBytes: number };

/** What a change does to its whole blocks. */
export const enum ChangeMode {
  /** WRITE: `data` gives every byte. */
  Data,
  /** TRIM / WRITE_ZEROES without NO_HOLE: whole blocks become holes. */
  Unmap,
  /** WRITE_ZEROES with NO_HOLE: whole blocks become zero patterns. */
  ZeroPattern,
}

/** Per-block decisions of a planned change. */
const enum Decision {
  /** Nothing to do (unmapping what is already a hole). */
  None,
  Pattern,
  Hole,
  /** Share an existing chunk (checked byte for byte). */
  Hit,
  /** Share the chunk an earlier block of the same request stores. */
  SameAs,
  Store,
}

/** A read planned against the metadata: what is not a chunk is already in `data`. */
interface ReadPlan {
  data: Buffer;
  offsetBytes: number;
  first: number;
  count: number;
  /** 1 where the logical block reads as zeros and may be reported as a hole. */
  holes: Uint8Array;
  refs: RecordRef[];
  /** Per ref: its block's index in the range, and its codec. */
  refIndex: number[];
  refCodec: Codec[];
  /** Per ref: where its payload goes as it is (a raw block the read covers whole), or undefined. */
  refDestination: Array<Buffer | undefined>;
}

export class Volume implements BlockDevice {
  readonly readOnly: boolean;
  recordDirty = false;
  /** When each 4 MiB extent was last written or unmapped (write-age.ts); analytics reads it. */
  private readonly writeAges: WriteAges;

  constructor(
    private readonly array: FlashArray,
    readonly record: VolumeRecord,
    /** Set for the read-only view of a snapshot. */
    readonly snapshot: SnapshotRecord | null = null,
  ) {
    this.readOnly = snapshot !== null;
    this.writeAges = array.writeAgesOf(record.id);
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

  // ---- The fast path ---------------------------------------------------------------------------

  submit(request: IoRequest): void {
    try {
      if (request.command !== IoCommand.Flush) this.checkRange(request.offsetBytes, request.lengthBytes);
      switch (request.command) {
        case IoCommand.Read:
          this.readRequest(request);
          return;
        case IoCommand.Cache:
          void this.loadMap(Math.floor(request.offsetBytes / LBA_BYTES), Math.floor((request.offsetBytes + request.lengthBytes - 1) / LBA_BYTES)).then(
            () => request.done(request, null),
            (error: unknown) => request.done(request, error),
          );
          return;
        case IoCommand.Flush:
          break;
        default:
          this.checkWritable();
          if (request.command === IoCommand.Write) assert(request.data !== null && request.data.length === request.lengthBytes, 'write payload length');
      }
    } catch (error) {
      request.done(request, error);
      return;
    }
    this.array.scheduler.enqueue(this, request);
  }

  // ---- The promise API (management, tests) -----------------------------------------------------

  async read(offsetBytes: number, lengthBytes: number): Promise<ReadExtent[]> {
    return (await this.request(IoCommand.Read, offsetBytes, lengthBytes, null, false))!.extents;
  }

  async write(offsetBytes: number, data: Buffer, options: WriteOptions): Promise<void> {
    await this.request(IoCommand.Write, offsetBytes, data.length, data, options.fua);
  }

  async trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void> {
    await this.request(IoCommand.Trim, offsetBytes, lengthBytes, null, options.fua);
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void> {
    await submitAsync(this, { command: IoCommand.WriteZeroes, offsetBytes, lengthBytes, data: null, fua: options.fua, noHole: options.noHole, fastZero: options.fastZero });
  }

  async flush(): Promise<void> {
    await this.request(IoCommand.Flush, 0, 0, null, false);
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    await this.request(IoCommand.Cache, offsetBytes, lengthBytes, null, false);
  }

  private request(command: IoCommand, offsetBytes: number, lengthBytes: number, data: Buffer | null, fua: boolean): Promise<ReadResult | null> {
    return submitAsync(this, { command, offsetBytes, lengthBytes, data, fua, noHole: false, fastZero: false });
  }

  // ---- Reads -----------------------------------------------------------------------------------

  private readRequest(request: IoRequest): void {
    const ftl = this.array.ftl;
    if (ftl.canReadSync) {
      const plan = this.planRead(request.offsetBytes, request.lengthBytes, request.readInto ?? null);
      if (!('mapIds' in plan)) {
        this.readChunksSync(plan);
        request.result = this.finishRead(plan);
        request.done(request, null);
        return;
      }
    }
    this.readSlow(request).then(
      () => request.done(request, null),
      (error: unknown) => request.done(request, error),
    );
  }

  /**
   * Loads what the read needs, then plans it again; chunk records are read asynchronously when the
   * NAND prefers that. Every page loaded stays pinned until the read is done: a plan that finds a
   * page missing says nothing of the pages it found cached, and loading the missing ones may evict
   * those (nothing pins them), so a read needing more pages than the cache holds (64 chunk-table
   * pages for a 256 KiB read at --cache-mb 1) would go round evicting its own pages until it gave
   * up. With the pins kept, each attempt pins what it loads and the read needs about three.
   */
  private async readSlow(request: IoRequest): Promise<void> {
    const { offsetBytes, lengthBytes } = request;
    let missing: Missing = { mapIds: this.mapPageIds(this.chain(), offsetBytes, lengthBytes), chunkIds: [], fingerprints: [] };
    const unpins: Array<() => void> = [];
    try {
      for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        unpins.push(await this.array.maps.cache.loadPinned(missing.mapIds));
        unpins.push(await this.array.chunks.cache.loadPinned(this.array.chunks.pageIdsOf(missing.chunkIds)));
        const plan = this.planRead(offsetBytes, lengthBytes, request.readInto ?? null);
        if ('mapIds' in plan) {
          missing = plan;
          continue;
        }
        // Nothing awaited between planning and readRecords (which registers the read with the FTL
        // at once): GC cannot erase the addresses underneath it.
        if (this.array.ftl.canReadSync) this.readChunksSync(plan);
        else await this.readChunksAsync(plan);
        request.result = this.finishRead(plan);
        return;
      }
    } finally {
      for (const unpin of unpins) unpin();
    }
    throw StorageError.io('read could not load its metadata (cache thrashing): raise --cache-mb');
  }

  /**
   * Resolves every block of the range. Holes and patterns are written into the result buffer at
   * once; chunks become record reads. Returns what is not cached instead, changing nothing.
   */
  private planRead(offsetBytes: number, lengthBytes: number, into: Buffer | null): ReadPlan | Missing {
    const first = Math.floor(offsetBytes / LBA_BYTES);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / LBA_BYTES);
    const count = last - first + 1;
    const chain = this.chain();
    const chunks = this.array.chunks;
    const data = into !== null && into.length === lengthBytes ? into : this.array.slab.take(lengthBytes);
    const holes = new Uint8Array(count);
    const refs: RecordRef[] = [];
    const refIndex: number[] = [];
    const refCodec: Codec[] = [];
    const refDestination: Array<Buffer | undefined> = [];
    let missingChunks: number[] | null = null;
    for (let i = 0; i < count; i++) {
      const lba = first + i;
      const page = this.resolve(chain, lba);
      if (page === undefined) return { mapIds: this.mapPageIds(chain, offsetBytes, lengthBytes), chunkIds: [], fingerprints: [] };
      const from = Math.max(offsetBytes, lba * LBA_BYTES);
      const to = Math.min(offsetBytes + lengthBytes, (lba + 1) * LBA_BYTES);
      const destination = from - offsetBytes;
      const slot = lba % LBAS_PER_MAP_PAGE;
      const kind = page === null ? EntryKind.Absent : page.kinds[slot]!;
      if (kind === EntryKind.Chunk) {
        const chunkId = page!.chunkId(slot);
        const chunkPage = chunks.pageOf(chunkId);
        if (chunkPage === undefined) {
          (missingChunks ??= []).push(chunkId);
          continue;
        }
        const chunkSlot = chunkId % 256;
        if (!(chunkPage.refcount[chunkSlot]! > 0)) fail(`${this.name} lba ${lba} maps to free chunk ${chunkId}`);
        refs.push({ address: { block: chunkPage.block[chunkSlot]!, offsetBytes: chunkPage.offset[chunkSlot]! }, chunkId, storedBytes: chunkPage.stored[chunkSlot]! });
        refIndex.push(i);
        const codec = chunkPage.codec[chunkSlot]! as Codec;
        refCodec.push(codec);
        refDestination.push(codec === Codec.Raw && to - from === LBA_BYTES ? data.subarray(destination, destination + LBA_BYTES) : undefined);
      } else if (kind === EntryKind.Pattern && (page!.high[slot] !== 0 || page!.low[slot] !== 0)) {
        fillPattern(data, destination, from - lba * LBA_BYTES, to - from, page!.high[slot]!, page!.low[slot]!);
      } else if (kind === EntryKind.Lost) {
        throw lostBlock(this.name, lba);
      } else {
        data.fill(0, destination, destination + (to - from));
        holes[i] = 1;
      }
    }
    if (missingChunks !== null) return { mapIds: [], chunkIds: missingChunks, fingerprints: [] };
    return { data, offsetBytes, first, count, holes, refs, refIndex, refCodec, refDestination };
  }

  private readChunksSync(plan: ReadPlan): void {
    if (plan.refs.length > 0) this.array.ftl.readRecordsSync(plan.refs, (k, payload) => this.placeBlock(plan, k, payload), plan.refDestination);
  }

  private async readChunksAsync(plan: ReadPlan): Promise<void> {
    if (plan.refs.length === 0) return;
    const payloads = await this.array.ftl.readRecords(plan.refs);
    payloads.forEach((payload, k) => this.placeBlock(plan, k, payload));
  }

  /** Copies (decompressing) the `k`th record of the plan into its place in the result. */
  private placeBlock(plan: ReadPlan, k: number, payload: Buffer): void {
    if (payload === plan.refDestination[k]) return; // the FTL put it in place
    const lba = plan.first + plan.refIndex[k]!;
    const block = decompressBlock(payload, plan.refCodec[k]!, LBA_BYTES);
    const { offsetBytes } = plan;
    const from = Math.max(offsetBytes, lba * LBA_BYTES);
    const to = Math.min(offsetBytes + plan.data.length, (lba + 1) * LBA_BYTES);
    block.copy(plan.data, from - offsetBytes, from - lba * LBA_BYTES, to - lba * LBA_BYTES);
  }

  /** The result of a read whose chunks are in place: extents alternate data and holes. */
  private finishRead(plan: ReadPlan): ReadResult {
    const { data, holes, count, first, offsetBytes } = plan;
    const lengthBytes = data.length;
    if (count === 1) return { data, extents: [{ lengthBytes, data: holes[0] === 1 ? null : data }] };
    const extents: ReadExtent[] = [];
    let runStart = 0;
    for (let i = 0; i < count; i++) {
      const lba = first + i;
      const to = Math.min(offsetBytes + lengthBytes, (lba + 1) * LBA_BYTES) - offsetBytes;
      const hole = holes[i] === 1;
      if (i + 1 < count && (holes[i + 1] === 1) === hole) continue;
      extents.push({ lengthBytes: to - runStart, data: hole ? null : data.subarray(runStart, to) });
      runStart = to;
    }
    return { data, extents };
  }

  // ---- Changes (called by the I/O scheduler, in submission order) -------------------------------

  /**
   * Plans and applies one change of logical blocks `first..last` (see the design note). For a
   * WRITE, `data` covers `offsetBytes..+data.length` and the whole blocks in it were reduced into
   * `reduced` from index `reducedFirst` on (null: reduce them here). Synchronous.
   */
  applyChange(mode: ChangeMode, offsetBytes: number, lengthBytes: number, data: Buffer | null, reduced: ReducedBlocks | null, reducedFirst: number): ChangeOutcome {
    let plan: ReturnType<Volume['planChange']>;
    try {
      plan = this.planChange(mode, offsetBytes, lengthBytes, data, reduced, reducedFirst);
    } catch (error) {
      CHANGE_PLAN.release(); // a refusal (full array, host space) after some blocks were planned
      throw error;
    }
    if (plan instanceof ChangePlan) {
      try {
        this.applyPlan(plan);
      } finally {
        plan.release();
      }
      return null;
    }
    CHANGE_PLAN.release();
    return plan;
  }

  private planChange(mode: ChangeMode, offsetBytes: number, lengthBytes: number, data: Buffer | null, reduced: ReducedBlocks | null, reducedFirst: number): ChangePlan | { missing: Missing } | { spaceBytes: number } {
    const { array } = this;
    const { chunks, dedup, ftl } = array;
    const first = Math.floor(offsetBytes / LBA_BYTES);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / LBA_BYTES);
    const firstWhole = Math.ceil(offsetBytes / LBA_BYTES);
    // While the host file system is full only changes that free space are taken (host-space.ts).
    if (array.hostSpace.refusing && mode !== ChangeMode.Unmap) throw array.hostSpace.refuse();
    const chain = this.chain();
    const top = chain[0]!;
    // Every map page of the chain over the range, or nothing can be decided.
    for (const layerId of chain) {
      for (let index = Math.floor(first / LBAS_PER_MAP_PAGE); index <= Math.floor(last / LBAS_PER_MAP_PAGE); index++) {
        if (!array.maps.cache.has(mapCacheId(layerId, index))) return { missing: { mapIds: this.mapPageIds(chain, offsetBytes, lengthBytes), chunkIds: [], fingerprints: [] } };
      }
    }
    const plan = CHANGE_PLAN.reset(first, last - first + 1, chain);
    // Made only when something is missing: most changes find everything loaded.
    let missing: Missing | null = null;
    for (let i = 0; i < plan.count; i++) {
      const lba = first + i;
      const page = array.maps.pageOf(top, lba)!;
      plan.pages[i] = page;
      const slot = lba % LBAS_PER_MAP_PAGE;
      plan.before[i] = chain.length === 1 ? page.kinds[slot]! : resolvedKind(this.resolve(chain, lba)!, slot);
      if (page.kinds[slot] === EntryKind.Chunk) {
        const old = page.chunkId(slot);
        plan.oldChunk[i] = old;
        if (!chunks.isLoaded(old)) (missing ??= noneMissing()).chunkIds.push(old);
      }
      const blockStart = lba * LBA_BYTES;
      const from = Math.max(offsetBytes, blockStart);
      const to = Math.min(offsetBytes + lengthBytes, blockStart + LBA_BYTES);
      if (mode !== ChangeMode.Data && to - from === LBA_BYTES) {
        plan.decision[i] = mode === ChangeMode.ZeroPattern ? Decision.Pattern : Decision.Hole;
        plan.patternHigh[i] = 0;
        plan.patternLow[i] = 0;
        continue;
      }
      let block: Buffer;
      let index: number;
      let source: ReducedBlocks;
      if (to - from === LBA_BYTES && reduced !== null) {
        source = reduced;
        index = reducedFirst + (lba - firstWhole);
        block = reduced.blocks?.[index] ?? data!.subarray(from - offsetBytes, to - offsetBytes);
      } else {
        // A block written only in part (or not reduced yet): merge with its old content.
        block = to - from === LBA_BYTES ? data!.subarray(from - offsetBytes, to - offsetBytes) : this.mergeOld(chain, lba, from - blockStart, data, from - offsetBytes, to - from, (missing ??= noneMissing()));
        source = plan.ownReduced(i);
        index = i;
        reduceInline([block], source, i, array.reduceSettings);
      }
      if (source.pattern[index] === 1 && array.ftl.cipher !== null && (source.patternHigh[index]! | source.patternLow[index]!) !== 0) {
        // An encrypted array keeps no block content in clear, and a pattern's word would be in its
        // volume map (LevelDB): a non-zero pattern is reduced again as data and stored encrypted
        // (dedup and compression keep it to one small chunk). Only all-zero blocks stay patterns.
        source = plan.ownReduced(i);
        index = i;
        source.pattern[index] = 0;
        reduceInline([block], source, index, array.reduceSettings, true, true);
      }
      plan.blocks[i] = block;
      plan.source[i] = source;
      plan.sourceIndex[i] = index;
      if (source.pattern[index] === 1) {
        plan.decision[i] = Decision.Pattern;
        plan.patternHigh[i] = source.patternHigh[index]!;
        plan.patternLow[i] = source.patternLow[index]!;
        continue;
      }
      plan.decision[i] = Decision.Store;
      if (dedup === null) continue;
      // The fingerprint is read where the batch keeps it; a view of it is made only when needed.
      const candidate = dedup.lookupAt(source.fingerprints, index * FINGERPRINT_BYTES);
      if (candidate === MAYBE_STORED) {
        (missing ??= noneMissing()).fingerprints.push(source.fingerprint(index));
      } else if (candidate !== undefined) {
        if (!chunks.isLoaded(candidate)) (missing ??= noneMissing()).chunkIds.push(candidate);
        else if (this.sameContent(candidate, source.fingerprint(index), block, source, index)) {
          plan.decision[i] = Decision.Hit;
          plan.shared[i] = candidate;
          continue;
        }
      }
      const earlier = plan.earlierCopy(i, source, index, block);
      if (earlier >= 0) {
        plan.decision[i] = Decision.SameAs;
        plan.shared[i] = earlier;
      }
    }
    if (missing !== null && (missing.chunkIds.length > 0 || missing.fingerprints.length > 0 || missing.mapIds.length > 0)) return { missing };
    let newBytes = 0;
    let freedBytes = 0;
    for (let i = 0; i < plan.count; i++) {
      if (plan.decision[i] === Decision.Store) {
        ensureStored(plan.source[i]!, plan.sourceIndex[i]!, plan.blocks[i]!, array.reduceSettings);
        newBytes += LogStream.recordBytes(plan.storedOf(i).length);
      }
      const old = plan.oldChunk[i]!;
      if (old >= 0) {
        const chunkPage = chunks.pageOf(old)!;
        if (chunkPage.refcount[old % 256] === 1) freedBytes += LogStream.recordBytes(chunkPage.stored[old % 256]!);
      }
    }
    if (newBytes > 0 && array.hostSpace.refusing) throw array.hostSpace.refuse(); // the edges of an unmap
    if (newBytes > 0 && ftl.liveBytes + newBytes - freedBytes > ftl.usableBytes) {
      throw StorageError.noSpace(`the array is full (${ftl.liveBytes} of ${ftl.usableBytes} bytes used); delete volumes or trim data to free space`);
    }
    if (newBytes > 0 && !ftl.hasHostSpace(newBytes)) return { spaceBytes: newBytes };
    return plan;
  }

  /**
   * A 4 KiB block: the old content of `lba` with `length` bytes of `data` (from `dataAt`; zeros
   * when `data` is null) written over it at `inBlock`. Notes a chunk page it cannot read.
   */
  private mergeOld(chain: readonly number[], lba: number, inBlock: number, data: Buffer | null, dataAt: number, length: number, missing: Missing): Buffer {
    const merged = Buffer.alloc(LBA_BYTES);
    const page = this.resolve(chain, lba)!;
    const slot = lba % LBAS_PER_MAP_PAGE;
    const kind = page === null ? EntryKind.Absent : page.kinds[slot];
    if (kind === EntryKind.Pattern) fillPattern(merged, 0, 0, LBA_BYTES, page!.high[slot]!, page!.low[slot]!);
    else if (kind === EntryKind.Lost) throw lostBlock(this.name, lba); // nothing to merge a partial write into
    else if (kind === EntryKind.Chunk) {
      const chunkId = page!.chunkId(slot);
      const chunkPage = this.array.chunks.pageOf(chunkId);
      if (chunkPage === undefined) missing.chunkIds.push(chunkId);
      else {
        const s = chunkId % 256;
        const ref: RecordRef = { address: { block: chunkPage.block[s]!, offsetBytes: chunkPage.offset[s]! }, chunkId, storedBytes: chunkPage.stored[s]! };
        const codec = chunkPage.codec[s]! as Codec;
        this.array.ftl.readRecordsSync([ref], (_k, payload) => decompressBlock(payload, codec, LBA_BYTES).copy(merged));
      }
    }
    if (data !== null) data.copy(merged, inBlock, dataAt, dataAt + length);
    else merged.fill(0, inBlock, inBlock + length);
    return merged;
  }

  /**
   * Whether live chunk `chunkId` holds exactly `block`: it must carry the same fingerprint, and its
   * stored record must equal the block's stored form (same codec) or, decompressed, the block.
   * Every dedup hit goes through here: fingerprints are advice (see fingerprint.ts).
   */
  private sameContent(chunkId: number, fingerprint: Buffer, block: Buffer, source: ReducedBlocks, index: number): boolean {
    const chunkPage = this.array.chunks.pageOf(chunkId)!;
    const slot = chunkId % 256;
    if (!chunkPage.hasFingerprint(slot, fingerprint)) return false;
    const codec = chunkPage.codec[slot]! as Codec;
    const ours = source.compressed[index];
    const ref: RecordRef = { address: { block: chunkPage.block[slot]!, offsetBytes: chunkPage.offset[slot]! }, chunkId, storedBytes: chunkPage.stored[slot]! };
    let same = false;
    try {
      this.array.ftl.readRecordsSync([ref], (_k, payload) => {
        if (codec === Codec.Raw) same = payload.equals(block);
        else if (ours !== null && codec === source.codec[index]) same = payload.equals(ours);
        else same = decompressBlock(payload, codec, LBA_BYTES).equals(block);
      });
    } catch (error) {
      if ((error as StorageError).code !== 'CORRUPT') throw error;
      return false; // a damaged candidate is simply not shared
    }
    return same;
  }

  /** Applies a plan: every change in one synchronous step. */
  private applyPlan(plan: ChangePlan): void {
    const { chunks, ftl, dedup, reduction, maps } = this.array;
    const top = plan.chain[0]!;
    const hasParent = plan.chain.length > 1;
    const created = plan.shared; // SameAs reads the chunk an earlier block created from here
    // Old chunks are released after every new reference is in place: a block of this change may
    // share the very chunk that another block of it overwrites.
    let mappedDelta = 0;
    let patternDelta = 0;
    let dedupHits = 0;
    for (let i = 0; i < plan.count; i++) {
      const decision = plan.decision[i]!;
      const lba = plan.first + i;
      const page = plan.pages[i]!;
      const slot = lba % LBAS_PER_MAP_PAGE;
      const before = plan.before[i]! as EntryKind;
      const topKind = page.kinds[slot]!;
      if (decision === Decision.Hole && (before === EntryKind.Absent || before === EntryKind.Hole) && topKind !== EntryKind.Chunk) {
        plan.oldChunk[i] = -1;
        continue;
      }
      let after: EntryKind;
      switch (decision) {
        case Decision.Hit:
        case Decision.SameAs: {
          const chunkId = decision === Decision.Hit ? plan.shared[i]! : created[plan.shared[i]!]!;
          chunks.incref(chunkId);
          created[i] = chunkId;
          dedupHits += 1;
          maps.setChunk(page, top, lba, chunkId);
          after = EntryKind.Chunk;
          break;
        }
        case Decision.Store: {
          const source = plan.source[i]!;
          const index = plan.sourceIndex[i]!;
          const stored = plan.storedOf(i);
          const checksum = source.checksum[index]!;
          const fingerprintAt = index * FINGERPRINT_BYTES;
          const chunkId = chunks.add(stored.length, source.codec[index]! as Codec, dedup === null ? null : source.fingerprints, ftl.append('host', chunks.nextId(), stored, checksum), fingerprintAt);
          reduction.onChunkStored(stored.length);
          if (dedup !== null) dedup.insertAt(source.fingerprints, fingerprintAt, chunkId);
          created[i] = chunkId;
          maps.setChunk(page, top, lba, chunkId);
          after = EntryKind.Chunk;
          break;
        }
        case Decision.Pattern:
          maps.set(page, top, lba, EntryKind.Pattern, plan.patternHigh[i]!, plan.patternLow[i]!);
          after = EntryKind.Pattern;
          break;
        default:
          // With a parent layer an explicit hole must hide what the parent holds.
          after = hasParent ? EntryKind.Hole : EntryKind.Absent;
          maps.set(page, top, lba, after, 0, 0);
      }
      mappedDelta += (isMapped(after) ? 1 : 0) - (isMapped(before) ? 1 : 0);
      patternDelta += (after === EntryKind.Pattern ? 1 : 0) - (before === EntryKind.Pattern ? 1 : 0);
    }
    for (let i = 0; i < plan.count; i++) if (plan.oldChunk[i]! >= 0) this.array.releaseChunk(plan.oldChunk[i]!);
    if (plan.count > 0) this.writeAges.touch(plan.first, plan.first + plan.count - 1);
    if (dedupHits > 0) {
      reduction.dedupHits += dedupHits;
      this.record.dedupHits += dedupHits;
      this.recordDirty = true;
    }
    if (mappedDelta !== 0 || patternDelta !== 0) {
      this.record.mappedBlocks += mappedDelta;
      this.record.patternBlocks += patternDelta;
      this.recordDirty = true;
    }
  }

  /** Counts a WRITE's payload once it is applied. */
  countWrite(lengthBytes: number): void {
    this.array.counters.hostBytesWritten += lengthBytes;
    this.record.hostBytesWritten += lengthBytes;
    this.recordDirty = true;
  }

  /**
   * TRIM and WRITE_ZEROES: whole blocks are unmapped (or zero-patterned), a bounded number of map
   * pages at a time; partial edges of WRITE_ZEROES are written with zeros. TRIM is a hint: its
   * partial edges are left alone. Called by the scheduler, which waits for it.
   */
  async applyUnmapRequest(request: IoRequest): Promise<void> {
    const { offsetBytes, lengthBytes } = request;
    const first = Math.ceil(offsetBytes / LBA_BYTES);
    const end = Math.floor((offsetBytes + lengthBytes) / LBA_BYTES);
    const zeroing = request.command === IoCommand.WriteZeroes;
    const mode = zeroing && request.noHole ? ChangeMode.ZeroPattern : ChangeMode.Unmap;
    if (end > first) await this.unmapRange(first, end - 1, mode);
    if (!zeroing) return;
    // Zeroing is a metadata change here, always faster than writing, so FAST_ZERO never fails.
    const edges: Array<[number, number]> = end > first ? [[offsetBytes, first * LBA_BYTES], [end * LBA_BYTES, offsetBytes + lengthBytes]] : [[offsetBytes, offsetBytes + lengthBytes]];
    for (const [from, to] of edges) if (to > from) await this.changeUntilDone(ChangeMode.Unmap, from, to - from);
  }

  /**
   * Unmaps (or zero-patterns) whole logical blocks, a bounded number of map pages at a time,
   * letting the event loop turn every `UNMAP_SLICE_MS` of work: changes that need nothing loaded
   * resolve as microtasks, which never let sockets be read or replies written, so a 1 GiB TRIM of
   * unique data held every other connection's 4 KiB reads for up to 125 ms (a 4 GiB one, 1.2 s).
   * Each pause also starts a commit once the policy's `unmapCommitJournalBytes` of journal wait:
   * one commit of a whole 1 GiB TRIM's journal (8 MB) copied it twice in single turns.
   */
  async unmapRange(first: number, last: number, mode: ChangeMode): Promise<void> {
    const step = MAP_PAGES_PER_STEP * LBAS_PER_MAP_PAGE;
    const slicer = new TurnSlicer(UNMAP_SLICE_MS);
    for (let from = first; from <= last; from += step) {
      const to = Math.min(last, from + step - 1);
      const firstPage = Math.floor(from / LBAS_PER_MAP_PAGE);
      const lastPage = Math.floor(to / LBAS_PER_MAP_PAGE);
      // Unmapping what no layer holds changes nothing: only visit map pages that exist. Zeroing
      // with NO_HOLE writes patterns, so every page. One map page at a time keeps slices short.
      const pages =
        mode === ChangeMode.Unmap
          ? [...(await this.array.existingMapPages(this.chain(), firstPage, lastPage))].sort((a, b) => a - b)
          : Array.from({ length: lastPage - firstPage + 1 }, (_, k) => firstPage + k);
      for (const pageIndex of pages) {
        const pageFirst = Math.max(from, pageIndex * LBAS_PER_MAP_PAGE);
        const pageLast = Math.min(to, (pageIndex + 1) * LBAS_PER_MAP_PAGE - 1);
        await this.changeUntilDone(mode, pageFirst * LBA_BYTES, (pageLast - pageFirst + 1) * LBA_BYTES);
        if (!slicer.due()) continue;
        this.array.maybeCommit(true);
        await slicer.nextTurn();
      }
    }
  }

  /** A change outside the batched write path: loads and retries until it is applied. */
  private async changeUntilDone(mode: ChangeMode, offsetBytes: number, lengthBytes: number): Promise<void> {
    let unpins: Array<() => void> = [];
    try {
      for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        const outcome = this.array.withEvictionsHeld(() => this.applyChange(mode, offsetBytes, lengthBytes, null, null, 0));
        if (outcome === null) return;
        if ('spaceBytes' in outcome) await this.array.ftl.ensureHostSpace(outcome.spaceBytes);
        else unpins.push(await this.array.loadMissing(outcome.missing));
      }
    } finally {
      for (const unpin of unpins) unpin();
      unpins = [];
    }
    throw StorageError.io('a change could not load its metadata (cache thrashing): raise --cache-mb');
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
    // Pinned while in use: one step may need more map pages (64 per layer) than a small cache
    // holds, and a plain load would evict the first of them to insert the last.
    const unpin = await this.array.maps.cache.loadPinned(layers.flatMap((layerId) => [...existing].map((pageIndex) => mapCacheId(layerId, pageIndex))));
    try {
      return this.statusOfLoaded(offsetBytes, lengthBytes, first, last, layers, existing, changedSince !== null, empty);
    } finally {
      unpin();
    }
  }

  /**
   * Block status of `first..last` over `layers` (the chain, or the layers changed since a
   * snapshot), whose existing map pages are all cached and pinned.
   */
  private statusOfLoaded(offsetBytes: number, lengthBytes: number, first: number, last: number, layers: readonly number[], existing: Set<number>, changed: boolean, empty: number): StatusExtent[] {
    const extents: StatusExtent[] = [];
    for (let lba = first; lba <= last; lba++) {
      const present = existing.has(Math.floor(lba / LBAS_PER_MAP_PAGE));
      const flags = !present ? empty : changed ? this.changedFlags(layers, lba) : this.allocationFlags(layers, lba);
      if (flags === undefined) throw StorageError.io(`block status found map page ${Math.floor(lba / LBAS_PER_MAP_PAGE)} of ${this.name} missing after loading it`);
      const from = Math.max(offsetBytes, lba * LBA_BYTES);
      const to = Math.min(offsetBytes + lengthBytes, (lba + 1) * LBA_BYTES);
      const tail = extents[extents.length - 1];
      if (tail !== undefined && tail.flags === flags) tail.lengthBytes += to - from;
      else extents.push({ lengthBytes: to - from, flags });
    }
    return extents;
  }

  // ---- Helpers -------------------------------------------------------------------------------

  private checkRange(offsetBytes: number, lengthBytes: number): void {
    if (!(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0 && lengthBytes > 0)) fail(`bad range ${offsetBytes}+${lengthBytes}`);
    if (offsetBytes + lengthBytes > this.sizeBytes) {
      throw StorageError.outOfRange(`range ${offsetBytes}+${lengthBytes} is beyond the end of ${this.name} (${this.sizeBytes} bytes)`);
    }
  }

  private checkWritable(): void {
    if (this.readOnly) throw StorageError.readOnly(`${this.name} is a snapshot and cannot be written; clone it to get a writable volume`);
  }

  /** Layer ids from the top of this view down to the root. */
  chain(): readonly number[] {
    return this.array.layerChain(this.topLayerId);
  }

  private mapPageIds(chain: readonly number[], offsetBytes: number, lengthBytes: number): number[] {
    const first = Math.floor(Math.floor(offsetBytes / LBA_BYTES) / LBAS_PER_MAP_PAGE);
    const last = Math.floor(Math.floor((offsetBytes + lengthBytes - 1) / LBA_BYTES) / LBAS_PER_MAP_PAGE);
    const ids: number[] = [];
    for (const layerId of chain) for (let index = first; index <= last; index++) ids.push(mapCacheId(layerId, index));
    return ids;
  }

  /** The page holding the first layer's entry for `lba` (slot `lba % 1024`); null if no layer holds one; undefined if a page is not loaded. */
  private resolve(chain: readonly number[], lba: number): MapPage | null | undefined {
    const pageIndex = Math.floor(lba / LBAS_PER_MAP_PAGE);
    const slot = lba % LBAS_PER_MAP_PAGE;
    for (let i = 0; i < chain.length; i++) {
      const page = this.array.maps.cache.get(mapCacheId(chain[i]!, pageIndex));
      if (page === undefined) return undefined;
      if (page.kinds[slot] !== EntryKind.Absent) return page;
    }
    return null;
  }

  loadMap(first: number, last: number): Promise<void> {
    return this.array.maps.cache.load(this.mapPageIds(this.chain(), first * LBA_BYTES, (last - first + 1) * LBA_BYTES));
  }

  private allocationFlags(chain: readonly number[], lba: number): number | undefined {
    const page = this.resolve(chain, lba);
    if (page === undefined) return undefined;
    if (page === null) return STATE_HOLE | STATE_ZERO;
    const slot = lba % LBAS_PER_MAP_PAGE;
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
    if (!(this.snapshot !== null && context.startsWith(CHANGED_CONTEXT_PREFIX))) fail(`unknown meta context ${context}`);
    const older = this.array.olderSnapshots(this.snapshot).find((candidate) => `${CHANGED_CONTEXT_PREFIX}${candidate.name}` === context);
    if (!(older !== undefined)) fail(`unknown meta context ${context}`);
    return this.array.layersBetween(older.layerId, this.snapshot.layerId);
  }

  /** 1 (changed) if any layer written since the older snapshot holds an entry for `lba`. */
  private changedFlags(layers: readonly number[], lba: number): number | undefined {
    const pageIndex = Math.floor(lba / LBAS_PER_MAP_PAGE);
    const slot = lba % LBAS_PER_MAP_PAGE;
    for (const layerId of layers) {
      const page = this.array.maps.cache.get(mapCacheId(layerId, pageIndex));
      if (page === undefined) return undefined;
      if (page.kind(slot) !== EntryKind.Absent) return STATE_CHANGED;
    }
    return 0;
  }
}

/**
 * A change planned against the metadata, per block of the range. One plan is reused for every
 * change (planning and applying are one synchronous step, so two never overlap): a change of one
 * block used to allocate nine typed arrays.
 */
class ChangePlan {
  decision = new Uint8Array(0);
  /** The entry kind each block resolves to before the change. */
  before = new Uint8Array(0);
  pages: Array<MapPage | undefined> = [];
  /** The top layer's chunk each block releases, or -1. */
  oldChunk = new Float64Array(0);
  /** Hit: the chunk shared; SameAs: the earlier block's index; after apply: the chunk mapped. */
  shared = new Float64Array(0);
  patternHigh = new Uint32Array(0);
  patternLow = new Uint32Array(0);
  blocks: Array<Buffer | undefined> = [];
  source: Array<ReducedBlocks | undefined> = [];
  sourceIndex = new Uint32Array(0);
  first = 0;
  count = 0;
  chain: readonly number[] = [];
  private own: ReducedBlocks | null = null;
  /**
   * First block storing each fingerprint (by its first 48 bits), for `earlierCopy`: an open
   * addressing table of keys and block indexes, whose slots count as used only when stamped with
   * this change's `generation`, so a new change starts with an empty table without clearing it. (A
   * `Map`, cleared per change, reallocated its table as it grew: 41 bytes a block at 128 KiB writes.)
   */
  private storeKeys = new Float64Array(0);
  private storeBlocks = new Int32Array(0);
  private storeStamps = new Uint32Array(0);
  private generation = 0;

  /** Makes the plan ready for `count` blocks from `first` (growing its columns if needed). */
  reset(first: number, count: number, chain: readonly number[]): this {
    if (this.decision.length < count) {
      const size = Math.max(count, 2 * this.decision.length, 8);
      this.decision = new Uint8Array(size);
      this.before = new Uint8Array(size);
      this.oldChunk = new Float64Array(size);
      this.shared = new Float64Array(size);
      this.patternHigh = new Uint32Array(size);
      this.patternLow = new Uint32Array(size);
      this.sourceIndex = new Uint32Array(size);
    }
    this.decision.fill(0, 0, count);
    this.oldChunk.fill(-1, 0, count);
    // pages, blocks and source hold nothing here: `release` emptied them after the last change.
    this.first = first;
    this.count = count;
    this.chain = chain;
    this.own = null;
    if (count > 1) this.resetStores(count);
    return this;
  }

  /** An empty `earlierCopy` table with room for `count` blocks at half load. */
  private resetStores(count: number): void {
    if (this.storeKeys.length < 2 * count) {
      let size = 64;
      while (size < 2 * count) size *= 2;
      this.storeKeys = new Float64Array(size);
      this.storeBlocks = new Int32Array(size);
      this.storeStamps = new Uint32Array(size);
      this.generation = 0;
    }
    this.generation += 1;
    if (this.generation === 0x1_0000_0000) {
      this.storeStamps.fill(0);
      this.generation = 1;
    }
  }

  /**
   * Drops references to buffers once the plan is applied (or abandoned). The entries are cleared,
   * not the arrays truncated: setting `length` cost a runtime call per array per change.
   */
  release(): void {
    clearEntries(this.pages, this.count);
    clearEntries(this.blocks, this.count);
    clearEntries(this.source, this.count);
    this.own = null;
  }

  /** Results for blocks reduced during planning (partial blocks), indexed like the plan. */
  ownReduced(_index: number): ReducedBlocks {
    this.own ??= new ReducedBlocks(this.count);
    return this.own;
  }

  /** The stored form of block `i`: its compressed form, or the block itself. */
  storedOf(i: number): Buffer {
    return this.source[i]!.compressed[this.sourceIndex[i]!] ?? this.blocks[i]!;
  }

  /**
   * An earlier block of this change that stores the same bytes, or -1; otherwise block `i` is
   * noted as the one storing its fingerprint.
   */
  earlierCopy(i: number, source: ReducedBlocks, index: number, block: Buffer): number {
    if (this.count === 1) return -1;
    const at = index * FINGERPRINT_BYTES;
    const key = source.fingerprints.readUInt32BE(at) * 0x10000 + source.fingerprints.readUInt16BE(at + 4);
    const mask = this.storeKeys.length - 1;
    let slot = (key ^ (key / 0x1_0000_0000)) & mask;
    while (this.storeStamps[slot] === this.generation && this.storeKeys[slot] !== key) slot = (slot + 1) & mask;
    if (this.storeStamps[slot] !== this.generation) {
      this.storeStamps[slot] = this.generation;
      this.storeKeys[slot] = key;
      this.storeBlocks[slot] = i;
      return -1;
    }
    const j = this.storeBlocks[slot]!;
    if (this.blocks[j]!.equals(block)) return j;
    // Two different blocks with one fingerprint (a collision): look at every earlier block.
    const fingerprint = source.fingerprint(index);
    for (let k = 0; k < i; k++) {
      if (this.decision[k] === Decision.Store && this.source[k]!.fingerprint(this.sourceIndex[k]!).equals(fingerprint) && this.blocks[k]!.equals(block)) return k;
    }
    return -1;
  }
}

const CHANGE_PLAN = new ChangePlan();

/** Sets the first `count` entries of `array` (those it has) to undefined. */
function clearEntries(array: unknown[], count: number): void {
  for (let i = Math.min(count, array.length) - 1; i >= 0; i--) array[i] = undefined;
}

function noneMissing(): Missing {
  return { mapIds: [], chunkIds: [], fingerprints: [] };
}

function resolvedKind(page: MapPage | null, slot: number): EntryKind {
  return page === null ? EntryKind.Absent : (page.kinds[slot]! as EntryKind);
}

function isMapped(kind: EntryKind): boolean {
  return kind === EntryKind.Chunk || kind === EntryKind.Pattern || kind === EntryKind.Lost;
}

/** A read of a block `pstorage inspect repair` marked lost: EIO to the client, never other data. */
function lostBlock(name: string, lba: number): StorageError {
  return StorageError.corrupt(`${name} lba ${lba} was lost in a metadata repair ("pstorage inspect repair" listed it); write it again to use it`);
}

/** Fills `length` bytes of `target` at `at` with the pattern word, starting `phase` bytes into the block. */
function fillPattern(target: Buffer, at: number, phase: number, length: number, high: number, low: number): void {
  const word = Buffer.allocUnsafe(16);
  word.writeUInt32BE(high >>> 0, 0);
  word.writeUInt32BE(low >>> 0, 4);
  word.copy(word, 8, 0, 8);
  const shift = phase % 8;
  target.fill(word.subarray(shift, shift + 8), at, at + length);
}
