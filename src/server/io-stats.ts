/**
 * Per-export NBD request statistics, recorded on the I/O path and read by the metrics exposition
 * (mgmt/prometheus.ts) when it is scraped.
 *
 * Recording must cost next to nothing: a request adds to a few slots of typed arrays allocated
 * when the export is first attached, and nothing else. There is no map lookup, no label string
 * and no allocation per request; the connection looks its export's `ExportIoStats` up once, after
 * the handshake, and keeps it. The latency histogram is a row of bucket counts per operation (not
 * cumulative; the exposition adds them up) and a sum; the bucket is found by a short loop over the
 * bounds (common/latency-histogram.ts), which for the usual sub-millisecond request ends after a
 * handful of comparisons.
 *
 * The clock is `performance.now()`, read once when a request is dispatched and once when it
 * completes. Counters are doubles: exact up to 2^53, so a byte counter stays exact for 9 PB.
 */
import { LATENCY_BUCKETS_SECONDS, boundsMs, bucketIndex } from '../common/latency-histogram.js';
import * as C from '../protocol/constants.js';

export { LATENCY_BUCKETS_SECONDS };

/** Operation labels, in slot order. */
export const IO_OPS = ['read', 'write', 'trim', 'write_zeroes', 'flush'] as const;
export type IoOp = (typeof IO_OPS)[number];
const OP_COUNT = IO_OPS.length;

/** NBD command type → slot in IO_OPS, or -1 (CACHE, BLOCK_STATUS and unknown ones are not counted). */
const OP_SLOT_BY_COMMAND = new Int8Array(256).fill(-1);
OP_SLOT_BY_COMMAND[C.NBD_CMD_READ] = 0;
OP_SLOT_BY_COMMAND[C.NBD_CMD_WRITE] = 1;
OP_SLOT_BY_COMMAND[C.NBD_CMD_TRIM] = 2;
OP_SLOT_BY_COMMAND[C.NBD_CMD_WRITE_ZEROES] = 3;
OP_SLOT_BY_COMMAND[C.NBD_CMD_FLUSH] = 4;

