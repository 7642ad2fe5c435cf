/**
 * The global dedup index: fingerprint → chunk id, for every volume of the array.
 *
 * In memory it is one open-addressing hash table in one typed array (linear probing, 16 bytes a
 * slot, four u32: the fingerprint's high and low halves, the chunk id's low 32 bits, and its high
 * bits above a byte of state and flags), sized once from the cache budget. A lookup, an insert or
 * a removal is a probe or two into that array and allocates nothing (a Map of objects cost about
 * 1 µs each on the write path, and ten times the memory). A slot is one aligned 16-byte unit, so a
 * probe touches one cache line: with the fingerprint, chunk and flags in four separate arrays
 * every probe of a table far larger than the CPU caches missed three times (lookup + insert +
 * remove of a unique overwrite cost 3.7-4.8 µs per block at 1.5 M entries, /tmp/pw/dedup-bench.mjs
 * in the commit that made this change). Entries leave it by CLOCK (a reference bit per slot, a sweeping hand), 1/32 of the
 * table at a time, and only when live entries fill it: when tombstones of freed chunks do, the
 * table is rebuilt without them instead. The hand does not sweep slots in order but by a large odd
 * stride (every slot once per turn, scattered): slot order is hash order, so a hand moving in it
 * emptied one stretch of the table at a time while new entries landed everywhere, and the stretch
 * ahead of the hand filled up until probes ran through runs of 20,000 slots (a 20 GiB unique
 * write slowed to 2 MB/s once the table had turned over a few times).
 *
 * `lookup()` answers "this chunk", "surely not stored" (the Bloom filter says so), or "maybe in
 * LevelDB": then `prepare()` reads the 'fingerprints' sublevel (key = the 8-byte fingerprint,
 * value = u64 chunk id) in one batch for all such fingerprints of a request. So unique data never
 * waits for LevelDB, and a second copy finds its chunks. The Bloom filter answers only for what
 * LevelDB may hold: a fingerprint is added to it when its entry is queued for writing there, not
 * when it enters the table (the table answers for those), so writing unique data costs no Bloom
 * filter probes while the table holds everything (six random memory accesses a block otherwise).
 *
 * The index is advice, as in dm-vdo: a candidate is shared only after the write path has checked
 * that the chunk is live, carries the same fingerprint, and holds the same bytes. So a stale entry
 * (a chunk freed since, a crash) can cost a dedup opportunity but never alias data.
 *
 * Write-back: a new entry lives only in memory until it is evicted (or the array closes, or a
 * checkpoint), and only then is it written to LevelDB, in the next commit's batch. A working set
 * that fits in memory costs no LevelDB write at all. A crash forgets the entries never written:
 * their chunks stay intact, only the chance to share them with later writes is lost.
 */
import { adviseHugePages } from '../common/native.js';
import { decodeU64Key, u64Key } from '../meta/keys.js';
import type { MetaOp, MetaStore } from '../meta/meta-store.js';
import { BloomFilter } from './bloom-filter.js';
import { FINGERPRINT_BYTES } from './fingerprint.js';

/** `lookup()`: LevelDB may hold the fingerprint; `prepare()` it first. */
export const MAYBE_STORED = -2;

/** Bytes of memory one slot of the table takes. */
export const DEDUP_SLOT_BYTES = 16;

export interface DedupCounters {
  lookups: number;
  bloomSkips: number;
  storeReads: number;
}

// A slot's four u32 words.
const HIGH = 0;
const LOW = 1;
const CHUNK_LOW = 2;
/** The chunk id's bits above 32 (shifted up by 8) and the state and flag bits below them. */
const CHUNK_HIGH_STATE = 3;
const WORDS = 4;
// Slot states (the low two bits of CHUNK_HIGH_STATE). A zeroed table is all empty.
const EMPTY = 0;
const LIVE = 1;
const TOMBSTONE = 2;
/** A known miss: LevelDB holds nothing for the fingerprint (or its deletion is pending). */
const ABSENT = 3;
const STATE_MASK = 3;
// Flag bits.
const PERSISTED = 4;
const REFERENCED = 8;
/** Set on every entry while `rehash` runs: not yet moved to its new slot. */
const MOVING = 16;
/** Chunk ids are safe integers: at most 2^53 - 1, so the high part fits in 21 bits. */
const TWO_TO_32 = 0x1_0000_0000;
/** Fill (entries + tombstones) above which the table makes room. */
const MAX_LOAD = 0.75;
/** Eviction frees 1/EVICT_SHARE of the capacity at a time (its LevelDB writes go in one commit). */
const EVICT_SHARE = 32;

