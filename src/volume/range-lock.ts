/**
 * Serialises writes that touch the same logical blocks.
 *
 * A partial-block write is a read-modify-write of its 4 KiB logical block, so two writes to
 * different sectors of one block (the kernel's 512-byte writes do this) must not interleave, or
 * one would overwrite the other with stale bytes. Each write holds its block range from before it
 * reads until it has updated the map; writes to disjoint ranges never wait. Reads take no lock:
 * each logical block changes in one synchronous step, so a read sees it old or new, never mixed.
 */
interface Held {
  first: number;
  last: number;
  done: Promise<void>;
}

export class RangeLock {
  private readonly held: Held[] = [];

  get size(): number {
    return this.held.length;
  }

  async acquire(first: number, last: number): Promise<() => void> {
    for (;;) {
      const blocking = this.held.filter((held) => held.first <= last && first <= held.last);
      if (blocking.length === 0) break;
      await Promise.all(blocking.map((held) => held.done));
    }
    let release!: () => void;
    const entry: Held = { first, last, done: new Promise<void>((resolve) => (release = resolve)) };
    this.held.push(entry);
    return () => {
      const index = this.held.indexOf(entry);
      if (index >= 0) this.held.splice(index, 1);
      release();
    };
  }
}
