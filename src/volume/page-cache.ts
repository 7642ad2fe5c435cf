/**
 * A bounded cache of metadata pages (volume-map pages, chunk-table pages) over the metadata store.
 *
 * Why pages: the hot path must never await a LevelDB get per logical block, and memory must stay
 * within the cache budget however much is stored. Grouping 1024 map entries (or 256 chunk
 * entries) per LevelDB value makes a miss cost one get per page, and an LRU over pages bounds
 * memory. Replacement is second-chance FIFO (CLOCK): a hit only sets the page's `referenced`
 * flag, and eviction gives a referenced page one more round; reordering a Map on every hit (a
 * true LRU) cost about 0.2 µs per lookup, several lookups per block written.
 *
 * Page life cycle: loaded (or created empty) → mutated (version + 1, dirty since journal value
 * `firstDirtySeq`; the change itself is in the metadata journal) → captured for write-back by a
 * commit (its encoded bytes at that version) → persisted (persistedVersion = captured version once
 * the batch has resolved). Pages are written back lazily, oldest first change first (see
 * `captureWriteback` and the policy in flash-array.ts): a page changed a thousand times between
 * two write-backs costs one put. A page may be evicted only when it is clean (persistedVersion ==
 * version), unpinned, and not being captured, so an evicted page can always be reloaded as it was.
 *
 * The dirty set is kept in the order pages became dirty, which is the order of their
 * `firstDirtySeq`, so the journal's trim point (the smallest `firstDirtySeq`) is its first entry
 * and write-back takes from its front. Only a failed batch can disorder it (its pages go back with
 * their old seq); the next use sorts it again.
 *
 * Counters (for the metrics): a hit is a `get` that finds its page in memory; a miss is a page
 * read from the store by `load`, which is what a miss costs. Each is one integer increment on a
 * path that runs anyway. A page looked up before it is loaded counts a miss for its read and a hit
 * for the lookup that follows the load.
 */
import { fail } from '../common/assert.js';
import type { MetaOp, MetaStore, Sublevel } from '../meta/meta-store.js';

export interface CachedPage {
  /** Used since eviction last looked at it. */
  referenced: boolean;
  version: number;
  persistedVersion: number;
  pins: number;
  readonly sizeBytes: number;
  /** Encoded value, or null when the page holds nothing (its key is deleted). */
  encode(): Buffer | null;
}

export interface CapturedPage<P> {
  id: number;
  page: P;
  version: number;
  firstDirtySeq: number;
}

export interface WritebackChoice {
  /** Capture every dirty page whose first change is in a journal value below this seq... */
  beforeSeq: number;
  /** ...and this many more of the oldest others... */
  extraPages: number;
  /** ...but never more than this many in all. */
  maxPages: number;
}

export class PageCache<P extends CachedPage> {
  private readonly pages = new Map<number, P>(); // insertion order = the CLOCK's order
  private readonly loading = new Map<number, Promise<void>>();
  /** Dirty page id → seq of the journal value holding its first unwritten change. */
  private readonly dirty = new Map<number, number>();
  private dirtyOrderBroken = false;
  private bytes = 0;
  /** While above 0, inserting a page evicts nothing (see `holdEvictions`). */
  private holds = 0;
  /** Lookups (`get`) that found their page in memory. */
  hits = 0;
  /** Pages read from the store (`load`). */
  misses = 0;

  constructor(
    private readonly store: MetaStore,
    private readonly sublevel: Sublevel,
    private readonly keyOf: (id: number) => Buffer,
    private readonly decode: (id: number, bytes: Buffer | undefined) => P,
    private readonly budgetBytes: number,
  ) {}

  get budget(): number {
    return this.budgetBytes;
  }

  get cachedBytes(): number {
    return this.bytes;
  }

  /** Approximate: every cached page has about the same size. */
  get dirtyBytes(): number {
    const first = this.pages.values().next().value as P | undefined;
    return this.dirty.size * (first?.sizeBytes ?? 0);
  }

  get dirtyCount(): number {
    return this.dirty.size;
  }

  /** The page if it is in memory (and marks it recently used). */
  get(id: number): P | undefined {
    const page = this.pages.get(id);
    if (page !== undefined) {
      page.referenced = true;
      this.hits += 1;
    }
    return page;
  }

  /** The page if it is in memory, without marking it used. */
  peek(id: number): P | undefined {
    return this.pages.get(id);
  }

  has(id: number): boolean {
    return this.pages.has(id);
  }

  /** Loads every missing page in one getMany; concurrent loads of a page share one read. */
  async load(ids: Iterable<number>): Promise<void> {
    const waits: Promise<void>[] = [];
    const missing: number[] = [];
    for (const id of new Set(ids)) {
      if (this.pages.has(id)) continue;
      const pending = this.loading.get(id);
      if (pending !== undefined) waits.push(pending);
      else missing.push(id);
    }
    if (missing.length > 0) {
      this.misses += missing.length;
      const read = this.store.getMany(this.sublevel, missing.map(this.keyOf)).then((values) => {
        missing.forEach((id, i) => {
          if (!this.pages.has(id)) this.insert(id, this.decode(id, values[i]));
        });
      });
      const shared = read.finally(() => missing.forEach((id) => this.loading.delete(id)));
      missing.forEach((id) => this.loading.set(id, shared));
      waits.push(shared);
    }
    await Promise.all(waits);
  }

