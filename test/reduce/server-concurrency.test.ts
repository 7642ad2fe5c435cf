/**
 * Concurrent identical writes against the real server: two NBD connections (python3-libnbd), each
 * with 32 writes of the same 4 KiB block in flight at once, to 64 different offsets. They must
 * end up as one chunk (reduction.liveChunks grows by exactly 1, physicalBytes by one record), and
 * every copy reads back.
 */
import test from 'ava';
import path from 'node:path';
import { describeRun, requireTools, run, startServer, stopServer, SYSTEM_PYTHON } from '../helpers/interop.js';
import { REPO_ROOT } from '../helpers/pstorage-process.js';
import { serverStats } from '../helpers/reduce-server.js';
import { testSeed } from '../helpers/reduce-data.js';

const SCRIPT = path.join(REPO_ROOT, 'test/reduce/concurrent_writes.py');

test('server: 2 connections × 32 in-flight writes of the same block store one chunk', async (t) => {
  requireTools([SYSTEM_PYTHON]);
  const seed = testSeed(t);
  const server = await startServer(t);
  // Some data first, so the counters do not start at zero.
  const warmUp = await run(SYSTEM_PYTHON, [SCRIPT, server.unixUri(), '1', '4', `warm-up ${seed}`, String(1 << 30), String(1 << 20)]);
  t.is(warmUp.code, 0, describeRun(warmUp));
  const before = await serverStats(server);

  const result = await run(SYSTEM_PYTHON, [SCRIPT, server.unixUri(), '2', '32', `block ${seed}`, '0', String(3 * 4096 + 64 * 1024 * 1024)], { timeoutMs: 60_000 });
  t.is(result.code, 0, describeRun(result));
  const report = JSON.parse(result.stdout) as { writes: number; maxInFlight: number; mismatches: number };
  const after = await serverStats(server);
  t.log(`writes ${report.writes}, max in flight per connection ${report.maxInFlight}; liveChunks ${before.reduction.liveChunks} -> ${after.reduction.liveChunks}, dedup hits ${before.reduction.dedupHits} -> ${after.reduction.dedupHits}`);
  t.is(report.writes, 64);
  t.is(report.mismatches, 0, 'every copy reads back');
  t.is(after.reduction.liveChunks - before.reduction.liveChunks, 1, 'one chunk for 64 concurrent copies');
  t.is(after.reduction.dedupHits - before.reduction.dedupHits, 63);
  t.true(after.physicalBytes - before.physicalBytes <= 4096 + 16, `physicalBytes grew by ${after.physicalBytes - before.physicalBytes}`);
  t.is(after.logicalBytes - before.logicalBytes, 64 * 4096);
  await stopServer(t, server);
});