export class DedupIndex {
  /** WORDS u32 per slot (see the design note). */
  private readonly table: Uint32Array;
  private readonly mask: number;
  /** The CLOCK hand's stride: odd, so it visits every slot of the power-of-two table once a turn. */
  private readonly handStep: number;
  private entries = 0;
  private tombstones = 0;
  private hand = 0;
  /** Where `captureUnwritten` goes on. */
  private unwrittenCursor = 0;
  /** Live entries LevelDB lacks (neither written nor evicted yet): what a checkpoint must write. */
  private unwritten = 0;
  /** Writes for LevelDB, by fingerprint (hex): a chunk id to put, or null to delete. */
  private readonly dirty = new Map<string, { fingerprint: Buffer; chunkId: number | null }>();
  readonly counters: DedupCounters = { lookups: 0, bloomSkips: 0, storeReads: 0 };

  /** A table of the largest power-of-two size that fits in `budgetBytes` (at least 1024 slots). */
  constructor(
    private readonly store: MetaStore,
    readonly bloom: BloomFilter,
    budgetBytes: number,
  ) {
    let slots = 1024;
    while (slots * 2 * DEDUP_SLOT_BYTES <= budgetBytes) slots *= 2;
    this.table = new Uint32Array(slots * WORDS);
    // Every lookup, insert and removal lands at random in the table: with 4 KiB pages nearly each
    // one also missed the TLB (a two-level page walk in a virtual machine). With 2 MiB pages the
    // three of a unique overwrite cost 0.71-0.79 us instead of 1.20-1.26 (a 512 MiB table, warm;
    // `node build/scripts/stage-costs.js` measures a fresh 256 MiB one). Nothing else changes:
    // the table is counted in the budget whole, as before.
    adviseHugePages?.(this.table);
    this.mask = slots - 1;
    this.handStep = Math.floor(slots * 0.6180339887) | 1;
  }

  /** Entries the table holds before it evicts. */
  get capacity(): number {
    return Math.floor((this.mask + 1) * MAX_LOAD);
  }

  get size(): number {
    return this.entries;
  }

  get memoryBytes(): number {
    return (this.mask + 1) * DEDUP_SLOT_BYTES;
  }

  /** The longest run of occupied slots (entries and tombstones): the worst probe a lookup can take. */
  longestRun(): number {
    let longest = 0;
    let run = 0;
    // Twice round, so a run that wraps past the last slot is counted whole.
    for (let k = 0; k <= 2 * this.mask + 1; k++) {
      run = this.state(k & this.mask) === EMPTY ? 0 : run + 1;
      if (run > longest) longest = run;
    }
    return Math.min(longest, this.mask + 1);
  }

  /** Entries waiting to be written to LevelDB (the caller commits when there are many). */
  get pendingWrites(): number {
    return this.dirty.size;
  }

  /**
   * The candidate chunk for the fingerprint at `bytes[at..at + 8]` if known in memory, undefined if
   * surely not stored, or MAYBE_STORED if LevelDB must be asked (`prepare`). Fingerprints are
   * given as (bytes, offset) here and below: the write path reads a batch's fingerprints in place,
   * without a view of each.
   */
  lookupAt(bytes: Uint8Array, at: number): number | undefined {
    this.counters.lookups += 1;
    const slot = this.find(u32be(bytes, at), u32be(bytes, at + 4));
    if (slot >= 0) {
      this.table[slot * WORDS + CHUNK_HIGH_STATE] |= REFERENCED;
      return this.state(slot) === ABSENT ? undefined : this.chunkAt(slot);
    }
    if (!this.bloom.mightContainAt(bytes, at)) {
      this.counters.bloomSkips += 1;
      return undefined;
    }
    return MAYBE_STORED;
  }

  /** Makes `lookup` answer for these fingerprints without I/O (until evicted). */
  async prepare(fingerprints: Buffer[]): Promise<void> {
    const wanted: Buffer[] = [];
    for (const fingerprint of fingerprints) {
      if (this.find(fingerprint.readUInt32BE(0), fingerprint.readUInt32BE(4)) >= 0 || !this.bloom.mightContain(fingerprint)) continue;
      wanted.push(Buffer.from(fingerprint));
    }
    if (wanted.length === 0) return;
    this.counters.storeReads += wanted.length;
    const values = await this.store.getMany('fingerprints', wanted);
    wanted.forEach((fingerprint, i) => {
      const high = fingerprint.readUInt32BE(0);
      const low = fingerprint.readUInt32BE(4);
      if (this.find(high, low) >= 0) return; // inserted meanwhile: that one is newer
      if (values[i] === undefined) this.put(high, low, 0, ABSENT);
      else this.put(high, low, decodeU64Key(values[i]!), LIVE | PERSISTED);
    });
  }

