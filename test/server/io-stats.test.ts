/**
 * The per-export request counters of server/io-stats.ts: latency buckets at and around every bound
 * (Prometheus `le` is inclusive), errno slots, commands that are not counted, and pruning.
 */
import test from 'ava';
import * as C from '../../src/protocol/constants.js';
import { BUCKETS_PER_OP, ExportIoStats, FINE_BUCKETS, IO_ERRNOS, IO_OPS, IoStats, LATENCY_BUCKETS_SECONDS, bucketOf, fineBucketOf, fineBucketUpperMs } from '../../src/server/io-stats.js';

test('latency buckets: 19 bounds from 10 µs to 10 s, each inclusive, then +Inf', (t) => {
  t.is(LATENCY_BUCKETS_SECONDS.length, 19);
  t.is(BUCKETS_PER_OP, 20);
  t.is(LATENCY_BUCKETS_SECONDS[0], 1e-5);
  t.is(LATENCY_BUCKETS_SECONDS.at(-1), 10);
  t.is(bucketOf(0), 0);
  t.is(bucketOf(-0.001), 0, 'a clock that stepped back lands in the first bucket');
  LATENCY_BUCKETS_SECONDS.forEach((seconds, bucket) => {
    const ms = seconds * 1000;
    t.is(bucketOf(ms * 0.999), bucket, `just under ${seconds} s`);
    t.is(bucketOf(ms), bucket, `exactly ${seconds} s`);
    t.is(bucketOf(ms * 1.001), bucket + 1, `just over ${seconds} s`);
  });
  t.is(bucketOf(3_600_000), 19, 'an hour is +Inf');
  t.is(bucketOf(Number.POSITIVE_INFINITY), 19);
});

test('a request counts once in requests, bytes (on success), its bucket and the sum; errors by errno', (t) => {
  const stats = new ExportIoStats('vol');
  const write = IO_OPS.indexOf('write');
  const read = IO_OPS.indexOf('read');
  const started = stats.begin();
  t.is(stats.inFlight, 1);
  stats.finish(C.NBD_CMD_WRITE, 4096, 0, started);
  t.is(stats.inFlight, 0);
  t.is(stats.requests[write], 1);
  t.is(stats.bytes[write], 4096);
  t.is(stats.latencyBuckets.slice(write * BUCKETS_PER_OP, (write + 1) * BUCKETS_PER_OP).reduce((a, b) => a + b, 0), 1);
  t.true(stats.latencySumMs[write]! >= 0);

  stats.finish(C.NBD_CMD_READ, 8192, C.NBD_EIO, stats.begin());
  const sumMs = stats.latencySumMs[read];
  const firstBucket = stats.latencyBuckets[read * BUCKETS_PER_OP]!;
  stats.rejected(C.NBD_CMD_READ, C.NBD_EINVAL);
  stats.rejected(C.NBD_CMD_READ, 99); // not an NBD errno
  t.is(stats.requests[read], 3);
  t.is(stats.bytes[read], 0, 'failed requests move no bytes');
  t.is(stats.errorCount(read, IO_ERRNOS.indexOf('EIO')), 1);
  t.is(stats.errorCount(read, IO_ERRNOS.indexOf('EINVAL')), 1);
  t.is(stats.errorCount(read, IO_ERRNOS.indexOf('other')), 1);
  t.is(stats.latencyBuckets[read * BUCKETS_PER_OP], firstBucket + 2, 'rejections take no time: the first bucket');
  t.is(stats.latencySumMs[read], sumMs, 'and add nothing to the sum');

  // CACHE and BLOCK_STATUS are not among the ops: in flight while running, counted nowhere.
  stats.finish(C.NBD_CMD_CACHE, 4096, 0, stats.begin());
  stats.rejected(C.NBD_CMD_BLOCK_STATUS, C.NBD_EINVAL);
  t.is(stats.inFlight, 0);
  t.is(stats.requests.reduce((a, b) => a + b, 0), 4);
});

test('every op has its slot; FLUSH, TRIM and WRITE_ZEROES are told apart', (t) => {
  const stats = new ExportIoStats('vol');
  const commands = [C.NBD_CMD_READ, C.NBD_CMD_WRITE, C.NBD_CMD_TRIM, C.NBD_CMD_WRITE_ZEROES, C.NBD_CMD_FLUSH];
  commands.forEach((command, i) => {
    for (let n = 0; n <= i; n++) stats.rejected(command, 0);
  });
  t.deepEqual([...stats.requests], [1, 2, 3, 4, 5]);
  t.deepEqual(IO_OPS, ['read', 'write', 'trim', 'write_zeroes', 'flush']);
});

test('IoStats: one object per export; prune drops only gone exports with nothing attached', (t) => {
  const io = new IoStats();
  const kept = io.forExport('kept');
  t.is(io.forExport('kept'), kept);
  io.forExport('gone');
  const attached = io.forExport('gone-but-attached');
  attached.connections = 1;
  io.prune((name) => name === 'kept');
  t.deepEqual(io.exports().map((stats) => stats.name), ['gone-but-attached', 'kept']);
  attached.connections = 0;
  io.prune((name) => name === 'kept');
  t.deepEqual(io.exports().map((stats) => stats.name), ['kept']);
});

test('latency percentiles: from the fine buckets, at most 19 % above the true value and never below it', (t) => {
  const stats = new ExportIoStats('v');
  t.deepEqual(stats.summary('read'), { requests: 0, bytes: 0, p50Ms: null, p99Ms: null, p999Ms: null });
  // 1000 writes: 990 at 0.1 ms, 9 at 5 ms, 1 at 200 ms.
  // Exact latencies: through begin/finish a preempted test thread would add its own delay.
  const record = (latencyMs: number) => stats.record(C.NBD_CMD_WRITE, 4096, 0, latencyMs);
  for (let i = 0; i < 990; i++) record(0.1);
  for (let i = 0; i < 9; i++) record(5);
  record(200);
  const summary = stats.summary('write');
  t.is(summary.requests, 1000);
  const near = (value: number | null, truth: number) => value !== null && value >= truth && value <= truth * 1.19 + 0.01;
  t.true(near(summary.p50Ms, 0.1), `p50 ${summary.p50Ms}`);
  t.true(near(summary.p99Ms, 0.1), `p99 ${summary.p99Ms}`);
  t.true(near(summary.p999Ms, 5), `p99.9 ${summary.p999Ms}`);
  for (const ms of [0.0005, 0.001, 0.0123, 0.5, 1, 7.7, 1234, 60_000]) {
    const upper = fineBucketUpperMs(fineBucketOf(ms));
    t.true(upper >= ms && upper <= ms * 1.19 + 0.001, `${ms} ms -> bucket up to ${upper}`);
  }
  t.is(fineBucketOf(1e9), FINE_BUCKETS - 1);
});
