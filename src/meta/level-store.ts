/**
 * The metadata store on LevelDB (the `level` package, i.e. classic-level).
 *
 * What it owns: one LevelDB database in its own directory, holding an exclusive lock on it for as
 * long as the store is open. Each `Sublevel` is an abstract-level sublevel, so on disk a key is
 * `!<sublevel name>!<engine key>` (the layout of `subleveldown`; sublevel keys therefore sort by
 * sublevel name first, then by the engine's bytes). One more key lives outside every sublevel:
 * `SYNC_BARRIER_KEY`, which is only ever deleted (see below) and so never holds data.
 *
 * The commit point and ordering. classic-level runs each write on the libuv thread pool, so two
 * batches handed to it without waiting can reach LevelDB in either order, and a synced batch
 * could then finish before an earlier unsynced one that it was meant to cover. The store
 * therefore keeps one write in flight at a time. With none in flight, a batch goes straight to
 * LevelDB, which copies keys and values into native memory as the batch is built (a large one
 * over several turns of the event loop: the caller hands its buffers over, see `MetaStore.batch`).
 * While one is in flight, later batches are copied and gathered into the next group, written as
 * one atomic LevelDB batch when the write in flight completes, and synced if any member asked for
 * sync.
 * Merging batches only removes crash outcomes (A without B), never adds one, so each caller's
 * batch stays atomic, batches take effect in call order, and a synced batch covers every earlier
 * one. This is LevelDB's own group commit, moved up to where the call order is still known. The
 * group is not bounded here: the engine bounds the metadata it has in flight. An empty
 * `sync: true` batch must still reach the disk (abstract-level skips empty batches), so it
 * deletes `SYNC_BARRIER_KEY`: a log record that changes nothing but makes LevelDB fsync its log,
 * which holds every earlier batch.
 *
 * Writes use chained batches (see `writeBatch` for the measurement that chose them over array
 * batches).
 *
 * Tuning (LevelDB defaults in brackets):
 *   - writeBufferSize 16 MiB [4 MiB]: the memtable and its log. Bigger absorbs more metadata
 *     write-back before a level-0 flush and compaction; LevelDB may hold two of them, so the cost
 *     is up to 32 MiB of memory, and reopening replays at most two 16 MiB logs, which bounds
 *     recovery time whatever the amount of data stored.
 *   - cacheSize 8 MiB [8 MiB]: LevelDB's block cache. The engine keeps hot metadata in its own
 *     bounded caches and never reads LevelDB per block on the hot path, so a large block cache
 *     would mostly duplicate them inside the memory budget.
 *   - Snappy compression, 4 KiB blocks, 2 MiB table files: defaults, kept until measured.
 *
 * On crash: LevelDB replays its log on open; a torn last record fails its checksum and is
 * dropped, so what survives is every synced batch plus a prefix of later ones (the model that
 * `MemoryMetaStore.crash` implements). That holds exactly for a process crash (kill -9), where
 * the page cache keeps every write. After a power loss it holds only if the file system persisted
 * the unsynced tail of the log in order: LevelDB's recovery (paranoid_checks off, and
 * classic-level cannot turn it on) skips a damaged or zeroed 32 KiB log block and goes on with
 * the records after it, so a later unsynced batch could survive without an earlier one. Synced
 * batches are never affected. Opening a directory another process has open fails with `BUSY`;
 * LevelDB reporting corruption becomes `CORRUPT`; a full disk (ENOSPC, EDQUOT, EFBIG: LevelDB
 * reports them only in its message) is `NO_SPACE`; any other LevelDB failure is `IO`.
 *
 * A failed write stops writes until `reopen()` (see meta-store.ts for why): the batches waiting
 * in the next group are rejected rather than appended behind what may be a torn record. LevelDB
 * itself makes a failed log sync, or a failed flush of its memtable to a table file, permanent
 * for the open database (its "background error"); reopening ends that too. Reopening closes and
 * opens the same database object (and its sublevels, which do not follow their parent back to
 * open); LevelDB then replays the log into a new table file, so the open itself needs some free
 * space, and fails with `NO_SPACE` until there is.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { AbstractSublevel } from 'abstract-level';
import { Level } from 'level';
import { StorageError } from '../common/errors.js';
import { TurnSlicer } from '../common/turns.js';
import {
  type BatchOptions,
  type IterateRange,
  type MetaOp,
  type MetaStore,
  type Sublevel,
  SUBLEVELS,
  checkBatch,
  checkKey,
  checkRange,
  checkSublevel,
  copyOp,
} from './meta-store.js';

export interface LevelMetaStoreOptions {
  /** Create the directory and an empty database if there is none (default true). */
  createIfMissing?: boolean;
  /** LevelDB memtable and log size (default 16 MiB). */
  writeBufferBytes?: number;
  /** LevelDB block cache (default 8 MiB). */
  cacheBytes?: number;
}

