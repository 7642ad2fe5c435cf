/**
 * A Bloom filter over fingerprints, so that a write of new data can learn "not stored before"
 * without a LevelDB lookup. It only ever answers "maybe" or "no": a "maybe" costs one batched
 * lookup, a "no" costs nothing. Deleted fingerprints stay set (a Bloom filter cannot forget), which
 * only adds false "maybe"s. A false "no" would store a second copy of data already stored and lose
 * the index's entry for the first (a missed dedup, never wrong data: see dedup-index.ts); the
 * filter is built so that it never gives one.
 *
 * Persistence: the bit array is split into 64 KiB segments; segments changed since they were last
 * written go into a commit's batch ('fingerprints' sublevel, key "B" + u32 segment) at most once a
 * minute, and always at a clean close. Random fingerprints touch every segment, so writing them
 * at every commit would cost megabytes per commit. So the segments in LevelDB may lack bits set
 * since, and a filter of another size (its size follows the memory budget, --cache-mb) sets its
 * bits at other positions: either way, loaded as it is, the filter would answer "no" for
 * fingerprints LevelDB holds. Hence the record `RECORD_KEY` (the filter's size in bytes), written
 * only by a clean close, after every segment, and deleted by the open that loads the segments:
 * the segments are trusted only when it is there and names this size. Otherwise (a crash, another
 * budget, an array from before the record) the filter answers "maybe" to everything until
 * `rebuild` has added every fingerprint of the index in LevelDB to it, in the background; writes
 * of new data meanwhile look their fingerprints up in LevelDB.
 */
import { adviseHugePages } from '../common/native.js';
import type { MetaOp, MetaStore } from '../meta/meta-store.js';

export const SEGMENT_BYTES = 64 * 1024;
const HASHES = 6;
/** The size record (see the design note): neither a fingerprint (8 bytes) nor a segment key (5). */
const RECORD_KEY = Buffer.from('bloom-bytes', 'latin1');
const FINGERPRINT_KEY_BYTES = 8;
/** Fingerprints `rebuild` adds between two looks at whether it should stop. */
const REBUILD_CHECK_ENTRIES = 4096;

export class BloomFilter {
  private readonly bits: Uint8Array;
  /** 1 for each segment changed since it was last captured. */
  private readonly dirtySegments: Uint8Array;
  /** False until the segments were loaded under a matching record, or rebuilt: answer "maybe". */
  private trusted = true;

  constructor(readonly sizeBytes: number) {
    this.sizeBytes = Math.max(SEGMENT_BYTES, Math.ceil(sizeBytes / SEGMENT_BYTES) * SEGMENT_BYTES);
    this.bits = new Uint8Array(this.sizeBytes);
    adviseHugePages?.(this.bits); // probed at random, as the dedup table is (see there)
    this.dirtySegments = new Uint8Array(this.segmentCount);
  }

  get segmentCount(): number {
    return this.sizeBytes / SEGMENT_BYTES;
  }

  /**
   * Fingerprints are already uniform hashes: their first 8 bytes give the probe positions
   * (double hashing: a + i * b for i in 0..HASHES-1, modulo the bit count).
   */
  mightContain(fingerprint: Buffer): boolean {
    return this.mightContainAt(fingerprint, 0);
  }

