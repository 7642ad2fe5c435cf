/**
 * The flash array: one data directory holding the NAND image and the LevelDB metadata, the FTL
 * over them, the paged chunk table and volume maps, the metadata journal, and the volumes exported
 * over NBD.
 *
 * Data directory: `meta/` (LevelDB), `nand/` (nand.img sparse image + nand.oob spare area),
 * `catalog.json` (a copy of the format record and the volume catalog for `pstorage inspect repair`,
 * see catalog-copy.ts).
 * Superblock (LevelDB 'super' sublevel): `format` (format version, NAND geometry, fingerprint key,
 * creation time; written once) and `state` (next chunk id, next erase-block sequence, next volume
 * id, the journal's trim point and next seq, counters; rewritten in every commit). Volumes
 * ('volumes', key u32 id): JSON records.
 *
 * Commit point (`commit`): the FTL makes appended records durable and, in the same tick as it
 * issues the last programs, we capture the journal entries made since the last commit (one value,
 * meta/journal.ts), the changed erase-block summary pages, the volume and catalog records, the
 * superblock state, and the map and chunk pages chosen for write-back; then one LevelDB batch
 * writes them with `sync: true`. Concurrent flushes share commits (group commit). Clients that
 * never flush still get a commit every `COMMIT_INTERVAL_MS` or every `JOURNAL_COMMIT_BYTES` of
 * journal, so acknowledged data is never far from durable and nothing grows without bound.
 *
 * Write-back (VDO's block-map eras, in our terms): a commit writes back the dirty pages whose
 * first unwritten change is older than what the journal may hold (`JOURNAL_BACKLOG_BYTES`), and
 * the oldest dirty pages beyond `DIRTY_PAGE_SHARE` of each cache; at most `WRITEBACK_PAGES` per
 * commit, so no commit stalls the event loop for long. The journal values every written page
 * covers are deleted in the same batch. `checkpoint()` writes everything back (close, audit,
 * snapshot operations that scan LevelDB).
 *
 * Crash: reopening reads the superblock, the volume records and the erase-block summary pages,
 * then replays the journal values kept since the trim point (bounded by the backlog, so recovery
 * time does not grow with the data stored), and the FTL reclaims blocks touched after the last
 * commit. Everything the last synced batch references is on NAND, because NAND was synced first.
 *
 * A failed commit changes nothing durable and loses nothing in memory: whatever it captured (journal
 * values, pages, summaries, records) is captured again by the next one, whether the NAND side or
 * the batch failed. When a write fails for want of space on the host file system, `hostSpace`
 * (host-space.ts) takes over: new data is refused until space returns, and the array recovers by
 * itself.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { assert } from '../common/assert.js';
import { BufferSlab } from '../common/buffer-slab.js';
import { StorageError, isHostFull } from '../common/errors.js';
import { COMMIT_BUCKETS_SECONDS, LatencyHistogram } from '../common/latency-histogram.js';
import type { Logger } from '../common/log.js';
import { nextTurn } from '../common/turns.js';
import type { ExportCatalog, ExportEntry } from '../common/block-device.js';
import { decodeSummaryPage } from '../ftl/erase-block-table.js';
import { Ftl, defaultFtlOptions, type FtlOptions } from '../ftl/ftl.js';
import { MetaJournal, decodeJournalValue } from '../meta/journal.js';
import { decodeU32Key, decodeU64Key, decodeVolumeMapKey, u32Key, u64Key, volumeMapKey } from '../meta/keys.js';
import { LevelMetaStore } from '../meta/level-store.js';
import type { MetaOp, MetaStore } from '../meta/meta-store.js';
import { FileNand, SPARE_FILE_NAME } from '../nand/file-nand.js';
import { geometryForCapacity, type NandDevice } from '../nand/nand-device.js';
import { GiB, MiB } from '../common/size.js';
import { planMemory, type MemoryPlan } from '../common/memory-budget.js';
import { BloomFilter } from '../reduce/bloom-filter.js';
import { codecFor, type Codec, type CompressionName } from '../reduce/codec.js';
import { DedupIndex } from '../reduce/dedup-index.js';
import { FINGERPRINT_BYTES, keyedFingerprint, newFingerprintKey, type FingerprintFunction } from '../reduce/fingerprint.js';
import type { ReduceSettings } from '../reduce/reduce-block.js';
import { ReductionPool } from '../reduce/reduction-pool.js';
import { writeCatalogCopy, type FormatRecord } from './catalog-copy.js';
import { checkKeyAgainstCopy, newEncryption, unlockArray } from './array-key.js';
import { CHUNKS_PER_PAGE, ChunkTable, pageOf } from './chunk-table.js';
import { DEFAULT_WORKER_MIN_BLOCKS, IoScheduler } from './io-scheduler.js';
import type { EntryKind } from './map-page.js';
import { MapTable, mapCacheId } from './map-table.js';
import type { CapturedPage } from './page-cache.js';
import { HostSpace, type HostSpaceOptions } from './host-space.js';
import { Volume, type Missing, type SnapshotRecord, type VolumeRecord } from './volume.js';
import { CoarseClock, WriteAges } from './write-age.js';

export const FORMAT_VERSION = 2;
export const DEFAULT_CAPACITY_BYTES = 8 * GiB;
export const DEFAULT_CACHE_BYTES = 256 * MiB;
export const DEFAULT_VOLUME_NAME = 'default';
export const DEFAULT_VOLUME_BYTES = 16 * GiB;
export const FORMAT_KEY = Buffer.from('format');
export const STATE_KEY = Buffer.from('state');
export const LAYERS_KEY = Buffer.from('layers');
export const DEFAULT_METADATA_POLICY: MetadataPolicy = {
  /** A background commit at least this often while anything is uncommitted... */
  commitIntervalMs: 1000,
  /** ...and as soon as this many journal bytes wait. */
  journalCommitBytes: 4 * MiB,
  /**
   * ...or this many, at the pauses of a long TRIM or WRITE_ZEROES (see `Volume.unmapRange`): a
   * commit copies its journal in one turn, and at 4 MiB a copy into fresh memory took 15-22 ms.
   * (Writes keep 4 MiB: at 1 MiB, 128 KiB sequential writes committed twice as often and measured
   * ~10 % slower.)
   */
  unmapCommitJournalBytes: 1 * MiB,
  /** Journal bytes kept for replay: pages whose first change is older get written back. */
  journalBacklogBytes: 64 * MiB,
  /** Dirty pages beyond this share of a cache's budget get written back, oldest first. */
  dirtyPageShare: 0.25,
  /** At most this many pages per commit (a few ms of capture; 5 MiB or so). */
  writebackPages: 512,
};
/** ...or when this many dedup-index entries wait to be written (each is one LevelDB put). */
const DEDUP_WRITEBACK_ENTRIES = 8192;
/** A checkpoint writes dedup entries in batches of at most this many (about 5 MB of heap each)... */
const CHECKPOINT_SLICE_ENTRIES = 16384;
/** ...and Bloom filter segments at most this many (2 MiB) at a time... */
const CHECKPOINT_SLICE_SEGMENTS = 32;
/** ...walking at most this many slots of the dedup table in one turn (about 2 ms). */
const CHECKPOINT_SLICE_SLOTS = 256 * 1024;
/** ...and dirty pages through at most this many commits before its own (writes may go on meanwhile). */
const CHECKPOINT_MAX_ROUNDS = 1000;

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
  /** Tests inject a weak (even colliding) function; every match is verified byte for byte anyway. */
  fingerprint?: FingerprintFunction;
  /** Worker threads for reduction (default 1: the second core); 0 = on the main thread only. */
  reductionWorkers?: number;
  /** Write batches with fewer whole blocks than this are reduced on the main thread. */
  workerMinBlocks?: number;
  /** Metadata write-back tuning (tests shrink these to exercise trims and replay). */
  metadata?: Partial<MetadataPolicy>;
  /** The host file system's space and the metadata reserve (tests inject the space). */
  hostSpace?: HostSpaceOptions;
  /** Wall clock of the write ages (write-age.ts); tests inject one. Default Date.now. */
  nowMs?: () => number;
  /**
   * The bytes of the operator's key file (array-key.ts): creating an array with it makes the array
   * encrypted; an encrypted array opens only with it; a plain one refuses it.
   */
  keyFileBytes?: Buffer;
}