export const DEFAULT_WRITE_BUFFER_BYTES = 16 * 1024 * 1024;
export const DEFAULT_CACHE_BYTES = 8 * 1024 * 1024;

/** Outside every sublevel (sublevel keys start with '!'); only ever deleted. */
const SYNC_BARRIER_KEY = Buffer.from('\x00pstorage-sync-barrier');
/** Entries fetched per trip to LevelDB while iterating, and the bytes that may hold. */
const ITERATE_BATCH_ENTRIES = 256;
const ITERATE_BATCH_BYTES = 256 * 1024;
/** Building a large batch lets the event loop turn after this much work (see `writeBatch`). */
const BUILD_SLICE_MS = 2;
/** Operations between two looks at the clock while building a batch. */
const BUILD_CHECK_OPS = 64;
/** ...or after a value at least this large. */
const LARGE_VALUE_BYTES = 16 * 1024;

type RootDatabase = Level<Buffer, Buffer>;
type SublevelDatabase = AbstractSublevel<RootDatabase, string | Buffer | Uint8Array, Uint8Array, Buffer>;

/** The key prefix abstract-level gives each sublevel (subleveldown's `!name!` layout). */
const SUBLEVEL_PREFIXES: ReadonlyMap<Sublevel, Buffer> = new Map(SUBLEVELS.map((name) => [name, Buffer.from(`!${name}!`, 'utf8')]));

interface Waiter {
  resolve(): void;
  reject(error: unknown): void;
}

/** Batches called while a write is in flight, with copies of their bytes, to be written as one. */
interface WriteGroup {
  ops: MetaOp[];
  sync: boolean;
  waiters: Waiter[];
}

export class LevelMetaStore implements MetaStore {
  private readonly sublevels: ReadonlyMap<Sublevel, SublevelDatabase>;
  private status: 'open' | 'closing' | 'closed' = 'open';
  /** Settles once the write in flight has completed and the next group, if any, has started. */
  private inFlight: Promise<void> | undefined;
  private nextGroup: WriteGroup | undefined;
  writeError: StorageError | null = null;
  /** Settles when a reopen in progress has ended; reads wait for it. */
  private reopening: Promise<void> | undefined;

  private constructor(
    private readonly db: RootDatabase,
    readonly directory: string,
  ) {
    this.sublevels = new Map(
      SUBLEVELS.map((name) => [name, db.sublevel<Uint8Array, Buffer>(name, { keyEncoding: 'buffer', valueEncoding: 'buffer' })]),
    );
  }

