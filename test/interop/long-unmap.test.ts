/**
 * A long TRIM or WRITE_ZEROES must not stall other connections (issue 12, item 6): it lets the
 * event loop turn every couple of milliseconds, so 4 KiB reads on another connection keep a p99
 * within 20 ms while 1 GiB of unique data is unmapped (before: 4 reads got through, p99 125 ms).
 * The bound asserted is 50 ms, for a shared, noisy machine.
 */
import test from 'ava';
import { describeRun, requireTools, runPython, startServer, stopServer } from '../helpers/interop.js';

for (const kind of ['trim', 'zero'] as const) {
  test(`other connections' reads keep flowing during a 1 GiB ${kind === 'trim' ? 'TRIM' : 'WRITE_ZEROES (NO_HOLE)'}`, async (t) => {
    requireTools(['/usr/bin/python3']);
    const server = await startServer(t);
    const run = await runPython('long_unmap.py', [server.socketPath, '1024', kind], { timeoutMs: 180_000 });
    t.is(run.code, 0, describeRun(run));
    const result = JSON.parse(run.stdout.trim().split('\n').pop()!) as { unmap_s: number; reads: number; p50_ms: number; p99_ms: number; max_ms: number; zeros: boolean; beside_intact: boolean };
    t.log(`${kind} of 1 GiB: ${result.unmap_s.toFixed(2)} s; ${result.reads} reads meanwhile, p50 ${result.p50_ms.toFixed(2)} ms, p99 ${result.p99_ms.toFixed(1)} ms, max ${result.max_ms.toFixed(1)} ms`);
    t.true(result.zeros, 'the range reads as zeros afterwards');
    t.true(result.beside_intact, 'the data beside it is intact');
    t.true(result.reads >= 20, `reads got through during the ${kind} (${result.reads})`);
    t.true(result.p99_ms <= 50, `p99 ${result.p99_ms.toFixed(1)} ms`);
    await stopServer(t, server);
  });
}