/** When commits happen and which pages they write back (see the design note). */
export interface MetadataPolicy {
  commitIntervalMs: number;
  journalCommitBytes: number;
  unmapCommitJournalBytes: number;
  journalBacklogBytes: number;
  dirtyPageShare: number;
  writebackPages: number;
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


export interface ArrayCounters {
  hostBytesWritten: number;
  nandBytesWrittenBefore: number;
}

export interface StateRecord {
  nextChunkId: number;
  nextSequence: number;
  nextVolumeId: number;
  /** Journal values from this seq on are needed for replay... */
  journalTrimSeq: number;
  /** ...and the next value goes under this seq. */
  journalNextSeq: number;
  counters: ArrayCounters;
  reduction?: { dedupHits: number; liveChunks: number; liveStoredBytes: number };
}

interface Capture {
  ops: MetaOp[];
  journal: Array<{ seq: number; value: Buffer }>;
  /** Journal pieces written before the commit's batch, each in a batch of its own (see `doCommit`). */
  journalAhead: MetaOp[];
  mapPages: Array<CapturedPage<import('./map-page.js').MapPage>>;
  chunkPages: Array<CapturedPage<import('./chunk-table.js').ChunkPage>>;
  summaryPages: number[];
  volumes: Volume[];
  catalog: boolean;
  deleted: { volumes: number[]; snapshots: number[] };
  trimSeq: number;
  generation: number;
}

/** One cache's figures (`FlashArray.cacheStats`); `dirtyBytes` is null for a cache that holds no changes. */
export interface CacheStats {
  cache: string;
  hits: number;
  misses: number;
  bytes: number;
  dirtyBytes: number | null;
}

export class FlashArray implements ExportCatalog {
  readonly volumes = new Map<string, Volume>();
  /** Snapshots by id, and their read-only views (exported as `volume@snapshot`). */
  readonly snapshots = new Map<number, SnapshotRecord>();
  private readonly snapshotViews = new Map<number, Volume>();
  /** Every map layer: id → parent layer id (0 for none). Volumes and snapshots point into it. */
  readonly layers = new LayerMap();
  /** Volume, snapshot and layer records changed since the last commit captured them. */
  catalogDirty = false;
  /** Metadata commits so far that succeeded (each one LevelDB batch). */
  commits = 0;
  /**
   * Duration of every commit since the open, successful or not: from the start of the NAND side
   * to the batch's end (the erases that may follow are GC's). One bucket increment per commit.
   */
  readonly commitDurations = new LatencyHistogram(COMMIT_BUCKETS_SECONDS);
  /** Commits that failed (they count in `commitDurations` too). */
  commitFailures = 0;
  private readonly deletedSnapshots = new Set<number>();
  private readonly deletedVolumes = new Set<number>();
  readonly journal: MetaJournal;
  readonly maps: MapTable;
  readonly chunks: ChunkTable;
  readonly counters: ArrayCounters;
  readonly reduction = new ReductionCounters();
  readonly dedup: DedupIndex | null;
  readonly codec: Codec;
  readonly compression: CompressionName;
  readonly fingerprint: FingerprintFunction;
  readonly reduceSettings: ReduceSettings;
  /** Off-thread reduction; null when reduction runs inline only. */
  readonly reducer: ReductionPool | null;
  readonly scheduler: IoScheduler;
  /** The host file system: its space, the metadata reserve, and the state when it fills up. */
  readonly hostSpace: HostSpace;
  /** Buffers of read replies. */
  readonly slab = new BufferSlab();
  /** Recovery figures of the last open. */
  readonly recovery = { journalValues: 0, journalBytes: 0, replayMs: 0 };
  /** The minute clock of the write ages, refreshed once per second (write-age.ts). */
  readonly clock: CoarseClock;
  /** Per volume id: when each 4 MiB extent was last written (for analytics). */
  readonly writeAges = new Map<number, WriteAges>();
  private nextVolumeId: number;
  /** Journal values written and not yet trimmed: seq → bytes (for the backlog). */
  private readonly journalKept = new Map<number, number>();
  private journalKeptBytes = 0;
  private journalTrimSeq: number;
  /** Journal values whose batch failed, to be written again by the next commit. */
  private journalRetry: Array<{ seq: number; value: Buffer }> = [];
  private commitRunning: Promise<void> | null = null;
  private commitQueued: Promise<void> | null = null;
  private queuedSync = false;
  private queuedCheckpoint = false;
  private queuedDrain = false;
  private commitTimer: NodeJS.Timeout | null = null;
  private closed = false;
  /** The Bloom filter's rebuild, while it runs (see `rebuildBloom`). */
  private bloomRebuild: Promise<void> | null = null;
  readonly policy: MetadataPolicy;
  /** Where the catalog copy lives (catalog-copy.ts): set by `open`, null for arrays assembled in memory. */
  catalogCopyDir: string | null = null;
  /** How the memory budget is shared out (common/memory-budget.ts). */
  readonly memory: MemoryPlan;

