/**
 * Sharing the event loop. Everything of one array runs on one thread, so a long piece of work
 * that never awaits real I/O (promises that resolve at once run as microtasks, which never let a
 * socket be read or a reply be written) holds every connection for as long as it runs. Such work
 * lets the loop turn every few milliseconds of CPU, with `TurnSlicer`:
 *
 *     const slicer = new TurnSlicer(2);
 *     for (const item of items) {
 *       work(item);
 *       if (slicer.due()) await slicer.nextTurn();
 *     }
 *
 * `due()` is a clock read, so the common case costs no promise at all.
 */

/** Resolves in the next turn of the event loop, after its I/O (replies out, requests in). */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Counts the CPU time of a piece of work since it last let the event loop turn. */
export class TurnSlicer {
  private sliceStartedMs = performance.now();

  constructor(private readonly sliceMs: number) {}

  /** True once the work has run for `sliceMs` since the last turn. */
  due(): boolean {
    return performance.now() - this.sliceStartedMs >= this.sliceMs;
  }

  /** Lets the event loop turn; the next slice starts when it comes back. */
  async nextTurn(): Promise<void> {
    await nextTurn();
    this.sliceStartedMs = performance.now();
  }

  /** Starts a slice now (work that has just been given the thread again by other means). */
  restart(): void {
    this.sliceStartedMs = performance.now();
  }
}
