/**
 * The metadata store in memory, with LevelDB's crash model, for tests and simulations.
 *
 * What it owns: one sorted table per sublevel (an array of entries kept in unsigned byte order of
 * keys, found by binary search; an insert or delete moves the tail of the array, which is fine at
 * simulation sizes), plus a durable copy of those tables as of the last `sync: true` batch and the
 * list of batches written since then without sync. Stored keys and values are private copies that
 * are never changed afterwards, so the two copies of the tables share them.
 *
 * Crash model (`crash()`), matching LevelDB's write-ahead log:
 *   - batches are applied in call order and each is atomic;
 *   - a `sync: true` batch makes itself and every earlier batch durable (LevelDB syncs the log,
 *     which holds every earlier batch too); an empty `sync: true` batch does only that;
 *   - a crash keeps every durable batch plus a PREFIX of the unsynced batches that followed: the
 *     log is written sequentially, so a later batch never survives without the earlier ones, and
 *     a batch never survives in part.
 * How long a prefix survives is chosen by the caller: none (the default), all, an exact count, or
 * a random length in [0, unsynced count] drawn from a supplied `random()`, so that simulations
 * replay from their seed. The crashed store is abandoned (later calls reject with `SHUTTING_DOWN`)
 * and a new store holding the surviving state is returned; all of that state is durable.
 *
 * Nothing here tears or flips bits: LevelDB checksums its log records, so a torn tail record is
 * dropped on recovery, which is what "keep a prefix" already models. The prefix is exact for a
 * process crash; for a power loss it assumes the file system kept the log's unsynced tail in
 * order (see `level-store.ts`).
 */