  static async open(directory: string, options: LevelMetaStoreOptions = {}): Promise<LevelMetaStore> {
    // LevelDB creates the directory (and LOCK and LOG files) before it finds no database there,
    // so look first rather than leave a stray directory behind a mistyped path.
    if (options.createIfMissing === false && !(await exists(path.join(directory, 'CURRENT')))) {
      throw StorageError.notFound(`there is no metadata store in ${directory}: check the data directory path`);
    }
    const db = new Level<Buffer, Buffer>(directory, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
      createIfMissing: options.createIfMissing ?? true,
      writeBufferSize: options.writeBufferBytes ?? DEFAULT_WRITE_BUFFER_BYTES,
      cacheSize: options.cacheBytes ?? DEFAULT_CACHE_BYTES,
    });
    try {
      await db.open();
    } catch (error) {
      throw openError(error, directory);
    }
    return new LevelMetaStore(db, directory);
  }

  async get(sublevel: Sublevel, key: Uint8Array): Promise<Buffer | undefined> {
    if (this.reopening !== undefined) await this.reopening;
    const database = this.sublevel(sublevel);
    checkKey(key);
    try {
      return await database.get(key);
    } catch (error) {
      throw this.levelError(error, `metadata get in ${sublevel}`);
    }
  }

  async getMany(sublevel: Sublevel, keys: Uint8Array[]): Promise<Array<Buffer | undefined>> {
    if (this.reopening !== undefined) await this.reopening;
    const database = this.sublevel(sublevel);
    keys.forEach(checkKey);
    try {
      return await database.getMany(keys);
    } catch (error) {
      throw this.levelError(error, `metadata getMany in ${sublevel}`);
    }
  }

  /** Async, so misuse rejects like everything else; the synchronous part hands the data over. */
  async batch(ops: MetaOp[], options: BatchOptions): Promise<void> {
    if (this.status !== 'open') throw StorageError.shuttingDown(`the metadata store is ${this.status}`);
    checkBatch(ops, options);
    if (this.writeError !== null) throw this.writeError;
    if (this.inFlight === undefined && this.reopening === undefined) {
      if (ops.length === 0 && !options.sync) return;
      return this.write(ops, options.sync);
    }
    const group = (this.nextGroup ??= { ops: [], sync: false, waiters: [] });
    for (const op of ops) group.ops.push(copyOp(op));
    group.sync ||= options.sync;
    return new Promise<void>((resolve, reject) => group.waiters.push({ resolve, reject }));
  }

  async *iterate(sublevel: Sublevel, range: IterateRange = {}): AsyncGenerator<[Buffer, Buffer]> {
    if (this.reopening !== undefined) await this.reopening;
    const database = this.sublevel(sublevel);
    checkRange(range);
    // highWaterMarkBytes is classic-level's own option; the sublevel passes it through to the root.
    const options = { ...levelRange(range), highWaterMarkBytes: ITERATE_BATCH_BYTES };
    const iterator = database.iterator(options);
    try {
      for (;;) {
        let entries: Array<[Uint8Array, Buffer]>;
        try {
          entries = await iterator.nextv(ITERATE_BATCH_ENTRIES);
        } catch (error) {
          throw this.levelError(error, `metadata iteration in ${sublevel}`);
        }
        if (entries.length === 0) return;
        for (const [key, value] of entries) yield [key as Buffer, value];
      }
    } finally {
      await iterator.close().catch(() => undefined);
    }
  }

  /**
   * Closes and opens LevelDB again, after a failed write (see the design note). Batches called
   * meanwhile wait for it; with no failed write it only costs a reopen.
   */
  reopen(): Promise<void> {
    if (this.status !== 'open') return Promise.reject(StorageError.shuttingDown(`the metadata store is ${this.status}`));
    this.reopening ??= this.doReopen().finally(() => {
      this.reopening = undefined;
    });
    return this.reopening;
  }

  private async doReopen(): Promise<void> {
    while (this.inFlight !== undefined) await this.inFlight;
    try {
      await this.db.close();
      await this.db.open();
      for (const database of this.sublevels.values()) await database.open();
    } catch (error) {
      const reason = (error as { cause?: unknown } | undefined)?.cause ?? error;
      // Still stopped: a later reopen may succeed (once there is space for LevelDB's recovery).
      this.writeError = levelError(reason, `reopening the metadata store in ${this.directory}`);
      this.writeNextGroup();
      throw this.writeError;
    }
    this.writeError = null;
    // Batches called during the reopen were gathered into the next group (reopening is still set).
    const group = this.nextGroup;
    this.nextGroup = undefined;
    if (group !== undefined) {
      this.write(group.ops, group.sync).then(
        () => group.waiters.forEach((waiter) => waiter.resolve()),
        (error: unknown) => group.waiters.forEach((waiter) => waiter.reject(error)),
      );
    }
  }

  /** Waits for batches already called to be written, then closes LevelDB (without a sync). */
  async close(): Promise<void> {
    if (this.status !== 'open') throw StorageError.shuttingDown(`the metadata store is ${this.status}`);
    if (this.reopening !== undefined) await this.reopening.catch(() => undefined);
    this.status = 'closing';
    while (this.inFlight !== undefined) await this.inFlight;
    try {
      await this.db.close();
    } catch (error) {
      throw StorageError.io(`closing the metadata store in ${this.directory} failed`, error);
    } finally {
      this.status = 'closed';
    }
  }

  private sublevel(sublevel: Sublevel): SublevelDatabase {
    if (this.status !== 'open') throw StorageError.shuttingDown(`the metadata store is ${this.status}`);
    checkSublevel(sublevel);
    return this.sublevels.get(sublevel)!;
  }

  /** Hands one atomic batch to LevelDB now; the next group starts when it completes. */
  private write(ops: MetaOp[], sync: boolean): Promise<void> {
    const written = this.writeBatch(ops, sync).catch((error: unknown) => {
      const failure = this.levelError(error, 'metadata batch');
      if (failure.code !== 'SHUTTING_DOWN') this.writeError ??= failure;
      throw failure;
    });
    this.inFlight = written.then(
      () => this.writeNextGroup(),
      () => this.writeNextGroup(),
    );
    return written;
  }

  /**
   * One atomic LevelDB batch, built op by op (a chained batch): classic-level's array form cost
   * 26-32 µs an op here, the chained one 7 (16,384 puts of 9-byte keys and 8-byte values, as the
   * dedup index writes back; measured in one process, the same keys either way). A commit after a
   * 1 GiB TRIM holds thousands of pages, so the building lets the event loop turn every
   * `BUILD_SLICE_MS` (it held other connections' reads for 64-86 ms in one turn on a busy
   * machine); nothing reaches LevelDB before `write`, so the batch stays atomic.
   *
   * Keys get the sublevel prefix (`!name!`) here, by hand: the same bytes abstract-level's
   * sublevels would store, without their per-operation transcoding, which costs several
   * microseconds of main-thread time per put.
   */
  private async writeBatch(ops: MetaOp[], sync: boolean): Promise<void> {
    const batch = this.db.batch();
    const slicer = new TurnSlicer(BUILD_SLICE_MS);
    try {
      if (sync && ops.length === 0) batch.del(SYNC_BARRIER_KEY);
      for (let i = 0; i < ops.length; i++) {
        const op = ops[i]!;
        const prefix = SUBLEVEL_PREFIXES.get(op.sublevel)!;
        const key = Buffer.allocUnsafe(prefix.length + op.key.length);
        prefix.copy(key, 0);
        key.set(op.key, prefix.length);
        // The database's 'buffer' encoding wraps a Uint8Array value without a copy (level-transcoder).
        if (op.type === 'put') batch.put(key, op.value as Buffer);
        else batch.del(key);
        // A large value (a journal piece, a page) costs as much as many small operations.
        if ((i % BUILD_CHECK_OPS === BUILD_CHECK_OPS - 1 || (op.type === 'put' && op.value.length >= LARGE_VALUE_BYTES)) && slicer.due()) await slicer.nextTurn();
      }
    } catch (error) {
      await batch.close().catch(() => undefined);
      throw error;
    }
    await batch.write({ sync });
  }

  private writeNextGroup(): void {
    this.inFlight = undefined;
    const group = this.nextGroup;
    if (group === undefined) return;
    if (this.reopening !== undefined && this.writeError === null) return; // written once reopened
    this.nextGroup = undefined;
    if (this.writeError !== null) {
      // Not appended behind a failed write: it could be lost even once acknowledged.
      for (const waiter of group.waiters) waiter.reject(this.writeError);
      return;
    }
    this.write(group.ops, group.sync).then(
      () => group.waiters.forEach((waiter) => waiter.resolve()),
      (error: unknown) => group.waiters.forEach((waiter) => waiter.reject(error)),
    );
  }

  private levelError(error: unknown, what: string): StorageError {
    if (error instanceof StorageError) return error;
    const closedUnderneath = errorCode(error) === 'LEVEL_DATABASE_NOT_OPEN' || errorCode(error) === 'LEVEL_ITERATOR_NOT_OPEN';
    if (this.status !== 'open' && closedUnderneath) {
      return StorageError.shuttingDown(`${what}: the metadata store is ${this.status}`);
    }
    return levelError(error, what);
  }
}