  /**
   * Loads and pins every page of `ids`, however small the budget: each page is pinned in the same
   * turn its load completes, so later loads cannot evict it (the cache may exceed its budget by
   * the pinned pages until they are released). Returns the unpin function.
   */
  async loadPinned(ids: Iterable<number>): Promise<() => void> {
    const wanted = [...new Set(ids)];
    const unpins: Array<() => void> = [];
    const pinned = new Set<number>();
    const release = () => unpins.splice(0).forEach((unpin) => unpin());
    try {
      for (let attempt = 0; attempt < 1000; attempt++) {
        const missing = wanted.filter((id) => !pinned.has(id));
        if (missing.length === 0) return release;
        if (missing.some((id) => !this.pages.has(id))) await this.load(missing);
        const present = missing.filter((id) => this.pages.has(id));
        unpins.push(this.pin(present));
        for (const id of present) pinned.add(id);
      }
    } catch (error) {
      release();
      throw error;
    }
    release();
    throw new Error('pages kept disappearing while being loaded');
  }

  /** Adds a page known not to exist in the store (a new chunk-table page). */
  create(id: number): P {
    if (!(!this.pages.has(id))) fail(`page ${id} already cached`);
    const page = this.decode(id, undefined);
    this.insert(id, page);
    return page;
  }

  /** The page changed; the change is in the journal value `seq`. */
  markDirty(id: number, page: P, seq: number): void {
    page.version += 1;
    if (!this.dirty.has(id)) this.dirty.set(id, seq);
  }

  /** The smallest `firstDirtySeq` of any dirty page, or undefined when none is dirty. */
  minDirtySeq(): number | undefined {
    this.restoreDirtyOrder();
    return this.dirty.values().next().value as number | undefined;
  }

  /**
   * Encodes the pages `choice` selects, oldest first change first, into `ops`, and returns what
   * was captured, for `settle()`. Captured pages are no longer dirty; a change made before the
   * batch resolves makes a page dirty again (with the next journal seq).
   */
  captureWriteback(ops: MetaOp[], choice: WritebackChoice): Array<CapturedPage<P>> {
    this.restoreDirtyOrder();
    const captured: Array<CapturedPage<P>> = [];
    let extra = choice.extraPages;
    for (const [id, firstDirtySeq] of this.dirty) {
      if (captured.length >= choice.maxPages) break;
      if (firstDirtySeq >= choice.beforeSeq) {
        if (extra <= 0) break;
        extra -= 1;
      }
      const page = this.pages.get(id)!;
      const value = page.encode();
      const key = this.keyOf(id);
      ops.push(value === null ? { type: 'del', sublevel: this.sublevel, key } : { type: 'put', sublevel: this.sublevel, key, value });
      page.pins += 1; // not evictable until the batch resolves
      captured.push({ id, page, version: page.version, firstDirtySeq });
    }
    for (const { id } of captured) this.dirty.delete(id);
    return captured;
  }

  /** The batch holding `captured` has resolved (or failed: then the pages become dirty again). */
  settle(captured: Array<CapturedPage<P>>, ok: boolean): void {
    for (const { id, page, version, firstDirtySeq } of captured) {
      page.pins -= 1;
      if (ok) {
        page.persistedVersion = Math.max(page.persistedVersion, version);
      } else {
        // Its changes since `firstDirtySeq` are still only in the journal.
        this.dirty.set(id, Math.min(firstDirtySeq, this.dirty.get(id) ?? firstDirtySeq));
        this.dirtyOrderBroken = true;
      }
    }
    this.evict();
  }

  pin(ids: Iterable<number>): () => void {
    const pinned: P[] = [];
    for (const id of ids) {
      const page = this.pages.get(id);
      if (page !== undefined) {
        page.pins += 1;
        pinned.push(page);
      }
    }
    return () => {
      for (const page of pinned) page.pins -= 1;
    };
  }

  /** Every cached page, for scans that must see unpersisted changes (audit, delete). */
  cachedEntries(): IterableIterator<[number, P]> {
    return this.pages.entries();
  }

  /** Drops a clean page for good (its key is gone from the store). */
  forget(id: number): void {
    const page = this.pages.get(id);
    if (page === undefined) return;
    this.pages.delete(id);
    this.dirty.delete(id);
    this.bytes -= page.sizeBytes;
  }

  private restoreDirtyOrder(): void {
    if (!this.dirtyOrderBroken) return;
    this.dirtyOrderBroken = false;
    const sorted = [...this.dirty].sort((a, b) => a[1] - b[1]);
    this.dirty.clear();
    for (const [id, seq] of sorted) this.dirty.set(id, seq);
  }

  /**
   * Until the returned function is called, no page is evicted (the cache may exceed its budget
   * meanwhile): the write path plans a change against pages it found cached, then applies it, and
   * a chunk-table page created in between must not evict one the plan relies on.
   */
  holdEvictions(): () => void {
    this.holds += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.holds -= 1;
      if (this.holds === 0) this.evict();
    };
  }

  /** Makes room first, so the page just inserted is never the one evicted. */
  private insert(id: number, page: P): void {
    if (this.holds === 0) this.evict(page.sizeBytes);
    this.pages.set(id, page);
    this.bytes += page.sizeBytes;
  }

  private evict(incomingBytes = 0): void {
    if (this.bytes + incomingBytes <= this.budgetBytes) return;
    // At most two rounds: the first may only clear reference flags (a second chance: the page
    // moves to the back); pinned and dirty pages are never evicted.
    let budget = 2 * this.pages.size;
    for (const [id, page] of this.pages) {
      if (this.bytes + incomingBytes <= this.budgetBytes || budget-- <= 0) return;
      if (page.pins > 0 || page.version !== page.persistedVersion) continue;
      if (page.referenced) {
        page.referenced = false;
        this.pages.delete(id);
        this.pages.set(id, page);
        continue;
      }
      this.pages.delete(id);
      this.bytes -= page.sizeBytes;
    }
  }
}
