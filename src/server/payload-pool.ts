/**
 * Buffers for request payloads (WRITE data, READ replies), reused from one request to the next:
 * the connection copies every WRITE payload out of the socket read buffer into one of these, and a
 * READ fills one. Allocating a fresh buffer per payload (about 450 MB/s of new memory at full
 * speed) kept the garbage collector running a full collection every 60 ms: V8 collects when the
 * memory outside its heap grows.
 *
 * Sizes are rounded up to a power of two (from 4 KiB). Two kinds of size class:
 *   - small (below `SLAB_CLASS_MIN_BYTES`): buffers of their own; each class keeps up to
 *     max(16, SMALL_CLASS_BYTES / size) free ones (enough for a few queues of 4 KiB writes at
 *     depth 32);
 *   - large (up to 32 MiB): pieces of `SLAB_BYTES` slabs, one class per slab. glibc serves an
 *     allocation above its mmap threshold with a mapping of its own, but the threshold follows the
 *     largest buffer freed so far (up to 32 MiB), and from then on buffers up to that size come
 *     from its heap, where memory freed stays resident: 200 clients that left with 16-32 MiB reads
 *     in flight left 1.1 GB of anonymous memory behind for good. A slab is larger than any
 *     threshold, so it is always a mapping of its own, and freeing it gives it back to the kernel.
 *     Pieces are handed out lowest first and reused last-freed first, so a slab's pages that are
 *     resident follow the most that was in use at once. A slab none of whose pieces is in use is
 *     dropped at once when its class has another slab with room, and idle slabs are dropped, least
 *     recently used first, while the pool holds more than `maxIdleBytes` of slab pages touched;
 *     `trim()` (the server's idle reclaim) drops them all. A dropped slab is unmapped when the
 *     garbage collector frees it (V8 collects soon after 64 MiB more memory outside its heap).
 * Larger buffers (the 64 MiB maximum payload) are allocated and freed each time: glibc maps them
 * on their own anyway.
 *
 * A buffer goes back only when its request is completely done (replied to, nothing of the engine
 * still reading it). How much is in use at once is bounded by the server's in-flight limit.
 */
const MIN_CLASS_BYTES = 4 * 1024;
const SMALL_CLASS_BYTES = 2 * 1024 * 1024;
/** The smallest class carved from slabs (glibc's initial mmap threshold). */
export const SLAB_CLASS_MIN_BYTES = 128 * 1024;
/** Above glibc's largest mmap threshold (32 MiB on 64-bit), so always a mapping of its own. */
export const SLAB_BYTES = 64 * 1024 * 1024;
const SLAB_CLASS_MAX_BYTES = SLAB_BYTES / 2;

class Slab {
  readonly buffer: Buffer;
  /** Free piece indexes, a stack: the last freed is handed out first. */
  private readonly free: Int32Array;
  private freeCount: number;
  inUse = 0;
  /** Pieces ever handed out (the pages touched): the highest index + 1. */
  touched = 0;
  /** When a piece was last given back (the pool's count of gives). */
  lastUsed = 0;

  constructor(readonly classBytes: number) {
    this.buffer = Buffer.allocUnsafeSlow(SLAB_BYTES);
    const pieces = SLAB_BYTES / classBytes;
    this.free = new Int32Array(pieces);
    for (let i = 0; i < pieces; i++) this.free[i] = pieces - 1 - i; // pops 0 first
    this.freeCount = pieces;
  }

  get full(): boolean {
    return this.freeCount === 0;
  }

  take(lengthBytes: number): Buffer {
    const index = this.free[--this.freeCount]!;
    this.inUse += 1;
    if (index >= this.touched) this.touched = index + 1;
    const at = index * this.classBytes;
    return this.buffer.subarray(at, at + lengthBytes);
  }

  give(view: Buffer): void {
    this.free[this.freeCount++] = (view.byteOffset - this.buffer.byteOffset) / this.classBytes;
    this.inUse -= 1;
  }
}

export class PayloadPool {
  private readonly free = new Map<number, Buffer[]>();
  /** Every buffer handed out and not yet given back: its slab, or the whole buffer of its own it is a view of. */
  private readonly owned = new WeakMap<Buffer, Slab | Buffer>();
  private readonly slabs = new Map<number, Slab[]>();
  private smallPooledBytes = 0;
  private slabTouchedBytes = 0;
  private gives = 0;

