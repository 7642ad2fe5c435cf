/**
 * Write ages: when each 4 MiB extent of a volume was last written, for the hot/cold shares of
 * capacity analytics (mgmt/analytics.ts).
 *
 * Why this granularity. The write path may pay an O(1) store into a typed array per request and
 * nothing more, and the tracker must stay small however large a thin volume is. One entry per map
 * page (1024 logical blocks, 4 MiB) costs 4 bytes per 4 MiB of volume written (1 MiB of memory per
 * TiB written), needs no allocation on the write path except the first write into a segment of
 * 1024 extents (4 GiB of volume), and a write request of up to 4 MiB touches one or two entries.
 * A per-logical-block time would cost 1024 times the memory for a share that is only ever read as
 * a percentage. The price: a 4 KiB write makes its whole 4 MiB extent "hot". That is the usual
 * trade of array analytics (Purity reports hot/cold by extent too) and fine for the question asked
 * ("how much of this volume has not been written for 30 days?").
 *
 * Time is a coarse clock in whole minutes since the Unix epoch (a u32 lasts until year 10136),
 * read from `CoarseClock.minute`, a field refreshed once per second by an unref'd timer rather
 * than by a `Date.now()` per request. Tests inject `nowMs` and call `refresh()`.
 *
 * Entries: 0 means "not written since tracking began" (the analytics report such blocks with an
 * age of at least the time since tracking began). Persistence belongs to the caller (the
 * analytics sampler writes changed segments to the 'analytics' sublevel, meta/keys.ts); `segments`
 * and `merge` are what it needs. Nothing here is needed for correctness of data: after a crash,
 * times newer than the last persisted sample are lost, and those extents look older than they are.
 */
export const EXTENT_LBAS = 1024;
export const SEGMENT_EXTENTS = 1024;
const MINUTE_MS = 60_000;
const REFRESH_INTERVAL_MS = 1000;

export class CoarseClock {
  /** Whole minutes since the Unix epoch, as of the last refresh. */
  minute = 0;
  private timer: NodeJS.Timeout | null = null;

  constructor(readonly nowMs: () => number = Date.now) {
    this.refresh();
  }

  refresh(): void {
    this.minute = Math.floor(this.nowMs() / MINUTE_MS);
  }

  /** Refreshes once per second until `stop()`; the timer never keeps the process alive. */
  start(): void {
    if (this.timer !== null) return;
    this.timer = setInterval(() => this.refresh(), REFRESH_INTERVAL_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }
}

export class WriteAges {
  /** Segment `s` holds extents [s * 1024, (s + 1) * 1024); allocated on first write. */
  readonly segments: Array<Uint32Array | undefined> = [];

  constructor(private readonly clock: CoarseClock) {}

  /**
   * Marks the extents holding logical blocks [firstLba, lastLba] as written now. On the write
   * path: one store per 4 MiB the request covers (a request is at most 32 MiB under NBD here).
   */
  touch(firstLba: number, lastLba: number): void {
    const minute = this.clock.minute;
    const last = Math.floor(lastLba / EXTENT_LBAS);
    for (let extent = Math.floor(firstLba / EXTENT_LBAS); extent <= last; extent++) {
      const segmentIndex = Math.floor(extent / SEGMENT_EXTENTS);
      const segment = this.segments[segmentIndex] ?? this.allocate(segmentIndex);
      segment[extent % SEGMENT_EXTENTS] = minute;
    }
  }

  private allocate(segmentIndex: number): Uint32Array {
    const segment = new Uint32Array(SEGMENT_EXTENTS);
    this.segments[segmentIndex] = segment;
    return segment;
  }

  /** Minute of the last write into `extent`, 0 if none is known. */
  minuteOf(extent: number): number {
    return this.segments[Math.floor(extent / SEGMENT_EXTENTS)]?.[extent % SEGMENT_EXTENTS] ?? 0;
  }

  /** Takes the newer of each entry (a persisted segment loaded after writes may have begun). */
  merge(segmentIndex: number, minutes: Uint32Array): void {
    const segment = this.segments[segmentIndex] ?? this.allocate(segmentIndex);
    for (let i = 0; i < SEGMENT_EXTENTS; i++) if (minutes[i]! > segment[i]!) segment[i] = minutes[i]!;
  }

  /** Calls `visit` for every extent with a known last write (control plane only). */
  forEach(visit: (extent: number, minute: number) => void): void {
    this.segments.forEach((segment, segmentIndex) => {
      if (segment === undefined) return;
      for (let i = 0; i < SEGMENT_EXTENTS; i++) if (segment[i] !== 0) visit(segmentIndex * SEGMENT_EXTENTS + i, segment[i]!);
    });
  }
}
