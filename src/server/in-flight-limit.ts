/**
 * The server-wide bound on request memory in flight: the bytes of every READ and WRITE admitted and
 * not yet done, on all connections together. A WRITE holds its payload from the moment its header
 * is admitted until it has been applied; a READ holds its reply buffer until the socket has written
 * the reply (or closed). nbdkit and qemu-nbd bound requests in flight the same way.
 *
 * A connection asks before it reads a request's payload (or serves a read); when the bytes do not
 * fit, the request waits, the connection stops reading its socket, and TCP holds the client back.
 * Waiters are served in arrival order, so a large request is not starved by a stream of small ones.
 * A request larger than the whole limit (up to the maximum payload) is admitted when nothing else
 * is in flight, so it can always run.
 *
 * Grants are delivered in a microtask: release() is called deep inside another connection's
 * completion, and the granted connection goes on decoding its own requests, which must not run
 * inside that one's stack.
 */
export type Grant = (bytes: number) => void;

export class InFlightLimit {
  private usedBytes = 0;
  private readonly waiters: Array<{ bytes: number; grant: Grant }> = [];
  /** The most that was ever in flight (for tests and stats). */
  peakBytes = 0;
  /** Requests admitted so far (a measure of activity). */
  admitted = 0;

  constructor(readonly limitBytes: number) {}

  get inFlightBytes(): number {
    return this.usedBytes;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /**
   * Takes `bytes` now if they fit and nobody waits before them (true); else queues `grant`, which
   * is called, in a later microtask, once the bytes have been taken for the caller (false). The
   * caller gives them back with `release`, or with `cancel` before the grant came.
   */
  acquire(bytes: number, grant: Grant): boolean {
    if (this.waiters.length === 0 && this.fits(bytes)) {
      this.take(bytes);
      return true;
    }
    this.waiters.push({ bytes, grant });
    return false;
  }

  /** Withdraws a waiting `grant` (its connection closed); false if it was not waiting. */
  cancel(grant: Grant): boolean {
    const index = this.waiters.findIndex((waiter) => waiter.grant === grant);
    if (index < 0) return false;
    this.waiters.splice(index, 1);
    if (index === 0) this.grantWaiters();
    return true;
  }

  release(bytes: number): void {
    if (bytes === 0) return;
    this.usedBytes -= bytes;
    if (this.usedBytes < 0) throw new Error(`in-flight bytes went negative (${this.usedBytes})`);
    this.grantWaiters();
  }

  private grantWaiters(): void {
    while (this.waiters.length > 0 && this.fits(this.waiters[0]!.bytes)) {
      const { bytes, grant } = this.waiters.shift()!;
      this.take(bytes);
      queueMicrotask(() => grant(bytes));
    }
  }

  private fits(bytes: number): boolean {
    return this.usedBytes === 0 || this.usedBytes + bytes <= this.limitBytes;
  }

  private take(bytes: number): void {
    this.admitted += 1;
    this.usedBytes += bytes;
    if (this.usedBytes > this.peakBytes) this.peakBytes = this.usedBytes;
  }
}
