/**
 * Latency buckets for the Prometheus histograms, shared by the NBD request statistics
 * (server/io-stats.ts) and the array's own timings (metadata commits, volume/flash-array.ts).
 *
 * Recording must cost next to nothing on the paths that record: a bucket is found by a short loop
 * over bounds kept in milliseconds (compared against `performance.now()` differences without a
 * division), and a record is two typed-array increments and an addition; nothing is allocated.
 * Buckets hold plain counts, not cumulative ones: the exposition (mgmt/prometheus.ts) adds them up
 * at scrape time. Counts are doubles, exact up to 2^53.
 */

/** Upper bounds (seconds, `le`) of the NBD request buckets: 10 µs to 10 s in 1-2.5-5 steps; +Inf follows. */
export const LATENCY_BUCKETS_SECONDS: readonly number[] = [
  1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/** Upper bounds of the metadata commit buckets: the same ladder from 100 µs (a commit syncs twice). */
export const COMMIT_BUCKETS_SECONDS: readonly number[] = LATENCY_BUCKETS_SECONDS.filter((seconds) => seconds >= 1e-4);

/** Bounds in seconds → the same in milliseconds, as `bucketIndex` wants them. */
export function boundsMs(boundsSeconds: readonly number[]): Float64Array {
  return Float64Array.from(boundsSeconds, (seconds) => seconds * 1000);
}

/** The bucket of a latency: the first bound it does not exceed, or `bounds.length` (+Inf). */
export function bucketIndex(bounds: Float64Array, latencyMs: number): number {
  let bucket = 0;
  while (bucket < bounds.length && latencyMs > bounds[bucket]!) bucket += 1;
  return bucket;
}

/** One histogram: a count per bucket (the last is +Inf) and the sum of the latencies recorded. */
export class LatencyHistogram {
  /** Count per bucket, not cumulative; one more slot than bounds (+Inf). */
  readonly buckets: Float64Array;
  /** Sum of every latency recorded, in milliseconds. */
  sumMs = 0;
  /** Latencies recorded. */
  count = 0;
  private readonly bounds: Float64Array;

  constructor(readonly boundsSeconds: readonly number[]) {
    this.bounds = boundsMs(boundsSeconds);
    this.buckets = new Float64Array(boundsSeconds.length + 1);
  }

  record(latencyMs: number): void {
    this.buckets[bucketIndex(this.bounds, latencyMs)] += 1;
    this.sumMs += latencyMs;
    this.count += 1;
  }
}
