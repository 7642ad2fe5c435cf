/**
 * The flash array: one data directory holding the NAND image and the LevelDB metadata, the FTL
 * over them, the paged chunk table and volume maps, and the volumes exported over NBD.
 *
 * Data directory: `meta/` (LevelDB), `nand/` (nand.img sparse image + nand.oob spare area).
 * Superblock (LevelDB 'super' sublevel): `format` (format version, NAND geometry, creation
 * options; written once) and `state` (next chunk id, next erase-block sequence, next volume id,
 * counters; rewritten in every commit). Volumes ('volumes', key u32 id): JSON records.
 *
 * Commit point (`commit`): the FTL makes appended records durable and, in the same tick as it
 * issues the last programs, we capture every dirty map page, chunk page, erase-block summary and
 * the superblock state; then one LevelDB batch writes them with `sync: true`. Background
 * write-back (for clients that never flush) syncs too: it is rare, and a synced batch can never be
 * reordered with another by a power loss. Concurrent flushes share commits (group commit).
 *
 * Crash: reopening reads the superblock, the volume records and one summary per erase block —
 * nothing proportional to the data stored — and the FTL reclaims blocks touched after the last
 * commit. Everything the last synced batch references is on NAND, because NAND was synced first.
 */
import fs from 'node:fs';
import path from 'node:path';
import { StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { ExportCatalog, ExportEntry } from '../common/block-device.js';
import { decodeSummary } from '../ftl/erase-block-table.js';
import { Ftl, defaultFtlOptions, type FtlOptions } from '../ftl/ftl.js';
import { decodeU32Key, decodeVolumeMapKey, u32Key } from '../meta/keys.js';
import { LevelMetaStore } from '../meta/level-store.js';
import type { MetaOp, MetaStore } from '../meta/meta-store.js';
import { FileNand } from '../nand/file-nand.js';
import { geometryForCapacity, type NandDevice, type NandGeometry } from '../nand/nand-device.js';
import { ChunkTable } from './chunk-table.js';
import { MapPage } from './map-page.js';
import { PageCache } from './page-cache.js';
import { Volume, mapCacheId, type SnapshotRecord, type VolumeRecord } from './volume.js';
import { volumeMapKey } from '../meta/keys.js';
import { GiB, MiB } from '../common/size.js';
import { BloomFilter } from '../reduce/bloom-filter.js';
import { codecFor, decompressBlock, type Codec, type CompressionName } from '../reduce/codec.js';
import { DedupIndex } from '../reduce/dedup-index.js';
import { sha256Fingerprint, type FingerprintFunction } from '../reduce/fingerprint.js';
import { ReductionPool } from '../reduce/reduction-pool.js';

export const FORMAT_VERSION = 1;
export const DEFAULT_CAPACITY_BYTES = 8 * GiB;
export const DEFAULT_CACHE_BYTES = 256 * MiB;
export const DEFAULT_VOLUME_NAME = 'default';
export const DEFAULT_VOLUME_BYTES = 16 * GiB;
const FORMAT_KEY = Buffer.from('format');
const STATE_KEY = Buffer.from('state');
const LAYERS_KEY = Buffer.from('layers');
/** Background write-back starts when dirty metadata passes this share of the cache. */
const DIRTY_WRITEBACK_SHARE = 0.25;
/** ...or when this many dedup-index entries wait to be written (each is one LevelDB put). */
const DEDUP_WRITEBACK_ENTRIES = 8192;

export interface ArrayOptions {
  capacityBytes?: number;
  pageBytes?: number;
  pagesPerEraseBlock?: number;
  cacheBytes?: number;
  ftl?: Partial<FtlOptions>;
  /** Create a new array when the directory holds none (default true). */
  createIfMissing?: boolean;
  /** Codec for new chunks (default lz4); chunks keep the codec they were written with. */
  compression?: CompressionName;
  /** Global deduplication (default on). Pattern removal is always on. */
  dedup?: boolean;
  /** Tests inject a weak (even colliding) function; non-cryptographic ones are verified on hit. */
  fingerprint?: FingerprintFunction;
  /** Worker threads for hashing and compression (default 1: the second core); 0 = inline. */
  reductionWorkers?: number;
}

/** Data-reduction counters kept current as chunks are stored and freed. */
export class ReductionCounters {
  dedupHits = 0;
  liveChunks = 0;
  liveStoredBytes = 0;

  onChunkStored(storedBytes: number): void {
    this.liveChunks += 1;
    this.liveStoredBytes += storedBytes;
  }

  onChunkFreed(storedBytes: number): void {
    this.liveChunks -= 1;
    this.liveStoredBytes -= storedBytes;
  }
}

interface FormatRecord {
  formatVersion: number;
  geometry: NandGeometry;
  createdAt: string;
}

export interface ArrayCounters {
  hostBytesWritten: number;
  nandBytesWrittenBefore: number;
}

interface StateRecord {
  nextChunkId: number;
  nextSequence: number;
  nextVolumeId: number;
  counters: ArrayCounters;
  reduction?: { dedupHits: number; liveChunks: number; liveStoredBytes: number };
}

export class FlashArray implements ExportCatalog {
  readonly volumes = new Map<string, Volume>();
  /** Snapshots by id, and their read-only views (exported as `volume@snapshot`). */
  readonly snapshots = new Map<number, SnapshotRecord>();
  private readonly snapshotViews = new Map<number, Volume>();
  /** Every map layer: id → parent layer id (0 for none). Volumes and snapshots point into it. */
  readonly layers = new Map<number, number>();
  /** Volume, snapshot and layer records changed since the last commit captured them. */
  catalogDirty = false;
  /** Metadata commits so far (each one LevelDB batch). */
  commits = 0;
  private readonly deletedSnapshots = new Set<number>();
  private readonly deletedVolumes = new Set<number>();
  readonly mapCache: PageCache<MapPage>;
  readonly chunks: ChunkTable;
  readonly counters: ArrayCounters;
  readonly reduction = new ReductionCounters();
  readonly dedup: DedupIndex | null;
  readonly codec: Codec;
  readonly compression: CompressionName;
  readonly fingerprint: FingerprintFunction;
  /** Off-thread hashing and compression; null when reduction runs inline. */
  readonly reducer: ReductionPool | null;
  private nextVolumeId: number;
  private commitRunning: Promise<void> | null = null;
  private commitQueued: Promise<void> | null = null;
  private queuedSync = false;
  private writebackTimer: NodeJS.Timeout | null = null;
  private closed = false;

  private constructor(
    readonly dataDir: string,
    readonly meta: MetaStore,
    readonly nand: NandDevice,
    readonly ftl: Ftl,
    readonly logger: Logger,
    state: StateRecord,
    cacheBytes: number,
    options: ArrayOptions,
  ) {
    this.counters = { ...state.counters };
    Object.assign(this.reduction, state.reduction ?? {});
    this.nextVolumeId = state.nextVolumeId;
    this.compression = options.compression ?? 'lz4';
    this.codec = codecFor(this.compression);
    this.fingerprint = options.fingerprint ?? sha256Fingerprint;
    // The cache budget: 40% volume-map pages, 40% chunk-table pages, 20% dedup index entries.
    this.chunks = new ChunkTable(meta, Math.floor(cacheBytes * 0.4), state.nextChunkId);
    this.mapCache = new PageCache(meta, 'map', mapKeyOfCacheId, (_id, bytes) => MapPage.decode(bytes), Math.floor(cacheBytes * 0.4));
    const bloomBytes = Math.min(64 * MiB, Math.ceil((capacityOf(nand) / 2048) * 10 / 8));
    this.dedup = options.dedup === false ? null : new DedupIndex(meta, new BloomFilter(bloomBytes), Math.floor((cacheBytes * 0.2) / 160));
    const workers = options.reductionWorkers ?? 1;
    // Only the built-in SHA-256 runs in workers; an injected function stays on this thread.
    this.reducer = workers > 0 && this.fingerprint === sha256Fingerprint ? new ReductionPool(workers, this.codec, this.dedup !== null) : null;
    ftl.attach(
      {
        pin: (chunkIds) => this.chunks.cache.loadPinned(this.chunks.pageIdsOf(chunkIds)),
        isAt: (chunkId, address) => {
          const entry = this.chunks.get(chunkId);
          return entry !== undefined && entry.address.block === address.block && entry.address.offsetBytes === address.offsetBytes;
        },
        moveTo: (chunkId, address) => this.chunks.moveTo(chunkId, address),
      },
      () => this.commit(true),
    );
  }

  /** Opens (creating if missing or empty) an array in `dataDir`. */
  static async open(dataDir: string, logger: Logger, options: ArrayOptions = {}): Promise<{ array: FlashArray; created: boolean; recoveryMs: number }> {
    const started = process.hrtime.bigint();
    if (options.createIfMissing === false && !fs.existsSync(path.join(dataDir, 'meta', 'CURRENT'))) {
      throw StorageError.notFound(`no pstorage array in ${dataDir}: start one with "pstorage serve --data-dir ${dataDir}"`);
    }
    fs.mkdirSync(dataDir, { recursive: true });
    const meta = await LevelMetaStore.open(path.join(dataDir, 'meta'));
    try {
      const formatBytes = await meta.get('super', FORMAT_KEY);
      const created = formatBytes === undefined;
      const geometry = created ? geometryForCapacity(options.capacityBytes ?? DEFAULT_CAPACITY_BYTES, options.pageBytes, options.pagesPerEraseBlock) : parseFormat(formatBytes).geometry;
      const nand = await FileNand.open(path.join(dataDir, 'nand'), geometry, { create: created });
      const array = await FlashArray.assemble(dataDir, meta, nand, logger, options, created);
      return { array, created, recoveryMs: Number(process.hrtime.bigint() - started) / 1e6 };
    } catch (error) {
      await meta.close().catch(() => undefined);
      throw error;
    }
  }

  /** Builds an array over given devices (tests use memory NAND and a memory metadata store). */
  static async assemble(dataDir: string, meta: MetaStore, nand: NandDevice, logger: Logger, options: ArrayOptions, create: boolean): Promise<FlashArray> {
    if (create) {
      const format: FormatRecord = { formatVersion: FORMAT_VERSION, geometry: nand.geometry, createdAt: new Date().toISOString() };
      await meta.batch([{ type: 'put', sublevel: 'super', key: FORMAT_KEY, value: Buffer.from(JSON.stringify(format)) }], { sync: true });
    }
    const stateBytes = await meta.get('super', STATE_KEY);
    const state: StateRecord = stateBytes ? (JSON.parse(stateBytes.toString()) as StateRecord) : { nextChunkId: 1, nextSequence: 1, nextVolumeId: 1, counters: { hostBytesWritten: 0, nandBytesWrittenBefore: 0 } };
    // Blocks opened after the last commit took sequence numbers at or above the recorded one, and
    // their pages may still be on NAND. Each block is opened at most once between two commits (a
    // block is erased only after a synced commit), so skipping one block count of numbers means
    // a sequence number is never given to two uses of a block, and a page left over from an
    // uncommitted use can never pass for a page of the current one.
    const nextSequence = stateBytes ? state.nextSequence + nand.geometry.eraseBlockCount : state.nextSequence;
    const ftl = new Ftl(nand, { ...defaultFtlOptions(nand.geometry.eraseBlockCount), ...options.ftl }, logger.child({ component: 'ftl' }), nextSequence);
    const array = new FlashArray(dataDir, meta, nand, ftl, logger, state, options.cacheBytes ?? DEFAULT_CACHE_BYTES, options);
    await array.dedup?.bloom.load(meta);
    const summaries: Array<[number, ReturnType<typeof decodeSummary>]> = [];
    for await (const [key, value] of meta.iterate('erase-blocks')) summaries.push([decodeU32Key(key), decodeSummary(value)]);
    await ftl.recover(summaries);
    await array.chunks.open();
    const layers = await meta.get('super', LAYERS_KEY);
    if (layers !== undefined) for (const [id, parent] of JSON.parse(layers.toString()) as Array<[number, number]>) array.layers.set(id, parent);
    for await (const [, value] of meta.iterate('volumes')) {
      const parsed = JSON.parse(value.toString()) as Partial<VolumeRecord> & { id: number };
      const record = { patternBlocks: 0, hostBytesWritten: 0, dedupHits: 0, topLayerId: parsed.id, ...parsed } as VolumeRecord;
      if (!array.layers.has(record.topLayerId)) array.layers.set(record.topLayerId, 0);
      array.volumes.set(record.name, new Volume(array, record));
    }
    for await (const [, value] of meta.iterate('snapshots')) {
      const record = JSON.parse(value.toString()) as SnapshotRecord;
      array.snapshots.set(record.id, record);
    }
    array.writebackTimer = setInterval(() => array.backgroundWriteback(), 5000);
    array.writebackTimer.unref();
    return array;
  }

  // ---- Volumes -------------------------------------------------------------------------------

  async createVolume(name: string, sizeBytes: number): Promise<Volume> {
    validateVolumeName(name);
    if (this.volumes.has(name)) throw StorageError.alreadyExists(`volume "${name}" already exists`);
    if (sizeBytes <= 0 || sizeBytes % 512 !== 0) throw StorageError.invalidArgument(`volume size ${sizeBytes} must be a positive multiple of 512 bytes`);
    return this.addVolume(name, sizeBytes, 0);
  }

  /** Adds a volume whose top layer sits on `parentLayerId` (0: an empty volume), and commits. */
  async addVolume(name: string, sizeBytes: number, parentLayerId: number, extra: Partial<VolumeRecord> = {}): Promise<Volume> {
    const id = this.allocateId();
    const topLayerId = this.allocateId();
    const record: VolumeRecord = { id, name, sizeBytes, createdAt: new Date().toISOString(), topLayerId, mappedBlocks: 0, patternBlocks: 0, hostBytesWritten: 0, dedupHits: 0, ...extra };
    this.layers.set(topLayerId, parentLayerId);
    const volume = new Volume(this, record);
    this.volumes.set(name, volume);
    volume.recordDirty = true;
    this.catalogDirty = true;
    await this.commit(true);
    return volume;
  }

  allocateId(): number {
    return this.nextVolumeId++;
  }

  /** Layer ids from `topLayerId` down to the root of its chain. */
  layerChain(topLayerId: number): number[] {
    const chain: number[] = [];
    for (let layer = topLayerId; layer !== 0 && chain.length < 100_000; layer = this.layers.get(layer) ?? 0) chain.push(layer);
    return chain;
  }

  /** Layers above `olderLayerId` up to and including `newerLayerId` (the writes in between). */
  layersBetween(olderLayerId: number, newerLayerId: number): number[] {
    const chain = this.layerChain(newerLayerId);
    const index = chain.indexOf(olderLayerId);
    if (index < 0) throw StorageError.invalidArgument('the older snapshot is not an ancestor of the newer one');
    return chain.slice(0, index);
  }

  /** Snapshots of the same volume taken before `snapshot` (ancestors of its layer). */
  olderSnapshots(snapshot: SnapshotRecord): SnapshotRecord[] {
    const chain = new Set(this.layerChain(snapshot.layerId).slice(1));
    return [...this.snapshots.values()].filter((other) => other.volumeId === snapshot.volumeId && chain.has(other.layerId));
  }

  /**
   * Map page indexes in `firstPage..lastPage` that some layer of `layerIds` holds: in LevelDB
   * (a range scan, cheap when there are none) or only in the cache so far.
   */
  async existingMapPages(layerIds: readonly number[], firstPage: number, lastPage: number): Promise<Set<number>> {
    const found = new Set<number>();
    for (const layerId of layerIds) {
      const range = { gte: volumeMapKey(layerId, firstPage), lt: volumeMapKey(layerId, lastPage + 1) };
      for await (const [key] of this.meta.iterate('map', range)) found.add(decodeVolumeMapKey(key).mapPageIndex);
      for (let pageIndex = firstPage; pageIndex <= lastPage; pageIndex++) {
        if ((this.mapCache.peek(mapCacheId(layerId, pageIndex))?.version ?? 0) > 0) found.add(pageIndex);
      }
    }
    return found;
  }

  volumeById(id: number): Volume | undefined {
    for (const volume of this.volumes.values()) if (volume.record.id === id) return volume;
    return undefined;
  }

  /** The read-only view of a snapshot, created on first use. */
  snapshotView(snapshot: SnapshotRecord): Volume {
    let view = this.snapshotViews.get(snapshot.id);
    if (view === undefined) {
      view = new Volume(this, this.volumeById(snapshot.volumeId)!.record, snapshot);
      this.snapshotViews.set(snapshot.id, view);
    }
    return view;
  }

  forgetSnapshot(snapshot: SnapshotRecord): void {
    this.snapshots.delete(snapshot.id);
    this.snapshotViews.delete(snapshot.id);
    this.deletedSnapshots.add(snapshot.id);
    this.catalogDirty = true;
  }

  forgetVolume(volume: Volume): void {
    this.volumes.delete(volume.record.name);
    this.deletedVolumes.add(volume.record.id);
    this.catalogDirty = true;
  }

  list(): Array<{ name: string; description: string }> {
    const volumes = [...this.volumes.values()].map((volume) => ({ name: volume.record.name, description: volume.description }));
    const snapshots = [...this.snapshots.values()].map((snapshot) => {
      const view = this.snapshotView(snapshot);
      return { name: view.name, description: view.description };
    });
    return [...volumes, ...snapshots];
  }

  lookup(name: string): ExportEntry | undefined {
    const wanted = name === '' ? DEFAULT_VOLUME_NAME : name;
    const at = wanted.indexOf('@');
    if (at >= 0) {
      const volume = this.volumes.get(wanted.slice(0, at));
      const snapshot = [...this.snapshots.values()].find((candidate) => candidate.volumeId === volume?.record.id && candidate.name === wanted.slice(at + 1));
      if (snapshot === undefined) return undefined;
      const view = this.snapshotView(snapshot);
      return { name: view.name, description: view.description, device: view };
    }
    const volume = this.volumes.get(wanted);
    if (volume === undefined) return undefined;
    return { name: volume.record.name, description: volume.description, device: volume };
  }

  // ---- Chunks -------------------------------------------------------------------------------

  /** Reads one chunk's logical content (loads its chunk-table page if needed). */
  async readChunk(chunkId: number): Promise<Buffer> {
    for (let attempt = 0; attempt < 100; attempt++) {
      await this.chunks.load([chunkId]);
      if (!this.chunks.isLoaded(chunkId)) continue;
      const entry = this.chunks.get(chunkId);
      if (entry === undefined) throw StorageError.notFound(`chunk ${chunkId} is free`);
      const [payload] = await this.ftl.readRecords([{ address: entry.address, chunkId, storedBytes: entry.storedBytes }]);
      return decompressBlock(payload!, entry.codec, 4096);
    }
    throw StorageError.io(`chunk ${chunkId} could not be loaded (cache thrashing): raise --cache-mb`);
  }

  /** Drops one map reference to a chunk; the last one frees it (NAND space, dedup entry). */
  releaseChunk(chunkId: number): void {
    const freed = this.chunks.decref(chunkId);
    if (freed === undefined) return;
    this.ftl.invalidate(freed.address, freed.storedBytes);
    this.reduction.onChunkFreed(freed.storedBytes);
    if (freed.fingerprint !== null) this.dedup?.remove(freed.fingerprint, chunkId);
  }

  // ---- Commit --------------------------------------------------------------------------------

  /**
   * Group commit: at most one commit runs; callers arriving meanwhile share the next one, which
   * starts when the running one ends (their writes may have missed its capture).
   */
  commit(sync: boolean): Promise<void> {
    if (this.commitRunning === null) {
      const running = this.doCommit(sync).finally(() => {
        if (this.commitRunning === running) this.commitRunning = null;
      });
      this.commitRunning = running;
      return running;
    }
    this.queuedSync ||= sync;
    if (this.commitQueued === null) {
      this.commitQueued = this.commitRunning
        .catch(() => undefined)
        .then(() => {
          const queuedSync = this.queuedSync;
          this.queuedSync = false;
          this.commitQueued = null;
          return this.commit(queuedSync);
        });
    }
    return this.commitQueued;
  }

  private async doCommit(sync: boolean): Promise<void> {
    let previous: ReturnType<FlashArray['captureMetadata']> | null = null;
    const captured = await this.ftl.makeDurable((generation) => {
      if (previous !== null) this.settleCapture(previous, false);
      previous = this.captureMetadata(generation);
      return previous;
    });
    let ok = false;
    const started = process.hrtime.bigint();
    try {
      await this.meta.batch(captured.ops, { sync });
      ok = true;
    } finally {
      this.settleCapture(captured, ok);
    }
    this.commits += 1;
    this.logger.debug('commit', { ops: captured.ops.length, batchMs: Number(process.hrtime.bigint() - started) / 1e6, sync });
    if (sync) await this.ftl.releaseAfterCommit(captured.generation);
  }

  private captureMetadata(generation: number) {
    const ops: MetaOp[] = [];
    const mapPages = this.mapCache.capture(ops);
    const chunkPages = this.chunks.capture(ops);
    this.dedup?.capture(ops, this.closed);
    const summaries = this.ftl.captureSummaries();
    for (const [block, value] of summaries) ops.push({ type: 'put', sublevel: 'erase-blocks', key: u32Key(block), value });
    const volumes = [...this.volumes.values()].filter((volume) => volume.recordDirty || this.catalogDirty);
    for (const volume of volumes) {
      volume.recordDirty = false;
      ops.push({ type: 'put', sublevel: 'volumes', key: u32Key(volume.record.id), value: Buffer.from(JSON.stringify(volume.record)) });
    }
    const catalog = this.catalogDirty;
    if (catalog) {
      this.catalogDirty = false;
      // Deleted ids stay listed until a batch holding their deletion has been written.
      for (const id of this.deletedVolumes) ops.push({ type: 'del', sublevel: 'volumes', key: u32Key(id) });
      for (const id of this.deletedSnapshots) ops.push({ type: 'del', sublevel: 'snapshots', key: u32Key(id) });
      for (const snapshot of this.snapshots.values()) ops.push({ type: 'put', sublevel: 'snapshots', key: u32Key(snapshot.id), value: Buffer.from(JSON.stringify(snapshot)) });
      ops.push({ type: 'put', sublevel: 'super', key: LAYERS_KEY, value: Buffer.from(JSON.stringify([...this.layers])) });
    }
    const { dedupHits, liveChunks, liveStoredBytes } = this.reduction;
    const state: StateRecord = {
      nextChunkId: this.chunks.nextChunkId,
      nextSequence: this.ftl.sequence,
      nextVolumeId: this.nextVolumeId,
      counters: this.persistentCounters(),
      reduction: { dedupHits, liveChunks, liveStoredBytes },
    };
    ops.push({ type: 'put', sublevel: 'super', key: STATE_KEY, value: Buffer.from(JSON.stringify(state)) });
    const deleted = { volumes: [...this.deletedVolumes], snapshots: [...this.deletedSnapshots] };
    return { ops, mapPages, chunkPages, summaries, volumes, catalog, deleted, generation };
  }

  private settleCapture(captured: ReturnType<FlashArray['captureMetadata']>, ok: boolean): void {
    this.mapCache.settle(captured.mapPages, ok);
    this.chunks.cache.settle(captured.chunkPages, ok);
    if (!ok) {
      for (const [block] of captured.summaries) this.ftl.table.dirty.add(block);
      for (const volume of captured.volumes) volume.recordDirty = true;
      if (captured.catalog) this.catalogDirty = true;
    } else {
      for (const id of captured.deleted.volumes) this.deletedVolumes.delete(id);
      for (const id of captured.deleted.snapshots) this.deletedSnapshots.delete(id);
    }
  }

  private persistentCounters(): ArrayCounters {
    return { hostBytesWritten: this.counters.hostBytesWritten, nandBytesWrittenBefore: this.nandBytesWritten };
  }

  get nandBytesWritten(): number {
    return this.counters.nandBytesWrittenBefore + this.ftl.counters.nandBytesProgrammed;
  }

  /** Keeps dirty metadata bounded for clients that never flush (unsynced batches are enough). */
  maybeWriteback(): void {
    if (this.closed) return;
    const dirty = this.mapCache.dirtyBytes + this.chunks.cache.dirtyBytes;
    const pageBudget = DIRTY_WRITEBACK_SHARE * (this.mapCache.budget + this.chunks.cache.budget);
    const indexWrites = this.dedup?.pendingWrites ?? 0;
    if ((dirty > pageBudget || indexWrites > DEDUP_WRITEBACK_ENTRIES) && this.commitRunning === null) {
      void this.commit(true).catch((error: unknown) => this.logger.error('background write-back failed', { error: (error as Error).message }));
    }
  }

  private backgroundWriteback(): void {
    if (this.closed || this.commitRunning !== null) return;
    if (this.mapCache.dirtyCount + this.chunks.cache.dirtyCount === 0 && this.ftl.table.dirty.size === 0) return;
    void this.commit(true).catch((error: unknown) => this.logger.error('background write-back failed', { error: (error as Error).message }));
  }

  // ---- Stats and shutdown --------------------------------------------------------------------

  /**
   * The `pstorage stats` document. Top-level keys are documented in the README; `physicalBytes`
   * is NAND bytes holding live data (record headers included, page headers and padding not).
   */
  stats(): Record<string, unknown> {
    const volumes = [...this.volumes.values()].map((volume) => volume.record);
    const sum = (pick: (record: VolumeRecord) => number) => volumes.reduce((total, record) => total + pick(record), 0);
    const mappedBlocks = sum((record) => record.mappedBlocks);
    const patternBlocks = sum((record) => record.patternBlocks);
    const provisionedBytes = sum((record) => record.sizeBytes);
    const logicalBytes = mappedBlocks * 4096;
    const physicalBytes = this.ftl.liveBytes;
    const capacityBytes = this.ftl.usableBytes;
    const { liveChunks, liveStoredBytes, dedupHits } = this.reduction;
    const chunkReferences = mappedBlocks - patternBlocks;
    return {
      logicalBytes,
      physicalBytes,
      hostBytesWritten: this.counters.hostBytesWritten,
      nandBytesWritten: this.nandBytesWritten,
      writeAmplification: this.counters.hostBytesWritten > 0 ? round(this.nandBytesWritten / this.counters.hostBytesWritten, 3) : 0,
      capacityBytes,
      freeBytes: Math.max(0, capacityBytes - physicalBytes),
      provisionedBytes,
      overCommitRatio: round(provisionedBytes / Math.max(1, capacityBytes), 3),
      dataReductionRatio: physicalBytes > 0 ? round(logicalBytes / physicalBytes, 3) : 0,
      reduction: {
        compression: this.compression,
        dedup: this.dedup !== null,
        patternBlocks,
        patternBytesSaved: patternBlocks * 4096,
        dedupHits,
        dedupBytesSaved: Math.max(0, chunkReferences - liveChunks) * 4096,
        liveChunks,
        compressionRatio: liveStoredBytes > 0 ? round((liveChunks * 4096) / liveStoredBytes, 3) : 0,
        compressionBytesSaved: liveChunks * 4096 - liveStoredBytes,
        thinProvisioningBytesSaved: Math.max(0, provisionedBytes - logicalBytes),
      },
      volumes: volumes.map((record) => ({
        name: record.name,
        sizeBytes: record.sizeBytes,
        logicalBytes: record.mappedBlocks * 4096,
        hostBytesWritten: record.hostBytesWritten,
        patternBlocks: record.patternBlocks,
        dedupHits: record.dedupHits,
      })),
      flash: this.ftl.stats(),
      cache: { mapBytes: this.mapCache.cachedBytes, chunkBytes: this.chunks.cache.cachedBytes, dedupEntries: this.dedup?.size ?? 0, dirtyBytes: this.mapCache.dirtyBytes + this.chunks.cache.dirtyBytes },
    };
  }

  async flush(): Promise<void> {
    await this.commit(true);
  }

  /** A simulated crash: stop background work at once (the caller abandons the devices). */
  abandon(): void {
    this.closed = true;
    if (this.writebackTimer) clearInterval(this.writebackTimer);
    void this.reducer?.close();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.writebackTimer) clearInterval(this.writebackTimer);
    await this.commit(true);
    await this.reducer?.close();
    await this.nand.close();
    await this.meta.close();
  }
}

function capacityOf(nand: NandDevice): number {
  const { pageBytes, pagesPerEraseBlock, eraseBlockCount } = nand.geometry;
  return pageBytes * pagesPerEraseBlock * eraseBlockCount;
}

function parseFormat(bytes: Buffer): FormatRecord {
  const format = JSON.parse(bytes.toString()) as FormatRecord;
  if (format.formatVersion !== FORMAT_VERSION) {
    throw StorageError.corrupt(`this data directory has format version ${format.formatVersion}; this pstorage reads version ${FORMAT_VERSION}`);
  }
  return format;
}

function mapKeyOfCacheId(id: number): Buffer {
  return volumeMapKey(Math.floor(id / 0x100000000), id % 0x100000000);
}

export { mapCacheId };

export function validateVolumeName(name: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(name)) {
    throw StorageError.invalidArgument(`invalid volume name "${name}": use 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit (no "/" or "@")`);
  }
}

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}
