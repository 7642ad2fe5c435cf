/**
 * The global dedup index: fingerprint → chunk id, for every volume of the array.
 *
 * Lookups are synchronous against a bounded in-memory LRU; `prepare()` fills it for a request's
 * fingerprints beforehand, asking LevelDB ('fingerprints' sublevel, key = the 32-byte
 * fingerprint, value = u64 chunk id) in one batch only for fingerprints the Bloom filter says may
 * exist. So unique data never waits for LevelDB, and a second copy finds its chunks.
 *
 * Write-back: a new entry lives only in the LRU until it is evicted (or the array closes), and
 * only then is it written to LevelDB, in the next commit's batch. A LevelDB put costs several
 * microseconds of main-thread time, and a working set that fits the LRU (about 1 GiB of unique
 * data per 50 MB of cache) then costs none. A crash forgets the entries never written: their
 * chunks stay intact, only the chance to share them with later writes is lost.
 *
 * Entries may point at chunks freed since (a crash between a free and the commit that removed
 * the entry): the caller treats a candidate as a hit only if the chunk is live, and chunk ids are
 * never reused, so a stale entry can cost a dedup opportunity but never alias data.
 */
import { decodeU64Key, u64Key } from '../meta/keys.js';
import type { MetaOp, MetaStore } from '../meta/meta-store.js';
import { BloomFilter } from './bloom-filter.js';

const ABSENT = -1;

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

export class DedupIndex {
  private readonly cache = new Map<string, Entry>(); // insertion order = LRU order
  private readonly dirty = new Map<string, { fingerprint: Buffer; chunkId: number | null }>();
  readonly counters: DedupCounters = { lookups: 0, bloomSkips: 0, storeReads: 0 };

  constructor(
    private readonly store: MetaStore,
    readonly bloom: BloomFilter,
    private readonly maxEntries: number,
  ) {}

  /** Makes `peek` answer for these fingerprints without I/O (until evicted). */
  async prepare(fingerprints: Buffer[]): Promise<void> {
    const wanted: Buffer[] = [];
    for (const fingerprint of fingerprints) {
      this.counters.lookups += 1;
      const key = fingerprint.toString('base64');
      if (this.cache.has(key)) continue;
      if (!this.bloom.mightContain(fingerprint)) {
        this.counters.bloomSkips += 1;
        continue;
      }
      wanted.push(fingerprint);
    }
    if (wanted.length === 0) return;
    this.counters.storeReads += wanted.length;
    const values = await this.store.getMany('fingerprints', wanted);
    wanted.forEach((fingerprint, i) => {
      const key = fingerprint.toString('base64');
      if (!this.cache.has(key)) this.remember(key, { chunkId: values[i] === undefined ? ABSENT : decodeU64Key(values[i]!), persisted: true, fingerprint });
    });
  }

  /** The candidate chunk for a fingerprint, if known in memory. */
  peek(fingerprint: Buffer): number | undefined {
    const key = fingerprint.toString('base64');
    const entry = this.cache.get(key);
    if (entry === undefined || entry.chunkId === ABSENT) return undefined;
    this.cache.delete(key);
    this.cache.set(key, entry);
    return entry.chunkId;
  }

  insert(fingerprint: Buffer, chunkId: number): void {
    const key = fingerprint.toString('base64');
    this.dirty.delete(key);
    this.remember(key, { chunkId, persisted: false, fingerprint });
    this.bloom.add(fingerprint);
  }

  /** The chunk is freed: drop its entry if the entry still names it. */
  remove(fingerprint: Buffer, chunkId: number): void {
    const key = fingerprint.toString('base64');
    const cached = this.cache.get(key);
    if (cached !== undefined && cached.chunkId !== chunkId && cached.chunkId !== ABSENT) return;
    // An entry inserted in this session and never written needs no delete.
    const neverWritten = cached !== undefined && !cached.persisted && !this.dirty.has(key);
    this.remember(key, { chunkId: ABSENT, persisted: neverWritten, fingerprint });
    if (neverWritten) this.dirty.delete(key);
    else this.dirty.set(key, { fingerprint, chunkId: null });
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

  private remember(key: string, entry: Entry): void {
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