  insertAt(bytes: Uint8Array, at: number, chunkId: number): void {
    const high = u32be(bytes, at);
    const low = u32be(bytes, at + 4);
    // A pending deletion of an older mapping is overtaken: the new one is written on eviction.
    if (this.dirty.size > 0) this.dirty.delete(hexAt(bytes, at));
    const slot = this.find(high, low);
    if (slot >= 0) this.setSlot(slot, chunkId, LIVE | REFERENCED);
    else this.put(high, low, chunkId, LIVE);
  }

  /** The chunk is freed: drop its entry if the entry still names it. */
  removeAt(bytes: Uint8Array, at: number, chunkId: number): void {
    const high = u32be(bytes, at);
    const low = u32be(bytes, at + 4);
    const slot = this.find(high, low);
    const state = slot >= 0 ? this.state(slot) : EMPTY;
    if (state === LIVE && this.chunkAt(slot) !== chunkId) return;
    if (state === LIVE && (this.table[slot * WORDS + CHUNK_HIGH_STATE]! & PERSISTED) === 0) {
      // Inserted in this session and never written: nothing in LevelDB to delete.
      this.forget(slot);
      return;
    }
    // LevelDB may hold it (written, or evicted since): delete it there, and remember the miss.
    if (slot >= 0) this.setSlot(slot, 0, ABSENT);
    else this.put(high, low, 0, ABSENT);
    this.dirty.set(hexAt(bytes, at), { fingerprint: Buffer.from(bytes.subarray(at, at + FINGERPRINT_BYTES)), chunkId: null });
  }

  /**
   * Up to `maxEntries` entries LevelDB lacks, from the table into `ops` as puts, marked written
   * (and so added to the Bloom filter) at once, walking at most `maxSlots` slots (a mostly empty
   * table of 16 M slots, the default budget's, took 140-180 ms to walk in one turn); returns true
   * once the walk has passed the last slot (at once when no entry is unwritten: the count is kept
   * as entries change). A checkpoint calls this until then, writing the entries in batches of
   * their own before the checkpoint's commit: one batch of
   * the whole table held about 1 KiB of heap per entry (1.1 GB for a full table at the default
   * budget, 370 MB at --cache-mb 64) until LevelDB had written it. Every call walks on from where
   * the last one stopped (`from` 0 restarts): a rehash in between may move an entry behind the
   * cursor, and then the commit's `capture(ops, true)` writes it. A slice whose batch fails loses
   * only the advice it held, as a crash would.
   */
  captureUnwritten(ops: MetaOp[], maxEntries: number, maxSlots: number, from?: number): boolean {
    if (from !== undefined) this.unwrittenCursor = from;
    if (this.unwritten === 0) this.unwrittenCursor = this.mask + 1;
    let count = 0;
    const lastSlot = Math.min(this.mask, this.unwrittenCursor + maxSlots - 1);
    for (; this.unwrittenCursor <= lastSlot && count < maxEntries; this.unwrittenCursor++) {
      const slot = this.unwrittenCursor;
      const word = this.table[slot * WORDS + CHUNK_HIGH_STATE]!;
      if ((word & STATE_MASK) !== LIVE || (word & PERSISTED) !== 0) continue;
      const fingerprint = this.fingerprintAt(slot);
      // A pending deletion of this fingerprint is overtaken by the put (see `insert`).
      if (this.dirty.size > 0) this.dirty.delete(hexAt(fingerprint, 0));
      ops.push({ type: 'put', sublevel: 'fingerprints', key: fingerprint, value: u64Key(this.chunkAt(slot)) });
      this.bloom.add(fingerprint);
      this.table[slot * WORDS + CHUNK_HIGH_STATE] = word | PERSISTED;
      this.unwritten -= 1;
      count += 1;
    }
    return this.unwrittenCursor > this.mask;
  }

  /** Live entries LevelDB lacks: what the next checkpoint writes. */
  get unwrittenEntries(): number {
    return this.unwritten;
  }