async function exists(filePath: string): Promise<boolean> {
  try {
    await fs.access(filePath);
    return true;
  } catch {
    return false;
  }
}

function errorCode(error: unknown): unknown {
  return (error as { code?: unknown } | undefined)?.code;
}

function levelError(error: unknown, what: string): StorageError {
  const message = error instanceof Error ? error.message : String(error);
  if (errorCode(error) === 'LEVEL_CORRUPTION') {
    return StorageError.corrupt(`${what}: LevelDB reports corruption (${message})`, error);
  }
  // LevelDB gives a failed system call as "IO error: FILE: strerror(errno)", nothing more.
  if (NO_SPACE_MESSAGE.test(message)) return StorageError.hostFull(`${what}: ${message}`, error);
  return StorageError.io(`${what}: ${message}`, error);
}

/** strerror of ENOSPC, EDQUOT and EFBIG (glibc): the disk is full, as `fromSystemError` sees it. */
const NO_SPACE_MESSAGE = /No space left on device|Disk quota exceeded|File too large/;

/** abstract-level reports a failed open as LEVEL_DATABASE_NOT_OPEN with the reason as `cause`. */
function openError(error: unknown, directory: string): StorageError {
  const reason = (error as { cause?: unknown } | undefined)?.cause ?? error;
  if (errorCode(reason) === 'LEVEL_LOCKED') {
    return new StorageError(
      'BUSY',
      `the metadata directory ${directory} is locked: another pstorage process owns it. ` +
        'Stop that process (or talk to it through its management API), or use another data directory.',
      { cause: error },
    );
  }
  return levelError(reason, `opening the metadata store in ${directory}`);
}

function levelRange(range: IterateRange): { gte?: Uint8Array; lt?: Uint8Array; limit?: number; reverse: boolean } {
  const options: { gte?: Uint8Array; lt?: Uint8Array; limit?: number; reverse: boolean } = { reverse: range.reverse ?? false };
  if (range.gte !== undefined) options.gte = range.gte;
  if (range.lt !== undefined) options.lt = range.lt;
  if (range.limit !== undefined) options.limit = range.limit;
  return options;
}
