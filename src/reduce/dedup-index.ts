/**
 * The global dedup index: fingerprint → chunk id, for every volume of the array.
 *
 * Lookups are synchronous against a bounded in-memory LRU; `prepare()` fills it for a request's
 * fingerprints beforehand, asking LevelDB ('fingerprints' sublevel, key = the 32-byte
 * fingerprint, value = u64 chunk id) in one batch only for fingerprints the Bloom filter says may
 * exist. So unique data never waits for LevelDB, and a second copy finds its chunks.
 *
 * Entries may point at chunks freed since (a crash between a free and the commit that removed
 * the entry, or an LRU entry evicted before its removal was written): the caller treats a
 * candidate as a hit only if the chunk is live, and chunk ids are never reused, so a stale entry
 * can cost a dedup opportunity but never alias data.
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

export class DedupIndex {
  private readonly cache = new Map<string, number>(); // LRU; ABSENT caches a known miss
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
      if (!this.cache.has(key)) this.remember(key, values[i] === undefined ? ABSENT : decodeU64Key(values[i]!));
    });
  }

  /** The candidate chunk for a fingerprint, if known in memory. */
  peek(fingerprint: Buffer): number | undefined {
    const key = fingerprint.toString('base64');
    const chunkId = this.cache.get(key);
    if (chunkId === undefined || chunkId === ABSENT) return undefined;
    this.cache.delete(key);
    this.cache.set(key, chunkId);
    return chunkId;
  }

  insert(fingerprint: Buffer, chunkId: number): void {
    const key = fingerprint.toString('base64');
    this.remember(key, chunkId);
    this.bloom.add(fingerprint);
    this.dirty.set(key, { fingerprint, chunkId });
  }

  /** The chunk is freed: drop its entry if the entry still names it. */
  remove(fingerprint: Buffer, chunkId: number): void {
    const key = fingerprint.toString('base64');
    const cached = this.cache.get(key);
    if (cached !== undefined && cached !== chunkId && cached !== ABSENT) return;
    this.remember(key, ABSENT);
    this.dirty.set(key, { fingerprint, chunkId: null });
  }

  capture(ops: MetaOp[]): void {
    for (const { fingerprint, chunkId } of this.dirty.values()) {
      ops.push(chunkId === null ? { type: 'del', sublevel: 'fingerprints', key: fingerprint } : { type: 'put', sublevel: 'fingerprints', key: fingerprint, value: u64Key(chunkId) });
    }
    this.dirty.clear();
    this.bloom.capture(ops);
  }

  get size(): number {
    return this.cache.size;
  }

  private remember(key: string, chunkId: number): void {
    this.cache.delete(key);
    this.cache.set(key, chunkId);
    while (this.cache.size > this.maxEntries) {
      const oldest = this.cache.keys().next().value as string;
      this.cache.delete(oldest);
    }
  }
}
