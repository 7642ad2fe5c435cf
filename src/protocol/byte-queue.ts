/**
 * A queue of received chunks that hands out exact byte counts without copying when it can.
 * Used by both protocol decoders; it never touches a socket.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // read position inside chunks[0]
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /**
   * Returns the next `n` bytes: a view when they sit in one chunk, else a copy into a buffer from
   * `allocate` (a new one by default).
   */
  take(n: number, allocate: (lengthBytes: number) => Buffer = Buffer.allocUnsafe): Buffer {
    if (n > this.total) throw new RangeError(`take(${n}) with ${this.total} bytes queued`);
    const first = this.chunks[0];
    if (n === 0) return Buffer.alloc(0);
    if (first !== undefined && first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n);
      this.advance(n);
      return view;
    }
    const out = allocate(n);
    this.copyOut(out, 0, n);
    return out;
  }

  /** Copies the next `n` bytes into `target` at `at` and drops them from the queue. */
  copyOut(target: Buffer, at: number, n: number): void {
    if (n > this.total) throw new RangeError(`copyOut(${n}) with ${this.total} bytes queued`);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0]!;
      const count = Math.min(n - filled, chunk.length - this.head);
      chunk.copy(target, at + filled, this.head, this.head + count);
      filled += count;
      this.advance(count);
    }
  }

  /**
   * Replaces whatever is still queued by a copy that the queue owns: for chunks that live in a
   * buffer the caller reuses once `push` returns (a socket's read buffer).
   */
  retain(): void {
    if (this.total === 0) return;
    const copy = Buffer.allocUnsafe(this.total);
    this.copyOut(copy, 0, this.total);
    this.chunks = [copy];
    this.head = 0;
    this.total = copy.length;
  }

  /** Drops up to `n` bytes; returns how many were dropped. */
  skip(n: number): number {
    const count = Math.min(n, this.total);
    let left = count;
    while (left > 0) {
      const chunk = this.chunks[0]!;
      const step = Math.min(left, chunk.length - this.head);
      this.advance(step);
      left -= step;
    }
    return count;
  }

  /** Everything still queued, in one buffer, leaving the queue empty. */
  drain(): Buffer {
    return this.take(this.total);
  }

  private advance(n: number): void {
    this.head += n;
    this.total -= n;
    const first = this.chunks[0];
    if (first !== undefined && this.head === first.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
