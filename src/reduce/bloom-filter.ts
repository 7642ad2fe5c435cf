/**
 * A Bloom filter over fingerprints, so that a write of new data can learn "not stored before"
 * without a LevelDB lookup. It only ever answers "maybe" or "no": a "maybe" costs one batched
 * lookup, a "no" costs nothing. Deleted fingerprints stay set (a Bloom filter cannot forget), which
 * only adds false "maybe"s.
 *
 * Persistence: the bit array is split into 64 KiB segments; segments changed since they were last
 * written go into a commit's batch ('fingerprints' sublevel, key "B" + u32 segment) at most once a
 * minute, and always at a clean close. Random fingerprints touch every segment, so writing them
 * at every commit would cost megabytes per commit. A crash can therefore lose bits: a fingerprint
 * whose bit is lost is treated as new, which costs a dedup opportunity and nothing else.
 */
import type { MetaOp, MetaStore } from '../meta/meta-store.js';

export const SEGMENT_BYTES = 64 * 1024;
const HASHES = 6;

export class BloomFilter {
  private readonly bits: Uint8Array;
  /** 1 for each segment changed since it was last captured. */
  private readonly dirtySegments: Uint8Array;

  constructor(readonly sizeBytes: number) {
    this.sizeBytes = Math.max(SEGMENT_BYTES, Math.ceil(sizeBytes / SEGMENT_BYTES) * SEGMENT_BYTES);
    this.bits = new Uint8Array(this.sizeBytes);
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
    const bitCount = this.sizeBytes * 8;
    const a = fingerprint.readUInt32LE(0);
    const b = fingerprint.readUInt32LE(4) | 1;
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

  async load(store: MetaStore): Promise<void> {
    const keys = Array.from({ length: this.segmentCount }, (_, segment) => segmentKey(segment));
    const values = await store.getMany('fingerprints', keys);
    values.forEach((value, segment) => {
      if (value !== undefined && value.length === SEGMENT_BYTES) this.bits.set(value, segment * SEGMENT_BYTES);
    });
  }
}

function segmentKey(segment: number): Buffer {
  const key = Buffer.alloc(5);
  key.write('B', 0, 'latin1');
  key.writeUInt32BE(segment, 1);
  return key;
}