  private constructor(
    readonly dataDir: string,
    readonly meta: MetaStore,
    readonly nand: NandDevice,
    readonly ftl: Ftl,
    readonly logger: Logger,
    state: StateRecord,
    readonly format: FormatRecord,
    cacheBytes: number,
    options: ArrayOptions,
    /** The fingerprint key: the format record's, or derived from an encrypted array's DEK. */
    key: bigint,
  ) {
    assert(os.endianness() === 'LE', 'pstorage stores typed-array pages in little-endian order and needs a little-endian host');
    this.policy = { ...DEFAULT_METADATA_POLICY, ...options.metadata };
    this.clock = new CoarseClock(options.nowMs);
    this.clock.start();
    this.counters = { ...state.counters };
    Object.assign(this.reduction, state.reduction ?? {});
    this.nextVolumeId = state.nextVolumeId;
    this.journalTrimSeq = state.journalTrimSeq;
    this.journal = new MetaJournal(state.journalNextSeq);
    this.compression = options.compression ?? 'lz4';
    this.codec = codecFor(this.compression);
    this.fingerprint = options.fingerprint ?? keyedFingerprint(key);
    // The memory budget, shared out in one place (see common/memory-budget.ts).
    this.memory = planMemory({ cacheBytes, capacityBytes: capacityOf(nand), onDisk: nand instanceof FileNand, dedup: options.dedup !== false });
    this.chunks = new ChunkTable(meta, this.memory.chunkPageBytes, state.nextChunkId, this.journal);
    this.maps = new MapTable(meta, this.memory.mapPageBytes, this.journal);
    this.dedup = options.dedup === false ? null : new DedupIndex(meta, new BloomFilter(this.memory.bloomFilterBytes), this.memory.dedupIndexBytes);
    this.reduceSettings = { codec: this.codec, fingerprint: this.dedup === null ? null : this.fingerprint, recordSeed: key };
    const workers = options.reductionWorkers ?? 1;
    // Only the built-in keyed fingerprint runs in workers; an injected function stays on this thread.
    this.reducer = workers > 0 && options.fingerprint === undefined ? new ReductionPool(workers, this.codec, this.dedup === null ? null : key, key) : null;
    this.scheduler = new IoScheduler(this, { workerMinBlocks: options.workerMinBlocks ?? DEFAULT_WORKER_MIN_BLOCKS });
    this.hostSpace = new HostSpace(this, logger.child({ component: 'host-space' }), options.hostSpace);
    ftl.onNoSpace((error) => this.hostSpace.noteNoSpace(error));
    ftl.attach(
      {
        pin: (chunkIds) => this.chunks.cache.loadPinned(this.chunks.pageIdsOf(chunkIds)),
        isAt: (chunkId, address) => {
          const page = this.chunks.pageOf(chunkId);
          const slot = chunkId % 256;
          return page !== undefined && page.refcount[slot]! > 0 && page.block[slot] === address.block && page.offset[slot] === address.offsetBytes;
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
    // The key is checked against the catalog copy before LevelDB opens (which writes its log):
    // a missing or wrong key stops here and the data directory is left exactly as it was.
    if (fs.existsSync(path.join(dataDir, 'meta', 'CURRENT'))) checkKeyAgainstCopy(dataDir, options.keyFileBytes);
    fs.mkdirSync(dataDir, { recursive: true });
    // LevelDB's and the mapping's shares do not depend on the capacity (the Bloom filter's does).
    const plan = planMemory({ cacheBytes: options.cacheBytes ?? DEFAULT_CACHE_BYTES, capacityBytes: 0, onDisk: true, dedup: options.dedup !== false });
    const meta = await LevelMetaStore.open(path.join(dataDir, 'meta'), { writeBufferBytes: plan.levelWriteBufferBytes, cacheBytes: plan.levelCacheBytes });
    try {
      const formatBytes = await meta.get('super', FORMAT_KEY);
      const created = formatBytes === undefined;
      const geometry = created ? geometryForCapacity(options.capacityBytes ?? DEFAULT_CAPACITY_BYTES, options.pageBytes, options.pagesPerEraseBlock) : parseFormat(formatBytes).geometry;
      // Mapped NAND pages count in the resident set: keep them to their share of the budget.
      // An image already there when the metadata has no format record: a creation that was cut
      // short (the image is blank, and keeps its geometry), or metadata that lost its record.
      const existing = created && fs.existsSync(path.join(dataDir, 'nand', SPARE_FILE_NAME));
      const nand = await FileNand.open(path.join(dataDir, 'nand'), existing ? undefined : geometry, { create: created, mappedLimitBytes: plan.mappedReadBytes });
      if (existing && !isBlank(nand)) {
        await nand.close();
        // Creating an array here would give it a new secret and erase every block it thinks free.
        throw StorageError.corrupt(`the metadata in ${path.join(dataDir, 'meta')} has no format record, but the NAND image in ${path.join(dataDir, 'nand')} holds data`);
      }
      const array = await FlashArray.assemble(dataDir, meta, nand, logger, options, created);
      array.catalogCopyDir = dataDir;
      array.writeCatalogCopy();
      return { array, created, recoveryMs: Number(process.hrtime.bigint() - started) / 1e6 };
    } catch (error) {
      await meta.close().catch(() => undefined);
      throw withRepairHint(error, dataDir);
    }
  }

  /** Builds an array over given devices (tests use memory NAND and a memory metadata store). */
  static async assemble(dataDir: string, meta: MetaStore, nand: NandDevice, logger: Logger, options: ArrayOptions, create: boolean): Promise<FlashArray> {
    if (create) {
      const encryption = options.keyFileBytes === undefined ? undefined : newEncryption(options.keyFileBytes).record;
      const format: FormatRecord = {
        formatVersion: FORMAT_VERSION,
        geometry: nand.geometry,
        createdAt: new Date().toISOString(),
        // An encrypted array's fingerprint key is derived from its DEK, never stored (array-key.ts).
        fingerprintKey: encryption === undefined ? newFingerprintKey().toString(16).padStart(16, '0') : '',
        ...(encryption === undefined ? {} : { encryption }),
      };
      await meta.batch([{ type: 'put', sublevel: 'super', key: FORMAT_KEY, value: Buffer.from(JSON.stringify(format)) }], { sync: true });
    }
    const format = parseFormat((await meta.get('super', FORMAT_KEY))!);
    const stateBytes = await meta.get('super', STATE_KEY);
    const state: StateRecord = stateBytes
      ? (JSON.parse(stateBytes.toString()) as StateRecord)
      : { nextChunkId: 1, nextSequence: 1, nextVolumeId: 1, journalTrimSeq: 1, journalNextSeq: 1, counters: { hostBytesWritten: 0, nandBytesWrittenBefore: 0 } };
    // Blocks opened after the last commit took sequence numbers at or above the recorded one, and
    // their pages may still be on NAND. Each block is opened at most once between two commits (a
    // block is erased only after a synced commit), so skipping one block count of numbers means
    // a sequence number is never given to two uses of a block, and a page left over from an
    // uncommitted use can never pass for a page of the current one.
    const nextSequence = stateBytes ? state.nextSequence + nand.geometry.eraseBlockCount : state.nextSequence;
    const keys = unlockArray(format, options.keyFileBytes, dataDir);
    const ftl = new Ftl(nand, { ...defaultFtlOptions(nand.geometry.eraseBlockCount), ...options.ftl }, logger.child({ component: 'ftl' }), nextSequence, keys.recordSeed, keys.cipher);
    const array = new FlashArray(dataDir, meta, nand, ftl, logger, state, format, options.cacheBytes ?? DEFAULT_CACHE_BYTES, options, keys.fingerprintKey);
    let bloomTrusted = true;
    try {
      bloomTrusted = (await array.dedup?.bloom.load(meta)) ?? true;
      const summaries: Array<[number, ReturnType<typeof decodeSummaryPage>[number][1]]> = [];
      for await (const [key, value] of meta.iterate('erase-blocks')) summaries.push(...decodeSummaryPage(decodeU32Key(key), value));
      await ftl.recover(summaries);
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
      await array.replayJournal();
      await array.chunks.open();
      await array.hostSpace.start();
    } catch (error) {
      array.abandon();
      throw error;
    }
    array.commitTimer = setInterval(() => array.backgroundCommit(), array.policy.commitIntervalMs);
    array.commitTimer.unref();
    if (!bloomTrusted) array.rebuildBloom();
    return array;
  }

  /**
   * The Bloom filter as stored cannot be trusted (no clean close since, another size: see
   * reduce/bloom-filter.ts): it answers "maybe" while it is rebuilt from the index in LevelDB, in
   * the background. A failure leaves it so until the next open.
   */
  private rebuildBloom(): void {
    const started = performance.now();
    this.bloomRebuild = this.dedup!.bloom.rebuild(this.meta, () => this.closed).then(
      (done) => {
        if (done) this.logger.debug('Bloom filter rebuilt from the dedup index', { ms: Math.round(performance.now() - started) });
      },
      (error: unknown) => {
        if (!this.closed) this.logger.warn('the Bloom filter could not be rebuilt: new data is looked up in the dedup index until the next start', { error: String(error) });
      },
    );
  }

  /**
   * Applies the journal values kept since the trim point to the pages (meta/journal.ts): each
   * value's pages are loaded in one go, its entries applied in order, and the pages left dirty
   * with that value's seq, to be written back by later commits.
   */
  private async replayJournal(): Promise<void> {
    const started = process.hrtime.bigint();
    // Values at or past the committed next seq are pieces written ahead of a commit that never
    // landed (see `doCommit`): not part of the committed state, and rewritten when the seq comes again.
    for await (const [key, value] of this.meta.iterate('journal', { gte: u64Key(this.journalTrimSeq), lt: u64Key(this.journal.seq) })) {
      const seq = decodeU64Key(key);
      const where = `journal value ${seq}`;
      const mapIds = new Set<number>();
      const chunkPageIds = new Set<number>();
      // Neighbouring entries mostly name the same page (a value holds whole requests): a Set
      // insertion per entry was a large part of replay.
      let lastMapId = -1;
      let lastChunkPage = -1;
      const chunkPage = (chunkId: number) => {
        const page = pageOf(chunkId);
        if (page !== lastChunkPage) chunkPageIds.add((lastChunkPage = page));
      };
      decodeJournalValue(value, {
        map: (layerId, lba) => {
          if (!this.layers.has(layerId)) return;
          const id = mapCacheId(layerId, Math.floor(lba / 1024));
          if (id !== lastMapId) mapIds.add((lastMapId = id));
        },
        chunkNew: chunkPage,
        chunkRefs: chunkPage,
        chunkMove: chunkPage,
      }, where);
      const unpinMaps = await this.maps.cache.loadPinned(mapIds);
      const unpinChunks = await this.chunks.cache.loadPinned(chunkPageIds);
      try {
        decodeJournalValue(value, {
          map: (layerId, lba, kind, high, low) => {
            // A layer dropped since (its pages were deleted in that commit) takes no entries.
            if (this.layers.has(layerId)) this.maps.replay(layerId, lba, kind as EntryKind, high, low, seq);
          },
          chunkNew: (chunkId, block, offsetBytes, storedBytes, codec, source, fingerprintAt, fingerprintBytes) => this.chunks.replayNew(chunkId, block, offsetBytes, storedBytes, codec as Codec, source, fingerprintAt, fingerprintBytes, seq),
          chunkRefs: (chunkId, refcount) => this.chunks.replayRefs(chunkId, refcount, seq),
          chunkMove: (chunkId, block, offsetBytes) => this.chunks.replayMove(chunkId, block, offsetBytes, seq),
        }, where);
      } finally {
        unpinMaps();
        unpinChunks();
      }
      this.recovery.journalValues += 1;
      this.recovery.journalBytes += value.length;
      this.noteJournalKept(seq, value.length);
      if (seq >= this.journal.seq) this.journal.skipTo(seq + 1);
    }
    this.recovery.replayMs = Number(process.hrtime.bigint() - started) / 1e6;
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

  /**
   * Layer ids from `topLayerId` down to the root of its chain, remembered until a layer changes:
   * every write and read asks for its volume's chain, and a fresh array each time was the largest
   * allocation of a 4 KiB write. The result is shared: callers must not change it.
   */
  layerChain(topLayerId: number): readonly number[] {
    if (this.chains.generation !== this.layers.generation) {
      this.chains.byTop.clear();
      this.chains.generation = this.layers.generation;
    }
    let chain = this.chains.byTop.get(topLayerId);
    if (chain === undefined) {
      chain = this.walkChain(topLayerId);
      this.chains.byTop.set(topLayerId, chain);
    }
    return chain;
  }

  private readonly chains = { generation: -1, byTop: new Map<number, readonly number[]>() };

  private walkChain(topLayerId: number): number[] {
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
        if ((this.maps.cache.peek(mapCacheId(layerId, pageIndex))?.version ?? 0) > 0) found.add(pageIndex);
      }
    }
    return found;
  }

  /** The write ages of volume `volumeId`, created empty on first use. */
  writeAgesOf(volumeId: number): WriteAges {
    let ages = this.writeAges.get(volumeId);
    if (ages === undefined) {
      ages = new WriteAges(this.clock);
      this.writeAges.set(volumeId, ages);
    }
    return ages;
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
    this.writeAges.delete(volume.record.id);
    this.volumes.delete(volume.record.name);
    this.deletedVolumes.add(volume.record.id);
    this.catalogDirty = true;
  }

  list(): Array<{ name: string; description: string; accessList?: readonly string[] }> {
    const volumes = [...this.volumes.values()].map((volume) => ({ name: volume.record.name, description: volume.description, accessList: volume.record.accessList }));
    const snapshots = [...this.snapshots.values()].map((snapshot) => {
      const view = this.snapshotView(snapshot);
      return { name: view.name, description: view.description, accessList: view.record.accessList };
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
      return { name: view.name, description: view.description, device: view, accessList: view.record.accessList };
    }
    const volume = this.volumes.get(wanted);
    if (volume === undefined) return undefined;
    return { name: volume.record.name, description: volume.description, device: volume, accessList: volume.record.accessList };
  }

  // ---- Chunks and pages ----------------------------------------------------------------------

  /** Drops one map reference to a chunk; the last one frees it (NAND space, dedup entry). */
  releaseChunk(chunkId: number): void {
    const page = this.chunks.pageOf(chunkId);
    const slot = chunkId % CHUNKS_PER_PAGE;
    // Not the last reference (or not live: decref fails, the page unloaded included).
    if (page === undefined || page.refcount[slot] !== 1) {
      this.chunks.decref(chunkId);
      return;
    }
    // The last one: read what the freed entry held before decref clears it (no entry object).
    const block = page.block[slot]!;
    const storedBytes = page.stored[slot]!;
    if (this.dedup !== null && page.fingerprintBytes[slot] !== 0) this.dedup.removeAt(page.fingerprints, slot * FINGERPRINT_BYTES, chunkId);
    this.chunks.decref(chunkId);
    this.ftl.invalidate(block, storedBytes);
    this.reduction.onChunkFreed(storedBytes);
  }

  /** Loads and pins what a plan found missing; returns the unpin function. */
  async loadMissing(missing: Missing): Promise<() => void> {
    const unpins: Array<() => void> = [];
    try {
      if (missing.mapIds.length > 0) unpins.push(await this.maps.cache.loadPinned(missing.mapIds));
      if (missing.fingerprints.length > 0) await this.dedup?.prepare(missing.fingerprints);
      if (missing.chunkIds.length > 0) unpins.push(await this.chunks.cache.loadPinned(this.chunks.pageIdsOf(missing.chunkIds)));
    } catch (error) {
      for (const unpin of unpins) unpin();
      throw error;
    }
    return () => unpins.forEach((unpin) => unpin());
  }

  /** Holds evictions in both page caches until the returned function is called. */
  holdEvictions(): () => void {
    const maps = this.maps.cache.holdEvictions();
    const chunks = this.chunks.cache.holdEvictions();
    return () => {
      maps();
      chunks();
    };
  }

  withEvictionsHeld<T>(work: () => T): T {
    const release = this.holdEvictions();
    try {
      return work();
    } finally {
      release();
    }
  }

  // ---- Commit --------------------------------------------------------------------------------

  /**
   * Group commit: at most one commit runs; callers arriving meanwhile share the next one, which
   * starts when the running one ends (their writes may have missed its capture). A checkpoint
   * writes back every dirty page and leaves the journal empty.
   */
  commit(sync: boolean, options: { checkpoint?: boolean; drain?: boolean } = {}): Promise<void> {
    const checkpoint = options.checkpoint ?? false;
    const drain = options.drain ?? false;
    if (this.commitRunning === null) {
      const running = this.doCommit(sync, checkpoint, drain).finally(() => {
        if (this.commitRunning === running) this.commitRunning = null;
      });
      this.commitRunning = running;
      return running;
    }
    this.queuedSync ||= sync;
    this.queuedCheckpoint ||= checkpoint;
    this.queuedDrain ||= drain;
    if (this.commitQueued === null) {
      this.commitQueued = this.commitRunning
        .catch(() => undefined)
        .then(() => {
          const queuedSync = this.queuedSync;
          const queuedCheckpoint = this.queuedCheckpoint;
          const queuedDrain = this.queuedDrain;
          this.queuedSync = false;
          this.queuedCheckpoint = false;
          this.queuedDrain = false;
          this.commitQueued = null;
          return this.commit(queuedSync, { checkpoint: queuedCheckpoint, drain: queuedDrain });
        });
    }
    return this.commitQueued;
  }

  /**
   * Writes back every dirty page (and so empties the journal), every dedup entry and Bloom filter
   * segment LevelDB lacks, and syncs. The bulk goes first, in slices of bounded size (see
   * `writeBackInSlices`), so that the checkpoint's own commit holds only what is left.
   */
  async checkpoint(): Promise<void> {
    await this.writeBackInSlices();
    return this.commit(true, { checkpoint: true });
  }

  /**
   * Before a checkpoint: dedup entries and Bloom filter segments in batches of their own, and
   * dirty pages through ordinary commits of at most `writebackPages` each. One batch of all of it
   * (what the checkpoint's commit was) held about 1 KiB of heap per dedup entry until LevelDB had
   * it: 2.6 GB of resident memory closing an array at the default budget, 816 MB at --cache-mb 64.
   * Index entries and Bloom bits are advice (see reduce/dedup-index.ts), so writing them outside a
   * commit is safe: a crash between slices loses only chances to dedup.
   */
  private async writeBackInSlices(): Promise<void> {
    if (this.dedup !== null) {
      let from: number | undefined = 0;
      let walked = false;
      let ops: MetaOp[] = [];
      for (;;) {
        if (!walked) {
          walked = this.dedup.captureUnwritten(ops, CHECKPOINT_SLICE_ENTRIES - ops.length, CHECKPOINT_SLICE_SLOTS, from);
          from = undefined;
          // Too few for a batch yet: walk on in the next turn.
          if (!walked && ops.length < CHECKPOINT_SLICE_ENTRIES) {
            await nextTurn();
            continue;
          }
        }
        this.dedup.bloom.captureSome(ops, CHECKPOINT_SLICE_SEGMENTS);
        if (ops.length === 0) break;
        await this.meta.batch(ops, { sync: false });
        ops = [];
      }
    }
    const dirtyPages = () => this.maps.cache.dirtyCount + this.chunks.cache.dirtyCount;
    for (let rounds = 0; dirtyPages() > this.policy.writebackPages && rounds < CHECKPOINT_MAX_ROUNDS; rounds++) {
      await this.commit(false, { drain: true });
    }
  }

  /** Times the commit (NAND sync and batch, success or failure), then lets GC erase what it freed. */
  private async doCommit(sync: boolean, checkpoint: boolean, drain: boolean): Promise<void> {
    const startedMs = performance.now();
    let captured: Capture;
    try {
      captured = await this.writeCommit(sync, checkpoint, drain);
    } catch (error) {
      this.commitFailures += 1;
      throw error;
    } finally {
      this.commitDurations.record(performance.now() - startedMs);
    }
    if (sync) await this.ftl.releaseAfterCommit(captured.generation);
  }

  /** NAND durable first, then the metadata batch that points at it (see the design note). */
  private async writeCommit(sync: boolean, checkpoint: boolean, drain: boolean): Promise<Capture> {
    let previous: Capture | null = null;
    let captured: Capture;
    try {
      captured = await this.ftl.makeDurable((generation) => {
        if (previous !== null) this.settleCapture(previous, false);
        previous = this.captureMetadata(generation, checkpoint, drain);
        return previous;
      });
    } catch (error) {
      // The NAND side failed after the capture: give back what it took, for the next commit.
      if (previous !== null) this.settleCapture(previous, false);
      throw this.noteFailure(error);
    }
    let ok = false;
    const started = process.hrtime.bigint();
    try {
      // The copy first: it may then be one catalog change ahead of LevelDB, never behind.
      if (captured.catalog) this.writeCatalogCopy();
      for (const piece of captured.journalAhead) await this.meta.batch([piece], { sync: false });
      await this.meta.batch(captured.ops, { sync });
      ok = true;
    } catch (error) {
      throw this.noteFailure(error);
    } finally {
      this.settleCapture(captured, ok);
    }
    this.commits += 1;
    this.logger.debug('commit', { ops: captured.ops.length, journalBytes: captured.journal.reduce((sum, { value }) => sum + value.length, 0), batchMs: Number(process.hrtime.bigint() - started) / 1e6, sync, checkpoint });
    return captured;
  }

  /** A commit failed: a full host file system is `hostSpace`'s business. Returns the error. */
  private noteFailure(error: unknown): unknown {
    if (isHostFull(error)) this.hostSpace.noteNoSpace(error);
    return error;
  }

  private captureMetadata(generation: number, checkpoint: boolean, drain: boolean): Capture {
    const ops: MetaOp[] = [];
    const journal = [...this.journalRetry];
    this.journalRetry = [];
    journal.push(...this.journal.capture());
    const journalAhead: MetaOp[] = [];
    journal.forEach(({ seq, value: bytes }, index) => {
      const op: MetaOp = { type: 'put', sublevel: 'journal', key: u64Key(seq), value: bytes };
      (index < journal.length - 1 ? journalAhead : ops).push(op);
      this.noteJournalKept(seq, bytes.length);
    });
    const choice = this.writebackChoice(checkpoint, drain);
    const mapPages = this.maps.cache.captureWriteback(ops, { ...choice, extraPages: choice.extraMapPages });
    const chunkPages = this.chunks.cache.captureWriteback(ops, { ...choice, extraPages: choice.extraChunkPages });
    // Every change older than the oldest page still dirty is now in a written page.
    const trimSeq = Math.min(this.maps.cache.minDirtySeq() ?? Infinity, this.chunks.cache.minDirtySeq() ?? Infinity, this.journal.seq);
    for (let seq = this.journalTrimSeq; seq < trimSeq; seq++) {
      if (this.journalKept.has(seq)) ops.push({ type: 'del', sublevel: 'journal', key: u64Key(seq) });
    }
    this.dedup?.capture(ops, this.closed || checkpoint);
    const summaries = this.ftl.captureSummaries();
    for (const [page, bytes] of summaries) ops.push({ type: 'put', sublevel: 'erase-blocks', key: u32Key(page), value: bytes });
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
      journalTrimSeq: trimSeq,
      journalNextSeq: this.journal.seq,
      counters: this.persistentCounters(),
      reduction: { dedupHits, liveChunks, liveStoredBytes },
    };
    ops.push({ type: 'put', sublevel: 'super', key: STATE_KEY, value: Buffer.from(JSON.stringify(state)) });
    const deleted = { volumes: [...this.deletedVolumes], snapshots: [...this.deletedSnapshots] };
    return { ops, journal, journalAhead, mapPages, chunkPages, summaryPages: summaries.map(([page]) => page), volumes, catalog, deleted, trimSeq, generation };
  }

  /**
   * Which dirty pages this commit writes back: every one whose first change is in a journal value
   * the backlog can no longer keep, and the oldest beyond each cache's dirty share.
   */
  private writebackChoice(checkpoint: boolean, drain: boolean): { beforeSeq: number; maxPages: number; extraMapPages: number; extraChunkPages: number } {
    const { journalBacklogBytes, dirtyPageShare, writebackPages } = this.policy;
    if (checkpoint) return { beforeSeq: Infinity, maxPages: Infinity, extraMapPages: 0, extraChunkPages: 0 };
    // A checkpoint's slices: the oldest dirty pages, a commit's worth (see `writeBackInSlices`).
    if (drain) return { beforeSeq: Infinity, maxPages: writebackPages, extraMapPages: 0, extraChunkPages: 0 };
    let beforeSeq = -Infinity;
    if (this.journalKeptBytes > journalBacklogBytes) {
      // Trim to half the backlog: the oldest values until what is left fits.
      let bytes = this.journalKeptBytes;
      for (const [seq, valueBytes] of this.journalKept) {
        if (bytes <= journalBacklogBytes / 2) break;
        bytes -= valueBytes;
        beforeSeq = seq + 1;
      }
    }
    const over = (cache: { dirtyBytes: number; budget: number; dirtyCount: number }) =>
      cache.dirtyCount === 0 ? 0 : Math.max(0, Math.ceil(((cache.dirtyBytes - dirtyPageShare * cache.budget) / cache.dirtyBytes) * cache.dirtyCount));
    return { beforeSeq, maxPages: writebackPages, extraMapPages: over(this.maps.cache), extraChunkPages: over(this.chunks.cache) };
  }

  private noteJournalKept(seq: number, bytes: number): void {
    if (this.journalKept.has(seq)) return;
    this.journalKept.set(seq, bytes);
    this.journalKeptBytes += bytes;
  }

  private settleCapture(captured: Capture, ok: boolean): void {
    this.maps.cache.settle(captured.mapPages, ok);
    this.chunks.cache.settle(captured.chunkPages, ok);
    if (!ok) {
      this.journalRetry.push(...captured.journal);
      this.ftl.table.restoreDirty(captured.summaryPages);
      for (const volume of captured.volumes) volume.recordDirty = true;
      if (captured.catalog) this.catalogDirty = true;
      return;
    }
    this.journal.recycle(captured.journal);
    for (let seq = this.journalTrimSeq; seq < captured.trimSeq; seq++) {
      const bytes = this.journalKept.get(seq);
      if (bytes === undefined) continue;
      this.journalKept.delete(seq);
      this.journalKeptBytes -= bytes;
    }
    this.journalTrimSeq = Math.max(this.journalTrimSeq, captured.trimSeq);
    for (const id of captured.deleted.volumes) this.deletedVolumes.delete(id);
    for (const id of captured.deleted.snapshots) this.deletedSnapshots.delete(id);
  }

  /** Rewrites DATA_DIR/catalog.json from the catalog in memory (see catalog-copy.ts). */
  writeCatalogCopy(): void {
    if (this.catalogCopyDir === null) return;
    writeCatalogCopy(this.catalogCopyDir, {
      format: this.format,
      nextVolumeId: this.nextVolumeId,
      layers: [...this.layers],
      volumes: [...this.volumes.values()].map((volume) => volume.record),
      snapshots: [...this.snapshots.values()],
    });
  }

  private persistentCounters(): ArrayCounters {
    return { hostBytesWritten: this.counters.hostBytesWritten, nandBytesWrittenBefore: this.nandBytesWritten };
  }

  get nandBytesWritten(): number {
    return this.counters.nandBytesWrittenBefore + this.ftl.counters.nandBytesProgrammed;
  }

  /**
   * After a batch of changes: commit in the background when enough is waiting (`unmapping`: at a
   * pause of a long unmap, which commits smaller journals; see `Volume.unmapRange`).
   */
  maybeCommit(unmapping = false): void {
    const journalBytes = unmapping ? this.policy.unmapCommitJournalBytes : this.policy.journalCommitBytes;
    if (this.closed || this.commitRunning !== null) return;
    const dirtyPressure = (cache: { dirtyBytes: number; budget: number }) => cache.dirtyBytes > this.policy.dirtyPageShare * cache.budget * 1.25;
    const due =
      this.journal.pendingBytes >= journalBytes ||
      dirtyPressure(this.maps.cache) ||
      dirtyPressure(this.chunks.cache) ||
      (this.dedup?.pendingWrites ?? 0) > DEDUP_WRITEBACK_ENTRIES;
    if (due) this.backgroundCommit(true);
  }

  private backgroundCommit(force = false): void {
    if (this.closed || this.commitRunning !== null) return;
    if (!force && this.journal.pendingBytes === 0 && !this.ftl.table.hasDirtySummaries && this.journalKeptBytes <= this.policy.journalBacklogBytes) return;
    void this.commit(true).catch((error: unknown) => {
      // A full host file system is logged once, by hostSpace, not every second.
      if (!isHostFull(error)) this.logger.error('background commit failed', { error: (error as Error).message });
    });
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
      encryption: this.format.encryption === undefined ? null : { cipher: this.format.encryption.cipher, keyWrap: this.format.encryption.keyWrap },
      cache: {
        mapBytes: this.maps.cache.cachedBytes,
        chunkBytes: this.chunks.cache.cachedBytes,
        dedupEntries: this.dedup?.size ?? 0,
        dirtyBytes: this.maps.cache.dirtyBytes + this.chunks.cache.dirtyBytes,
      },
      journal: { keptBytes: this.journalKeptBytes, pendingBytes: this.journal.pendingBytes, trimSeq: this.journalTrimSeq, nextSeq: this.journal.seq, commits: this.commits },
      hostSpace: this.hostSpace.stats(),
    };
  }

  /**
   * Hits, misses and bytes of the map and chunk page caches (see page-cache.ts for what counts)
   * and, on a mapped NAND image, of its read mapping (nand/read-mapping.ts; it holds nothing dirty).
   * For the metrics, at scrape time.
   */
  cacheStats(): CacheStats[] {
    const pages = (cache: FlashArray['maps']['cache'] | FlashArray['chunks']['cache'], name: string): CacheStats => ({
      cache: name,
      hits: cache.hits,
      misses: cache.misses,
      bytes: cache.cachedBytes,
      dirtyBytes: cache.dirtyBytes,
    });
    const caches = [pages(this.maps.cache, 'map'), pages(this.chunks.cache, 'chunk')];
    const mapped = this.nand instanceof FileNand ? this.nand.mappedReads : null;
    if (mapped !== null) caches.push({ cache: 'nand_mapping', hits: mapped.hits, misses: mapped.misses, bytes: (this.nand as FileNand).mappedBytes, dirtyBytes: null });
    return caches;
  }

  async flush(): Promise<void> {
    await this.commit(true);
  }

  /**
   * Lends the NAND image's read mapping what the map and chunk page caches leave unused of their
   * shares of the budget, less an eighth of the budget kept back (see common/memory-budget.ts);
   * the server calls it twice a second.
   */
  balanceMemory(): void {
    if (!(this.nand instanceof FileNand)) return;
    const unusedBytes = Math.max(0, this.memory.mapPageBytes - this.maps.cache.cachedBytes) + Math.max(0, this.memory.chunkPageBytes - this.chunks.cache.cachedBytes);
    this.nand.setMappedLimit(this.memory.mappedReadBytes + Math.max(0, unusedBytes - this.memory.cacheBytes / 8));
  }

  /** Drops the NAND image's pages from the read mapping (when idle); returns the bytes, estimated. */
  dropMappedPages(): number {
    return this.nand instanceof FileNand ? this.nand.dropMapped() : 0;
  }

  /** A simulated crash: stop background work at once (the caller abandons the devices). */
  abandon(): void {
    this.closed = true;
    this.hostSpace.stop();
    if (this.commitTimer) clearInterval(this.commitTimer);
    void this.reducer?.close();
  }

  /**
   * Checkpoints and closes. If the checkpoint cannot be made (the host file system is still full),
   * the devices are closed all the same and the error says what was not saved.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.commitTimer) clearInterval(this.commitTimer);
    this.clock.stop();
    let failure: unknown = null;
    try {
      await this.bloomRebuild; // stops at once now that the array is closed
      await this.hostSpace.beforeClose();
      await this.checkpoint().catch(async (error: unknown) => {
        if (!isHostFull(error)) throw error;
        // The file system filled during the checkpoint itself: use what room the reserve gives.
        await this.hostSpace.beforeClose();
        await this.checkpoint();
      });
      // Every Bloom filter segment is written: the next open may trust them (bloom-filter.ts).
      const record: MetaOp[] = [];
      if (this.dedup?.bloom.captureRecord(record)) await this.meta.batch(record, { sync: true });
    } catch (error) {
      failure = error;
    }
    await this.reducer?.close();
    await this.nand.close();
    await this.meta.close();
    if (failure !== null) throw failure;
  }
}

/**
 * Damaged metadata stops the open: say what to do about it. Only CORRUPT errors get the hint (a
 * busy directory or a missing one has its own message).
 */
function withRepairHint(error: unknown, dataDir: string): unknown {
  if (!(error instanceof StorageError && error.code === 'CORRUPT') || error.message.includes('inspect repair')) return error;
  return StorageError.corrupt(
    `${error.message}. The metadata in ${path.join(dataDir, 'meta')} is damaged: stop every pstorage process using ${dataDir}, then run ` +
      `"pstorage inspect repair --data-dir ${dataDir}", which rebuilds what can be rebuilt and lists exactly which blocks were lost`,
    error,
  );
}

/** True when no erase block was ever programmed or erased: an image whose creation was interrupted. */
function isBlank(nand: NandDevice): boolean {
  for (let block = 0; block < nand.geometry.eraseBlockCount; block++) {
    const info = nand.blockInfo(block);
    if (info.writePointer !== 0 || info.eraseCount !== 0 || info.bad) return false;
  }
  return true;
}

/**
 * The Bloom filter's size for an array of this NAND under a memory budget (common/memory-budget.ts:
 * 10 bits per 2 KiB of NAND, within the budget's share). `pstorage inspect repair` builds it at
 * the default budget; a server given another budget rebuilds it at its own size when it opens
 * (reduce/bloom-filter.ts), answering "maybe stored" meanwhile.
 */
export function bloomFilterBytes(nand: NandDevice, cacheBytes = DEFAULT_CACHE_BYTES): number {
  return planMemory({ cacheBytes, capacityBytes: capacityOf(nand), onDisk: true, dedup: true }).bloomFilterBytes;
}

function capacityOf(nand: NandDevice): number {
  const { pageBytes, pagesPerEraseBlock, eraseBlockCount } = nand.geometry;
  return pageBytes * pagesPerEraseBlock * eraseBlockCount;
}

function parseFormat(bytes: Buffer): FormatRecord {
  const format = JSON.parse(bytes.toString()) as FormatRecord;
  if (format.formatVersion !== FORMAT_VERSION) {
    throw StorageError.notSupported(
      `this data directory has format version ${format.formatVersion}; this pstorage reads version ${FORMAT_VERSION}. ` +
        'Export its volumes with the pstorage that made it ("pstorage export VOLUME FILE") and import them into a new array',
    );
  }
  return format;
}

export function validateVolumeName(name: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(name)) {
    throw StorageError.invalidArgument(`invalid volume name "${name}": use 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit (no "/" or "@")`);
  }
}

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

/** The layer map, with a generation that changes whenever it does (for `layerChain`'s memory). */
export class LayerMap extends Map<number, number> {
  generation = 0;

  override set(id: number, parent: number): this {
    this.generation += 1;
    return super.set(id, parent);
  }

  override delete(id: number): boolean {
    this.generation += 1;
    return super.delete(id);
  }

  override clear(): void {
    this.generation += 1;
    super.clear();
  }
}
