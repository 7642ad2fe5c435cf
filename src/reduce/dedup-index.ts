/**
 * The global dedup index: fingerprint → chunk id, for every volume of the array.
 *
 * Lookups are synchronous against a bounded in-memory LRU (keyed by the first 48 bits of the
 * 8-byte fingerprint, a number, so a lookup allocates nothing). `lookup()` answers "this chunk",
 * "surely not stored" (the Bloom filter says so), or "maybe in LevelDB": then `prepare()` reads the
 * 'fingerprints' sublevel (key = the 8-byte fingerprint, value = u64 chunk id) in one batch for
 * all such fingerprints of a request. So unique data never waits for LevelDB, and a second copy
 * finds its chunks.
 *
 * The index is advice, as in dm-vdo: a candidate is shared only after the write path has checked
 * that the chunk is live, carries the same fingerprint, and holds the same bytes. So a stale entry
 * (a chunk freed since, a crash, two fingerprints sharing 48 bits) can cost a dedup opportunity but
 * never alias data.
 *
 * Write-back: a new entry lives only in the LRU until it is evicted (or the array closes), and
 * only then is it written to LevelDB, in the next commit's batch. A LevelDB put costs several
 * microseconds of main-thread time, and a working set that fits the LRU then costs none. A crash
 * forgets the entries never written: their chunks stay intact, only the chance to share them with
 * later writes is lost.
 */
import { decodeU64Key, u64Key } from '../meta/keys.js';
import type { MetaOp, MetaStore } from '../meta/meta-store.js';
import { BloomFilter } from './bloom-filter.js';

const ABSENT = -1;
/** `lookup()`: LevelDB may hold the fingerprint; `prepare()` it first. */
export const MAYBE_STORED = -2;

export interface DedupCounters {
  lookups: number;
  bloomSkips: number;
  storeReads: number;
}

interface Entry {
  chunkId: number; // ABSENT caches a known miss
  /** LevelDB holds this mapping (or, for ABSENT, holds nothing for the key). */
  persisted: boolean;
  fingerprint: Buffer;
}

/** The in-memory key of a fingerprint: its first 48 bits. */
function keyOf(fingerprint: Buffer): number {
  return fingerprint.readUInt32BE(0) * 0x10000 + fingerprint.readUInt16BE(4);
}

export class DedupIndex {
  private readonly cache = new Map<number, Entry>(); // insertion order = LRU order
  private readonly dirty = new Map<number, { fingerprint: Buffer; chunkId: number | null }>();
  readonly counters: DedupCounters = { lookups: 0, bloomSkips: 0, storeReads: 0 };

  constructor(
    private readonly store: MetaStore,
    readonly bloom: BloomFilter,
    private readonly maxEntries: number,
  ) {}

  /**
   * The candidate chunk for a fingerprint if known in memory (marking it recently used),
   * undefined if surely not stored, or MAYBE_STORED if LevelDB must be asked (`prepare`).
   */
  lookup(fingerprint: Buffer): number | undefined {
    this.counters.lookups += 1;
    const key = keyOf(fingerprint);
    const entry = this.cache.get(key);
    if (entry !== undefined) {
      if (entry.chunkId === ABSENT || !entry.fingerprint.equals(fingerprint)) return undefined;
      this.cache.delete(key);
      this.cache.set(key, entry);
      return entry.chunkId;
    }
    if (!this.bloom.mightContain(fingerprint)) {
      this.counters.bloomSkips += 1;
      return undefined;
    }
    return MAYBE_STORED;
  }

  /** Makes `lookup` answer for these fingerprints without I/O (until evicted). */
  async prepare(fingerprints: Buffer[]): Promise<void> {
    const wanted: Buffer[] = [];
    for (const fingerprint of fingerprints) {
      if (this.cache.has(keyOf(fingerprint)) || !this.bloom.mightContain(fingerprint)) continue;
      wanted.push(fingerprint);
    }
    if (wanted.length === 0) return;
    this.counters.storeReads += wanted.length;
    const values = await this.store.getMany('fingerprints', wanted);
    wanted.forEach((fingerprint, i) => {
      const key = keyOf(fingerprint);
      if (!this.cache.has(key)) this.remember(key, { chunkId: values[i] === undefined ? ABSENT : decodeU64Key(values[i]!), persisted: true, fingerprint: Buffer.from(fingerprint) });
    });
  }

  insert(fingerprint: Buffer, chunkId: number): void {
    const key = keyOf(fingerprint);
    this.dirty.delete(key);
    this.remember(key, { chunkId, persisted: false, fingerprint: Buffer.from(fingerprint) });
    this.bloom.add(fingerprint);
  }

  /** The chunk is freed: drop its entry if the entry still names it. */
  remove(fingerprint: Buffer, chunkId: number): void {
    const key = keyOf(fingerprint);
    const cached = this.cache.get(key);
    if (cached !== undefined && cached.chunkId !== chunkId && cached.chunkId !== ABSENT) return;
    // An entry inserted in this session and never written needs no delete: forget it.
    if (cached !== undefined && !cached.persisted && !this.dirty.has(key)) {
      this.cache.delete(key);
      return;
    }
    this.remember(key, { chunkId: ABSENT, persisted: false, fingerprint });
    this.dirty.set(key, { fingerprint, chunkId: null });
  }

  /** Pending index writes into `ops`; with `everything`, also every entry never written (close). */
  capture(ops: MetaOp[], everything = false): void {
    if (everything) {
      for (const [key, entry] of this.cache) {
        if (!entry.persisted && entry.chunkId !== ABSENT) this.dirty.set(key, { fingerprint: entry.fingerprint, chunkId: entry.chunkId });
        entry.persisted = true;
      }
    }
    for (const { fingerprint, chunkId } of this.dirty.values()) {
      ops.push(chunkId === null ? { type: 'del', sublevel: 'fingerprints', key: fingerprint } : { type: 'put', sublevel: 'fingerprints', key: fingerprint, value: u64Key(chunkId) });
    }
    this.dirty.clear();
    this.bloom.capture(ops, everything);
  }

  get size(): number {
    return this.cache.size;
  }

  /** Entries waiting to be written to LevelDB (the caller commits when there are many). */
  get pendingWrites(): number {
    return this.dirty.size;
  }

  private remember(key: number, entry: Entry): void {
    this.cache.delete(key);
    this.cache.set(key, entry);
    if (this.cache.size <= this.maxEntries) return;
    // Evict the oldest eighth in one pass: one iterator walk instead of one per insert (a Map
    // iterator skips the holes earlier deletes left at its front, which makes that costly).
    let toEvict = this.cache.size - Math.floor(this.maxEntries * 0.875);
    for (const [oldestKey, oldest] of this.cache) {
      if (toEvict-- <= 0) break;
      this.cache.delete(oldestKey);
      // Write-back: an entry leaving memory that LevelDB does not hold yet is written now.
      if (!oldest.persisted && oldest.chunkId !== ABSENT) this.dirty.set(oldestKey, { fingerprint: oldest.fingerprint, chunkId: oldest.chunkId });
    }
  }
}