import { assert, fail } from '../common/assert.js';
import { StorageError } from '../common/errors.js';
import {
  type BatchOptions,
  type CopiedOp,
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

export interface MetaCrashOptions {
  /**
   * How many of the batches written since the last sync survive: 'none' (the default), 'all' or
   * an exact count (at most `unsyncedBatchCount`). Do not combine with `random`.
   */
  keepUnsynced?: 'none' | 'all' | number;
  /** Source of randomness in [0, 1): the surviving prefix length is uniform in [0, count]. */
  random?: () => number;
}

interface Entry {
  key: Buffer;
  value: Buffer;
}

/** Entries of one sublevel in unsigned byte order of their keys. */
class SortedTable {
  constructor(private readonly entries: Entry[] = []) {}

  /** Index of the first entry whose key is >= `key`. */
  private lowerBound(key: Uint8Array): number {
    let low = 0;
    let high = this.entries.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (Buffer.compare(this.entries[middle]!.key, key) < 0) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  private indexOf(key: Uint8Array): number {
    const index = this.lowerBound(key);
    const entry = this.entries[index];
    return entry !== undefined && Buffer.compare(entry.key, key) === 0 ? index : -1;
  }

  get(key: Uint8Array): Buffer | undefined {
    const index = this.indexOf(key);
    return index < 0 ? undefined : this.entries[index]!.value;
  }

  apply(op: CopiedOp): void {
    const index = this.lowerBound(op.key);
    const found = index < this.entries.length && Buffer.compare(this.entries[index]!.key, op.key) === 0;
    if (op.type === 'put') {
      const entry = { key: op.key, value: op.value };
      if (found) this.entries[index] = entry;
      else this.entries.splice(index, 0, entry);
    } else if (found) {
      this.entries.splice(index, 1);
    }
  }

  /** The entries a range selects, in the order it yields them (a snapshot: a new array). */
  select(range: IterateRange): Entry[] {
    const start = range.gte === undefined ? 0 : this.lowerBound(range.gte);
    const end = range.lt === undefined ? this.entries.length : this.lowerBound(range.lt);
    if (end <= start) return [];
    const limit = range.limit ?? Infinity;
    if (!range.reverse) return this.entries.slice(start, Math.min(end, start + limit));
    return this.entries.slice(Math.max(start, end - limit), end).reverse();
  }

  clone(): SortedTable {
    return new SortedTable(this.entries.slice());
  }
}

type Tables = Map<Sublevel, SortedTable>;

function emptyTables(): Tables {
  return new Map(SUBLEVELS.map((sublevel) => [sublevel, new SortedTable()]));
}

function cloneTables(tables: Tables): Tables {
  return new Map([...tables].map(([sublevel, table]) => [sublevel, table.clone()]));
}

function applyBatch(tables: Tables, ops: readonly CopiedOp[]): void {
  for (const op of ops) tables.get(op.sublevel)!.apply(op);
}

export class MemoryMetaStore implements MetaStore {
  private readonly tables: Tables;
  private readonly durableTables: Tables;
  private unsyncedBatches: CopiedOp[][] = [];
  private status: 'open' | 'closed' | 'crashed' = 'open';
  /**
   * Models a full disk under the log: while true, a batch fails with `NO_SPACE` and changes
   * nothing, and stops writes until `reopen()` (see meta-store.ts).
   */
  hostFull = false;
  writeError: StorageError | null = null;
  /** Reopens so far (tests check that writes resumed through one). */
  reopens = 0;

  constructor();
  /** @internal Starts from restored tables, all of them durable (used by `crash`). */
  constructor(restored: Tables);
  constructor(restored?: Tables) {
    this.tables = restored ?? emptyTables();
    this.durableTables = cloneTables(this.tables);
  }

  /** Batches written since the last sync: the ones a crash may lose. */
  get unsyncedBatchCount(): number {
    return this.unsyncedBatches.length;
  }

  async get(sublevel: Sublevel, key: Uint8Array): Promise<Buffer | undefined> {
    this.checkOpen();
    checkSublevel(sublevel);
    checkKey(key);
    return copyOf(this.tables.get(sublevel)!.get(key));
  }

  async getMany(sublevel: Sublevel, keys: Uint8Array[]): Promise<Array<Buffer | undefined>> {
    this.checkOpen();
    checkSublevel(sublevel);
    keys.forEach(checkKey);
    const table = this.tables.get(sublevel)!;
    return keys.map((key) => copyOf(table.get(key)));
  }

  async batch(ops: MetaOp[], options: BatchOptions): Promise<void> {
    this.checkOpen();
    checkBatch(ops, options);
    if (this.writeError !== null) throw this.writeError;
    if (this.hostFull) {
      this.writeError = StorageError.hostFull('metadata batch: no space left (the simulated disk under the metadata is full)');
      throw this.writeError;
    }
    const stored = ops.map(copyOp);
    applyBatch(this.tables, stored);
    if (options.sync) {
      for (const earlier of this.unsyncedBatches) applyBatch(this.durableTables, earlier);
      applyBatch(this.durableTables, stored);
      this.unsyncedBatches = [];
    } else if (stored.length > 0) {
      this.unsyncedBatches.push(stored);
    }
  }

  async *iterate(sublevel: Sublevel, range: IterateRange = {}): AsyncGenerator<[Buffer, Buffer]> {
    this.checkOpen();
    checkSublevel(sublevel);
    checkRange(range);
    for (const entry of this.tables.get(sublevel)!.select(range)) {
      this.checkOpen();
      yield [Buffer.from(entry.key), Buffer.from(entry.value)];
    }
  }

  /** Nothing is lost by a reopen: the process kept LevelDB's log in the page cache. */
  async reopen(): Promise<void> {
    this.checkOpen();
    if (this.hostFull) throw StorageError.hostFull('reopening the metadata store: no space left (the simulated disk is full)');
    this.writeError = null;
    this.reopens += 1;
  }

  async close(): Promise<void> {
    this.checkOpen();
    this.status = 'closed';
  }

  /**
   * Abandons this store and returns a new one holding what survives a crash now (see the design
   * note). Given a function, uses it as `random`. Also allowed after `close()`: a clean close does
   * not sync LevelDB's log either, so a power loss after it may still lose unsynced batches.
   */
  crash(how: (() => number) | MetaCrashOptions = {}): MemoryMetaStore {
    assert(this.status !== 'crashed', 'this metadata store has already crashed');
    const options = typeof how === 'function' ? { random: how } : how;
    const keptBatchCount = this.survivingBatchCount(options);
    this.status = 'crashed';
    const survivors = cloneTables(this.durableTables);
    for (const batch of this.unsyncedBatches.slice(0, keptBatchCount)) applyBatch(survivors, batch);
    return new MemoryMetaStore(survivors);
  }

  private survivingBatchCount({ keepUnsynced, random }: MetaCrashOptions): number {
    const count = this.unsyncedBatches.length;
    assert(keepUnsynced === undefined || random === undefined, 'crash takes keepUnsynced or random, not both');
    if (random !== undefined) {
      const draw = random();
      if (!(draw >= 0 && draw < 1)) fail(`random() returned ${draw}, outside [0, 1)`);
      return Math.floor(draw * (count + 1));
    }
    if (keepUnsynced === undefined || keepUnsynced === 'none') return 0;
    if (keepUnsynced === 'all') return count;
    if (!(Number.isSafeInteger(keepUnsynced) && keepUnsynced >= 0 && keepUnsynced <= count)) fail(`cannot keep ${keepUnsynced} of ${count} unsynced batches`);
    return keepUnsynced;
  }

  private checkOpen(): void {
    if (this.status !== 'open') throw StorageError.shuttingDown(`the metadata store is ${this.status}`);
  }
}

function copyOf(value: Buffer | undefined): Buffer | undefined {
  return value === undefined ? undefined : Buffer.from(value);
}
