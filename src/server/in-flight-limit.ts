/**
 * The server-wide bound on request memory in flight: the bytes of every READ and WRITE admitted and
 * not yet done, on all connections together. A WRITE holds its payload from the moment its header
 * is admitted until it has been applied; a READ holds its reply buffer until the socket has written
 * the reply (or closed). nbdkit and qemu-nbd bound requests in flight the same way.
 *
 * A connection asks before it reads a request's payload (or serves a read); when the bytes do not
 * fit, the request waits, the connection stops reading its socket, and TCP holds the client back.
 *
 * Two classes of request, so that a large one never makes small ones wait behind it:
 *   - large requests (over `smallBytes`) share `limitBytes` and are granted in arrival order, so a
 *     large request is not starved by a stream of small ones. One larger than the whole limit (up
 *     to the maximum payload) is admitted when no other large request, and no small one beyond the
 *     reserve, is in flight, so it can always run;
 *   - small requests (up to `smallBytes`, the 4 KiB to 1 MiB of ordinary I/O) have a reserve of
 *     `reserveBytes` of their own beside the limit, and may also use what the large ones leave of
 *     the limit while no large request waits. They too are granted in arrival order.
 * When one 64 MiB WRITE held the whole limit, every 4 KiB READ on every other connection waited
 * until it had been received and applied: 120-660 ms per 64 MiB WRITE (test/interop/long-unmap).
 * The whole stays within `limitBytes + reserveBytes` (or one oversized request plus the reserve).
 *
 * Grants are delivered in a microtask: release() is called deep inside another connection's
 * completion, and the granted connection goes on decoding its own requests, which must not run
 * inside that one's stack.
 */
export type Grant = (bytes: number) => void;

/** Requests up to this size are small (see the design note)... */
const SMALL_REQUEST_BYTES = 1024 * 1024;

interface Waiter {
  bytes: number;
  grant: Grant;
}

export class InFlightLimit {
  private smallUsedBytes = 0;
  private largeUsedBytes = 0;
  private readonly smallWaiters: Waiter[] = [];
  private readonly largeWaiters: Waiter[] = [];
  /** The most that was ever in flight (for tests and stats). */
  peakBytes = 0;
  /** Requests admitted so far (a measure of activity). */
  admitted = 0;
  /** Small requests' own share, beside `limitBytes`. */
  readonly reserveBytes: number;
  /** The largest request that counts as small. */
  readonly smallBytes: number;

  /** `reserveBytes` defaults to a quarter of the limit; requests up to 1 MiB (at most the reserve) are small. */
  constructor(
    readonly limitBytes: number,
    reserveBytes = Math.floor(limitBytes / 4),
  ) {
    this.reserveBytes = reserveBytes;
    this.smallBytes = Math.min(SMALL_REQUEST_BYTES, reserveBytes);
  }

  get inFlightBytes(): number {
    return this.smallUsedBytes + this.largeUsedBytes;
  }

  get waiting(): number {
    return this.smallWaiters.length + this.largeWaiters.length;
  }

  /**
   * Takes `bytes` now if they fit and no request of their class waits before them (true); else
   * queues `grant`, which is called, in a later microtask, once the bytes have been taken for the
   * caller (false). The caller gives them back with `release`, or with `cancel` before the grant came.
   */
  acquire(bytes: number, grant: Grant): boolean {
    const small = this.isSmall(bytes);
    const waiters = small ? this.smallWaiters : this.largeWaiters;
    if (waiters.length === 0 && (small ? this.fitsSmall(bytes) : this.fitsLarge(bytes))) {
      this.take(bytes);
      return true;
    }
    waiters.push({ bytes, grant });
    return false;
  }

  /** Withdraws a waiting `grant` (its connection closed); false if it was not waiting. */
  cancel(grant: Grant): boolean {
    for (const waiters of [this.largeWaiters, this.smallWaiters]) {
      const index = waiters.findIndex((waiter) => waiter.grant === grant);
      if (index < 0) continue;
      waiters.splice(index, 1);
      // The head left: the next may fit; and with no large request waiting, small ones may use more.
      this.grantWaiters();
      return true;
    }
    return false;
  }

  /**
   * Gives back `bytes`: one request's, or the sum of several (replies written together), of
   * which `largeBytes` were large requests' (the class of a sum cannot be told from its size).
   */
  release(bytes: number, largeBytes = this.isSmall(bytes) ? 0 : bytes): void {
    if (bytes === 0) return;
    this.smallUsedBytes -= bytes - largeBytes;
    this.largeUsedBytes -= largeBytes;
    if (this.smallUsedBytes < 0 || this.largeUsedBytes < 0) throw new Error(`in-flight bytes went negative (${this.smallUsedBytes} small, ${this.largeUsedBytes} large)`);
    this.grantWaiters();
  }

  /** Large requests first (they may be waiting for small ones to leave the shared part), then small ones. */
  private grantWaiters(): void {
    const large = this.largeWaiters;
    while (large.length > 0 && this.fitsLarge(large[0]!.bytes)) this.grantFirst(large);
    const small = this.smallWaiters;
    while (small.length > 0 && this.fitsSmall(small[0]!.bytes)) this.grantFirst(small);
  }

  private grantFirst(waiters: Waiter[]): void {
    const { bytes, grant } = waiters.shift()!;
    this.take(bytes);
    queueMicrotask(() => grant(bytes));
  }

  /** Whether a request of `bytes` is small (see the design note). */
  isSmall(bytes: number): boolean {
    return bytes <= this.smallBytes;
  }

  /** What small requests use of the limit: what they have beyond their reserve. */
  private get smallOverflowBytes(): number {
    return Math.max(0, this.smallUsedBytes - this.reserveBytes);
  }

  private fitsLarge(bytes: number): boolean {
    const used = this.largeUsedBytes + this.smallOverflowBytes;
    return used === 0 || used + bytes <= this.limitBytes;
  }

  /** Within the reserve; or, while no large request waits, within what large ones leave of the limit. */
  private fitsSmall(bytes: number): boolean {
    if (this.smallUsedBytes + bytes <= this.reserveBytes) return true;
    if (this.largeWaiters.length > 0) return false;
    return this.largeUsedBytes + Math.max(0, this.smallUsedBytes + bytes - this.reserveBytes) <= this.limitBytes;
  }

  private take(bytes: number): void {
    this.admitted += 1;
    if (this.isSmall(bytes)) this.smallUsedBytes += bytes;
    else this.largeUsedBytes += bytes;
    const total = this.inFlightBytes;
    if (total > this.peakBytes) this.peakBytes = total;
  }
}