  /** Pending index writes into `ops`; with `everything`, also every entry never written (close, checkpoint). */
  capture(ops: MetaOp[], everything = false): void {
    if (everything && this.unwritten > 0) {
      const table = this.table;
      for (let slot = 0; slot <= this.mask && this.unwritten > 0; slot++) {
        const word = table[slot * WORDS + CHUNK_HIGH_STATE]!;
        if ((word & STATE_MASK) !== LIVE || (word & PERSISTED) !== 0) continue;
        this.queueWrite(this.fingerprintAt(slot), this.chunkAt(slot));
        table[slot * WORDS + CHUNK_HIGH_STATE] = word | PERSISTED;
        this.unwritten -= 1;
      }
    }
    for (const { fingerprint, chunkId } of this.dirty.values()) {
      ops.push(chunkId === null ? { type: 'del', sublevel: 'fingerprints', key: fingerprint } : { type: 'put', sublevel: 'fingerprints', key: fingerprint, value: u64Key(chunkId) });
    }
    this.dirty.clear();
    this.bloom.capture(ops, everything);
  }

  /** Queues a mapping for LevelDB; from now on the Bloom filter says LevelDB may hold it. */
  private queueWrite(fingerprint: Buffer, chunkId: number): void {
    this.dirty.set(hexAt(fingerprint, 0), { fingerprint, chunkId });
    this.bloom.add(fingerprint);
  }

  // ---- The table -----------------------------------------------------------------------------

  /** The slot holding this fingerprint (live or a known miss), or -1. */
  private find(high: number, low: number): number {
    const table = this.table;
    for (let slot = low & this.mask, probes = 0; probes <= this.mask; slot = (slot + 1) & this.mask, probes++) {
      const at = slot * WORDS;
      const state = table[at + CHUNK_HIGH_STATE]! & STATE_MASK;
      if (state === EMPTY) return -1;
      if (state !== TOMBSTONE && table[at + LOW] === low && table[at + HIGH] === high) return slot;
    }
    return -1;
  }

  private state(slot: number): number {
    return this.table[slot * WORDS + CHUNK_HIGH_STATE]! & STATE_MASK;
  }

  private chunkAt(slot: number): number {
    const at = slot * WORDS;
    return (this.table[at + CHUNK_HIGH_STATE]! >>> 8) * TWO_TO_32 + this.table[at + CHUNK_LOW]!;
  }

  /** Sets a slot's chunk id and its state and flags (`bits`). */
  private setSlot(slot: number, chunkId: number, bits: number): void {
    const at = slot * WORDS;
    this.unwritten -= isUnwritten(this.table[at + CHUNK_HIGH_STATE]!);
    this.table[at + CHUNK_LOW] = chunkId >>> 0;
    this.table[at + CHUNK_HIGH_STATE] = ((Math.floor(chunkId / TWO_TO_32) << 8) | bits) >>> 0;
    this.unwritten += isUnwritten(bits);
  }

  /** Adds an entry known not to be in the table; `bits` holds its state (LIVE or ABSENT) and flags. */
  private put(high: number, low: number, chunkId: number, bits: number): void {
    if (this.entries + this.tombstones + 1 > this.capacity) this.makeRoom();
    let slot = low & this.mask;
    for (let state = this.state(slot); state !== EMPTY && state !== TOMBSTONE; state = this.state(slot)) slot = (slot + 1) & this.mask;
    if (this.state(slot) === TOMBSTONE) this.tombstones -= 1;
    this.table[slot * WORDS + HIGH] = high;
    this.table[slot * WORDS + LOW] = low;
    this.setSlot(slot, chunkId, bits | REFERENCED);
    this.entries += 1;
  }

  private forget(slot: number): void {
    this.setSlot(slot, 0, TOMBSTONE);
    this.entries -= 1;
    this.tombstones += 1;
  }

  private fingerprintAt(slot: number): Buffer {
    const fingerprint = Buffer.allocUnsafe(FINGERPRINT_BYTES);
    fingerprint.writeUInt32BE(this.table[slot * WORDS + HIGH]!, 0);
    fingerprint.writeUInt32BE(this.table[slot * WORDS + LOW]!, 4);
    return fingerprint;
  }

