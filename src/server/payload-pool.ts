/**
 * Buffers for WRITE payloads, reused from one request to the next: the connection copies every
 * payload out of its socket read buffer into one of these. Allocating a fresh buffer per payload
 * (about 450 MB/s of new memory at full speed) kept the garbage collector running a full
 * collection every 60 ms: V8 collects when the memory outside its heap grows.
 *
 * Sizes are rounded up to a power of two (from 4 KiB); each size keeps up to
 * max(16, PER_CLASS_BYTES / size) free buffers (enough for a few queues of 4 KiB writes at depth
 * 32), and the pool as a whole keeps at most `maxPooledBytes`. A buffer goes back only when its
 * request is completely done (replied to, nothing of the engine still reading it).
 */
const MIN_CLASS_BYTES = 4 * 1024;
const PER_CLASS_BYTES = 4 * 1024 * 1024;

export class PayloadPool {
  private readonly free = new Map<number, Buffer[]>();
  private readonly owned = new WeakSet<Buffer>();
  private pooledBytes = 0;

  constructor(private readonly maxPooledBytes = 64 * 1024 * 1024) {}

  /** A buffer of exactly `lengthBytes` (a view of a pooled buffer of its size class). */
  take(lengthBytes: number): Buffer {
    const size = sizeClass(lengthBytes);
    const list = this.free.get(size);
    const whole = list?.pop();
    if (whole !== undefined) this.pooledBytes -= size;
    const buffer = whole ?? Buffer.allocUnsafeSlow(size);
    const view = buffer.subarray(0, lengthBytes);
    this.owned.add(view);
    return view;
  }

  /** Gives back a buffer from `take` (anything else is ignored). */
  give(view: Buffer | null): void {
    if (view === null || !this.owned.has(view)) return;
    this.owned.delete(view);
    const whole = Buffer.from(view.buffer, view.byteOffset, view.buffer.byteLength - view.byteOffset);
    const size = whole.length;
    if (view.byteOffset !== 0 || size !== sizeClass(size) || this.pooledBytes + size > this.maxPooledBytes) return;
    let list = this.free.get(size);
    if (list === undefined) this.free.set(size, (list = []));
    if (list.length >= Math.max(16, PER_CLASS_BYTES / size)) return;
    list.push(whole);
    this.pooledBytes += size;
  }
}

function sizeClass(lengthBytes: number): number {
  let size = MIN_CLASS_BYTES;
  while (size < lengthBytes) size *= 2;
  return size;
}
