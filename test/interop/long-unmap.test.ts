/**
 * A long TRIM or WRITE_ZEROES must not stall other connections (issue 12, item 6): it lets the
 * event loop turn every couple of milliseconds, so 4 KiB reads on another connection keep a p99
 * within 20 ms while 1 GiB of unique data is unmapped (before: 6 reads got through, p99 145 ms).
 * Nor must 64 MiB WRITEs (item 5): they are applied in 1 MiB parts, a few MiB a turn (before:
 * reads stalled up to 172 ms). The bound asserted is 50 ms, for a shared, noisy machine; a run
 * over it is measured once more (CI at 550bffc: one 1 GiB TRIM took 3.3 s, p99 42.6 ms, with
 * another test file running beside it on the two vCPUs; the same build alone: 0.8-1.4 s, 6-18 ms).
 */
import test from 'ava';
import { describeRun, requireTools, runPython, startServer, stopServer } from '../helpers/interop.js';

const LABELS = { trim: 'a 1 GiB TRIM', zero: 'a 1 GiB WRITE_ZEROES (NO_HOLE)', write64: '1 GiB written in 64 MiB WRITEs' } as const;

/** The latency bounds (a shared machine's: see the design note). */
function latencyProblems(kind: string, result: Result): string[] {
  const problems: string[] = [];
  if (result.reads < 20) problems.push(`only ${result.reads} reads got through during the ${kind}`);
  if (result.p99_ms > 50) problems.push(`p99 ${result.p99_ms.toFixed(1)} ms`);
  // Between 64 MiB writes the client is busy making data and the server idle, so the p99 says
  // little there; each unsplit write stalled one read by 170-190 ms, 16 stalls in all. One or two
  // reads over 120 ms are the machine's (a shared box under load showed a single 200 ms read).
  if (kind === 'write64' && result.over_120_ms > 2) problems.push(`${result.over_120_ms} reads over 120 ms, max ${result.max_ms.toFixed(1)} ms`);
  return problems;
}

interface Result {
  unmap_s: number;
  reads: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
  over_120_ms: number;
  zeros: boolean;
  beside_intact: boolean;
}

for (const kind of ['trim', 'zero', 'write64'] as const) {
  test.serial(`other connections' reads keep flowing during ${LABELS[kind]}`, async (t) => {
    requireTools(['/usr/bin/python3']);
    const server = await startServer(t);
    // Latency is measured twice at most: the suite runs two test files at once on two vCPUs, and
    // a neighbour (the kernel guest test, say) can take the CPU for seconds. A server that holds
    // its event loop fails both runs; the data checks must hold on every run.
    let problems: string[] = [];
    for (let attempt = 1; attempt <= 2; attempt++) {
      const run = await runPython('long_unmap.py', [server.socketPath, '1024', kind], { timeoutMs: 180_000 });
      t.is(run.code, 0, describeRun(run));
      const result = JSON.parse(run.stdout.trim().split('\n').pop()!) as Result;
      t.log(`${kind} of 1 GiB (run ${attempt}): ${result.unmap_s.toFixed(2)} s; ${result.reads} reads meanwhile, p50 ${result.p50_ms.toFixed(2)} ms, p99 ${result.p99_ms.toFixed(1)} ms, max ${result.max_ms.toFixed(1)} ms`);
      t.true(result.zeros, kind === 'write64' ? 'the range reads back what was written' : 'the range reads as zeros afterwards');
      t.true(result.beside_intact, 'the data beside it is intact');
      problems = latencyProblems(kind, result);
      if (problems.length === 0) break;
    }
    t.deepEqual(problems, [], 'on both runs');
    await stopServer(t, server);
  });
}