  /** `mightContain` of the fingerprint at `bytes[at..at + 8]`. */
  mightContainAt(bytes: Uint8Array, at: number): boolean {
    if (!this.trusted) return true;
    const bitCount = this.sizeBytes * 8;
    const a = (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
    const b = (bytes[at + 4]! | (bytes[at + 5]! << 8) | (bytes[at + 6]! << 16) | (bytes[at + 7]! << 24)) | 1;
    for (let i = 0; i < HASHES; i++) {
      const bit = ((a + Math.imul(i, b)) >>> 0) % bitCount;
      if ((this.bits[bit >>> 3]! & (1 << (bit & 7))) === 0) return false;
    }
    return true;
  }

  add(fingerprint: Buffer): void {
    const bitCount = this.sizeBytes * 8;
    const a = fingerprint.readUInt32LE(0);
    const b = fingerprint.readUInt32LE(4) | 1;
    for (let i = 0; i < HASHES; i++) {
      const bit = ((a + Math.imul(i, b)) >>> 0) % bitCount;
      const byte = bit >>> 3;
      if ((this.bits[byte]! & (1 << (bit & 7))) !== 0) continue;
      this.bits[byte] = this.bits[byte]! | (1 << (bit & 7));
      this.dirtySegments[(byte / SEGMENT_BYTES) | 0] = 1;
    }
  }

  private lastSavedMs = Date.now();

  /** Dirty segments into `ops`, if a minute has passed since the last save or `force` is set. */
  capture(ops: MetaOp[], force = false, nowMs = Date.now()): void {
    if (!force && nowMs - this.lastSavedMs < 60_000) return;
    this.lastSavedMs = nowMs;
    for (let segment = 0; segment < this.segmentCount; segment++) {
      if (this.dirtySegments[segment] === 0) continue;
      this.dirtySegments[segment] = 0;
      ops.push({ type: 'put', sublevel: 'fingerprints', key: segmentKey(segment), value: Buffer.from(this.bits.subarray(segment * SEGMENT_BYTES, (segment + 1) * SEGMENT_BYTES)) });
    }
  }

  /**
   * Up to `maxSegments` changed segments into `ops`, whatever the time; returns how many. A
   * checkpoint writes them in slices of this before its commit, so that no batch holds the whole
   * filter (up to 64 MiB, copied twice on its way into LevelDB).
   */
  captureSome(ops: MetaOp[], maxSegments: number): number {
    let count = 0;
    for (let segment = 0; segment < this.segmentCount && count < maxSegments; segment++) {
      if (this.dirtySegments[segment] === 0) continue;
      this.dirtySegments[segment] = 0;
      ops.push({ type: 'put', sublevel: 'fingerprints', key: segmentKey(segment), value: Buffer.from(this.bits.subarray(segment * SEGMENT_BYTES, (segment + 1) * SEGMENT_BYTES)) });
      count += 1;
    }
    return count;
  }

  /** Whether the filter answers "no" (false while it waits for `rebuild`). */
  get complete(): boolean {
    return this.trusted;
  }

  /**
   * Loads the segments if a clean close left the record of this size, and deletes the record (a
   * crash from now on must not leave it). Returns false if they cannot be trusted: the filter then
   * answers "maybe" until `rebuild` (see the design note).
   */
  async load(store: MetaStore): Promise<boolean> {
    const record = await store.get('fingerprints', RECORD_KEY);
    this.trusted = record !== undefined && record.length === 8 && record.readBigUInt64BE(0) === BigInt(this.sizeBytes);
    if (this.trusted) {
      const keys = Array.from({ length: this.segmentCount }, (_, segment) => segmentKey(segment));
      const values = await store.getMany('fingerprints', keys);
      values.forEach((value, segment) => {
        if (value !== undefined && value.length === SEGMENT_BYTES) this.bits.set(value, segment * SEGMENT_BYTES);
      });
    }
    if (record !== undefined) await store.batch([{ type: 'del', sublevel: 'fingerprints', key: RECORD_KEY }], { sync: false });
    return this.trusted;
  }

  /**
   * Adds every fingerprint of the index in LevelDB (and marks every segment stored there, so the
   * next capture overwrites what another size left in it), then answers "no" again. Returns
   * false, the filter still answering "maybe", if `stop` said so first.
   */
  async rebuild(store: MetaStore, stop: () => boolean): Promise<boolean> {
    let count = 0;
    for await (const [key] of store.iterate('fingerprints')) {
      if (++count % REBUILD_CHECK_ENTRIES === 0 && stop()) return false;
      if (key.length === FINGERPRINT_KEY_BYTES) this.add(key);
      else if (key.length === 5 && key[0] === 0x42 && key.readUInt32BE(1) < this.segmentCount) this.dirtySegments[key.readUInt32BE(1)] = 1;
    }
    if (stop()) return false;
    this.trusted = true;
    return true;
  }

  /**
   * For a clean close, after the last capture: the record that makes the next open trust the
   * segments, into `ops`; false (nothing added) if the filter is incomplete or a segment is unwritten.
   */
  captureRecord(ops: MetaOp[]): boolean {
    if (!this.trusted || this.dirtySegments.some((dirty) => dirty !== 0)) return false;
    const value = Buffer.alloc(8);
    value.writeBigUInt64BE(BigInt(this.sizeBytes), 0);
    ops.push({ type: 'put', sublevel: 'fingerprints', key: RECORD_KEY, value });
    return true;
  }
}

function segmentKey(segment: number): Buffer {
  const key = Buffer.alloc(5);
  key.write('B', 0, 'latin1');
  key.writeUInt32BE(segment, 1);
  return key;
}