  /**
   * `maxIdleBytes`: slab pages touched the pool keeps while their slabs are idle; `maxSmallBytes`:
   * free small buffers it keeps in all.
   */
  constructor(
    private readonly maxIdleBytes = 64 * 1024 * 1024,
    private readonly maxSmallBytes = 16 * 1024 * 1024,
  ) {}

  /** Slab pages touched (resident, or were) and free small buffers kept: what `trim` can give back. */
  get retainedBytes(): number {
    return this.slabTouchedBytes + this.smallPooledBytes;
  }

  /** A buffer of exactly `lengthBytes` (a view of a pooled buffer of its size class). */
  take(lengthBytes: number): Buffer {
    const size = sizeClass(lengthBytes);
    if (size >= SLAB_CLASS_MIN_BYTES && size <= SLAB_CLASS_MAX_BYTES) return this.takePiece(size, lengthBytes);
    let whole = this.free.get(size)?.pop();
    if (whole !== undefined) this.smallPooledBytes -= size;
    else whole = Buffer.allocUnsafeSlow(size);
    // A payload of a class's exact size (4 KiB writes) is the whole buffer: no view to make.
    const view = lengthBytes === size ? whole : whole.subarray(0, lengthBytes);
    this.owned.set(view, whole);
    return view;
  }

  /** Gives back a buffer from `take` (anything else is ignored). */
  give(view: Buffer | null): void {
    if (view === null) return;
    const owner = this.owned.get(view);
    if (owner === undefined) return;
    this.owned.delete(view);
    if (owner instanceof Slab) {
      owner.give(view);
      owner.lastUsed = ++this.gives;
      if (owner.inUse === 0) this.dropIdle(owner);
      return;
    }
    const whole = owner;
    const size = whole.length;
    // Buffers above the slab classes (64 MiB payloads) are never kept.
    if (size >= SLAB_CLASS_MIN_BYTES || this.smallPooledBytes + size > this.maxSmallBytes) return;
    let list = this.free.get(size);
    if (list === undefined) this.free.set(size, (list = []));
    if (list.length >= Math.max(16, SMALL_CLASS_BYTES / size)) return;
    list.push(whole);
    this.smallPooledBytes += size;
  }

  /** Drops every idle slab and free small buffer (the garbage collector then frees them); returns the bytes. */
  trim(): number {
    const before = this.retainedBytes;
    for (const list of this.slabs.values()) for (const slab of [...list]) if (slab.inUse === 0) this.drop(slab);
    this.free.clear();
    this.smallPooledBytes = 0;
    return before - this.retainedBytes;
  }

  private takePiece(size: number, lengthBytes: number): Buffer {
    let list = this.slabs.get(size);
    if (list === undefined) this.slabs.set(size, (list = []));
    let slab = list.find((candidate) => !candidate.full);
    if (slab === undefined) list.push((slab = new Slab(size)));
    const touchedBefore = slab.touched;
    const view = slab.take(lengthBytes);
    this.slabTouchedBytes += (slab.touched - touchedBefore) * size;
    this.owned.set(view, slab);
    return view;
  }

  /**
   * `slab` has just become idle: it goes if its class has another slab with room; then idle slabs
   * go, least recently used first, while the pool holds more than `maxIdleBytes` of slab pages.
   */
  private dropIdle(slab: Slab): void {
    if (this.slabs.get(slab.classBytes)!.some((other) => other !== slab && !other.full)) this.drop(slab);
    if (this.slabTouchedBytes <= this.maxIdleBytes) return;
    const idle: Slab[] = [];
    for (const list of this.slabs.values()) for (const candidate of list) if (candidate.inUse === 0) idle.push(candidate);
    idle.sort((a, b) => a.lastUsed - b.lastUsed);
    for (const candidate of idle) {
      if (this.slabTouchedBytes <= this.maxIdleBytes) return;
      this.drop(candidate);
    }
  }

  private drop(slab: Slab): void {
    const list = this.slabs.get(slab.classBytes)!;
    list.splice(list.indexOf(slab), 1);
    this.slabTouchedBytes -= slab.touched * slab.classBytes;
  }
}

function sizeClass(lengthBytes: number): number {
  let size = MIN_CLASS_BYTES;
  while (size < lengthBytes) size *= 2;
  return size;
}