/** Error labels: the NBD error numbers by their spec names, then `other` for anything else. */
export const IO_ERRNOS = ['EPERM', 'EIO', 'ENOMEM', 'EINVAL', 'ENOSPC', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN', 'other'] as const;
const ERRNO_COUNT = IO_ERRNOS.length;
const ERRNO_SLOT_BY_VALUE = new Int8Array(128).fill(ERRNO_COUNT - 1);
[C.NBD_EPERM, C.NBD_EIO, C.NBD_ENOMEM, C.NBD_EINVAL, C.NBD_ENOSPC, C.NBD_EOVERFLOW, C.NBD_ENOTSUP, C.NBD_ESHUTDOWN].forEach((errno, slot) => (ERRNO_SLOT_BY_VALUE[errno] = slot));

/** The bounds of the latency buckets (common/latency-histogram.ts), in milliseconds. */
const BUCKET_BOUNDS_MS = boundsMs(LATENCY_BUCKETS_SECONDS);
/** Buckets per operation: one per bound, and +Inf. */
export const BUCKETS_PER_OP = BUCKET_BOUNDS_MS.length + 1;

/** The bucket of a latency: the first bound it does not exceed, or the +Inf bucket. */
export function bucketOf(latencyMs: number): number {
  return bucketIndex(BUCKET_BOUNDS_MS, latencyMs);
}

/**
 * A finer histogram for percentiles (`pstorage stats`): four buckets per power of two of
 * microseconds, from 1 µs up (bucket 0 is below 1 µs, the last is everything from about 72 s on).
 * A percentile is reported as its bucket's upper bound, so it is at most 19 % high, never low.
 */
const FINE_PER_OCTAVE = 4;
export const FINE_BUCKETS = 2 + 26 * FINE_PER_OCTAVE;

/** The fine bucket of a latency. */
export function fineBucketOf(latencyMs: number): number {
  const us = latencyMs * 1000;
  if (!(us >= 1)) return 0;
  return Math.min(FINE_BUCKETS - 1, 1 + Math.floor(Math.log2(us) * FINE_PER_OCTAVE));
}

/** The upper bound of fine bucket `bucket`, in milliseconds (Infinity for the last). */
export function fineBucketUpperMs(bucket: number): number {
  if (bucket === FINE_BUCKETS - 1) return Infinity;
  return 2 ** (bucket / FINE_PER_OCTAVE) / 1000;
}

/** One operation since the server started: requests, bytes of those that succeeded, latency percentiles (milliseconds; null when no requests). */
export interface IoSummary {
  requests: number;
  bytes: number;
  p50Ms: number | null;
  p99Ms: number | null;
  p999Ms: number | null;
}

/** One export's counters. Slots are indexed `op`, `op * ERRNO_COUNT + errno` and `op * BUCKETS_PER_OP + bucket`. */
export class ExportIoStats {
  /** Requests completed (successfully or not) per operation. */
  readonly requests = new Float64Array(OP_COUNT);
  /** Bytes read, written, trimmed or zeroed by requests that succeeded. */
  readonly bytes = new Float64Array(OP_COUNT);
  readonly errors = new Float64Array(OP_COUNT * ERRNO_COUNT);
  readonly latencyBuckets = new Float64Array(OP_COUNT * BUCKETS_PER_OP);
  readonly latencySumMs = new Float64Array(OP_COUNT);
  /** Fine buckets per operation (slot `op * FINE_BUCKETS + bucket`), for percentiles. */
  readonly fineBuckets = new Float64Array(OP_COUNT * FINE_BUCKETS);
  /** Data requests handed to the device and not yet completed. */
  inFlight = 0;
  /** NBD connections attached to this export now. */
  connections = 0;

  constructor(readonly name: string) {}

  /** A data request goes to the device; returns the time to pass to `finish`. */
  begin(): number {
    this.inFlight += 1;
    return performance.now();
  }

  /** A request given to `begin` completed; `errno` 0 for success. */
  finish(command: number, lengthBytes: number, errno: number, startedMs: number): void {
    this.inFlight -= 1;
    this.record(command, lengthBytes, errno, performance.now() - startedMs);
  }

  /** A request answered without reaching the device (rejected by validation, or shutting down). */
  rejected(command: number, errno: number): void {
    this.record(command, 0, errno, 0);
  }

  /** Counts one completed request of a known latency (`finish` and `rejected` measure it; tests give it exactly). */
  record(command: number, lengthBytes: number, errno: number, latencyMs: number): void {
    const op = OP_SLOT_BY_COMMAND[command & 0xff]!;
    if (op < 0) return;
    this.requests[op] += 1;
    if (errno === 0) this.bytes[op] += lengthBytes;
    else this.errors[op * ERRNO_COUNT + ERRNO_SLOT_BY_VALUE[errno & 0x7f]!] += 1;
    this.latencyBuckets[op * BUCKETS_PER_OP + bucketOf(latencyMs)] += 1;
    this.latencySumMs[op] += latencyMs;
    this.fineBuckets[op * FINE_BUCKETS + fineBucketOf(latencyMs)] += 1;
  }

  /** Requests, bytes, and p50, p99 and p99.9 of operation `op` (a name of IO_OPS) since the start. */
  summary(op: IoOp): IoSummary {
    const slot = IO_OPS.indexOf(op);
    const requests = this.requests[slot]!;
    const bytes = this.bytes[slot]!;
    if (requests === 0) return { requests, bytes, p50Ms: null, p99Ms: null, p999Ms: null };
    const at = (fraction: number): number => {
      const rank = Math.ceil(fraction * requests);
      let seen = 0;
      for (let bucket = 0; bucket < FINE_BUCKETS; bucket++) {
        seen += this.fineBuckets[slot * FINE_BUCKETS + bucket]!;
        if (seen >= rank) return fineBucketUpperMs(bucket);
      }
      return Infinity;
    };
    const round = (ms: number): number => (Number.isFinite(ms) ? Math.round(ms * 1000) / 1000 : ms);
    return { requests, bytes, p50Ms: round(at(0.5)), p99Ms: round(at(0.99)), p999Ms: round(at(0.999)) };
  }

  /** Errors of `op` (slot) with errno label `errnoSlot` (index in IO_ERRNOS). */
  errorCount(op: number, errnoSlot: number): number {
    return this.errors[op * ERRNO_COUNT + errnoSlot]!;
  }

  /** Nothing attached and nothing running: the series may be dropped once the export is gone. */
  get idle(): boolean {
    return this.connections === 0 && this.inFlight === 0;
  }
}

/** The server's statistics: one `ExportIoStats` per export name, made when first asked for. */
export class IoStats {
  private readonly byExport = new Map<string, ExportIoStats>();

  /** Called once per connection, after the handshake (and at scrape time): never per request. */
  forExport(name: string): ExportIoStats {
    let stats = this.byExport.get(name);
    if (stats === undefined) {
      stats = new ExportIoStats(name);
      this.byExport.set(name, stats);
    }
    return stats;
  }

  /** The counters of `name` if it has any. */
  find(name: string): ExportIoStats | undefined {
    return this.byExport.get(name);
  }

  exports(): ExportIoStats[] {
    return [...this.byExport.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  /**
   * Forgets exports that no longer exist (`exists` says) and have nothing attached, so a deleted
   * volume's series go away; a volume made again under the same name starts from zero, which
   * Prometheus reads as a counter reset.
   */
  prune(exists: (name: string) => boolean): void {
    for (const [name, stats] of this.byExport) if (stats.idle && !exists(name)) this.byExport.delete(name);
  }
}