  /**
   * CLOCK: sweeps from the hand, clearing reference bits and evicting unreferenced entries until
   * 1/EVICT_SHARE of the capacity is free; an entry LevelDB does not hold yet is queued for writing.
   * Then, if tombstones clog the probes, the table is rebuilt in place.
   */
  private makeRoom(): void {
    // Chunks freed by overwrites leave tombstones, and they alone may fill the table: then
    // dropping them makes the room, and nothing live is evicted (written to LevelDB) for it. A
    // stream overwriting a 512 MiB region evicted 98 K live entries at a time otherwise, and their
    // LevelDB batch held the event loop for 0.6-1.3 s.
    if (this.capacity - this.entries >= this.capacity / 8) {
      this.rehash();
      return;
    }
    const table = this.table;
    let toFree = Math.max(1, Math.floor(this.capacity / EVICT_SHARE));
    for (let steps = 0; toFree > 0 && steps < 2 * (this.mask + 1); steps++) {
      const slot = this.hand;
      this.hand = (this.hand + this.handStep) & this.mask;
      const word = table[slot * WORDS + CHUNK_HIGH_STATE]!;
      const state = word & STATE_MASK;
      if (state === EMPTY || state === TOMBSTONE) continue;
      if ((word & REFERENCED) !== 0) {
        table[slot * WORDS + CHUNK_HIGH_STATE] = word & ~REFERENCED;
        continue;
      }
      if (state === LIVE && (word & PERSISTED) === 0) this.queueWrite(this.fingerprintAt(slot), this.chunkAt(slot));
      this.forget(slot);
      toFree -= 1;
    }
    if (this.tombstones > (this.mask + 1) / 4) this.rehash();
  }

  /**
   * Reinserts every entry (dropping tombstones), so probe chains stay short. In place: it used to
   * reinsert from a copy of the table, up to 15 % of the budget beside it (256 MiB at the default
   * budget of a 24 GB machine). Every entry is marked MOVING first; then each marked entry is
   * taken out and inserted from its home slot at the first slot that is empty or still marked, and
   * an entry found there is taken out and inserted in turn. A placed entry only ever has placed
   * entries between its home and its slot, so every probe chain stays whole. Counts and flags
   * (written, referenced) are unchanged.
   */
  private rehash(): void {
    const table = this.table;
    for (let slot = 0; slot <= this.mask; slot++) {
      const at = slot * WORDS;
      const state = table[at + CHUNK_HIGH_STATE]! & STATE_MASK;
      if (state === TOMBSTONE) table[at + CHUNK_HIGH_STATE] = 0;
      else if (state !== EMPTY) table[at + CHUNK_HIGH_STATE] = table[at + CHUNK_HIGH_STATE]! | MOVING;
    }
    this.tombstones = 0;
    for (let slot = 0; slot <= this.mask; slot++) {
      const at = slot * WORDS;
      if ((table[at + CHUNK_HIGH_STATE]! & MOVING) === 0) continue;
      let high = table[at + HIGH]!;
      let low = table[at + LOW]!;
      let chunkLow = table[at + CHUNK_LOW]!;
      let word = table[at + CHUNK_HIGH_STATE]! & ~MOVING;
      table[at + CHUNK_HIGH_STATE] = 0;
      for (;;) {
        // The first slot from the entry's home that is empty or holds an entry not yet moved.
        let target = low & this.mask;
        for (let found = table[target * WORDS + CHUNK_HIGH_STATE]!; (found & STATE_MASK) !== EMPTY && (found & MOVING) === 0; found = table[target * WORDS + CHUNK_HIGH_STATE]!) {
          target = (target + 1) & this.mask;
        }
        // This entry takes the slot; an entry not yet moved that was there is inserted next.
        const to = target * WORDS;
        const displaced = table[to + CHUNK_HIGH_STATE]!;
        const nextHigh = table[to + HIGH]!;
        const nextLow = table[to + LOW]!;
        const nextChunkLow = table[to + CHUNK_LOW]!;
        table[to + HIGH] = high;
        table[to + LOW] = low;
        table[to + CHUNK_LOW] = chunkLow;
        table[to + CHUNK_HIGH_STATE] = word;
        if ((displaced & MOVING) === 0) break;
        high = nextHigh;
        low = nextLow;
        chunkLow = nextChunkLow;
        word = displaced & ~MOVING;
      }
    }
  }
}

/** 1 for a slot word of a live entry LevelDB lacks, else 0. */
function isUnwritten(word: number): number {
  return (word & STATE_MASK) === LIVE && (word & PERSISTED) === 0 ? 1 : 0;
}

function hexAt(bytes: Uint8Array, at: number): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset + at, FINGERPRINT_BYTES).toString('hex');
}

/** The big-endian u32 at `bytes[at..at + 4]`. */
function u32be(bytes: Uint8Array, at: number): number {
  return ((bytes[at]! << 24) | (bytes[at + 1]! << 16) | (bytes[at + 2]! << 8) | bytes[at + 3]!) >>> 0;
}
