/**
 * A long TRIM or WRITE_ZEROES must not stall other connections (issue 12, item 6): it lets the
 * event loop turn every couple of milliseconds, so 4 KiB reads on another connection keep a p99
 * within 20 ms while 1 GiB of unique data is unmapped (before: 6 reads got through, p99 145 ms).
 * Nor must 64 MiB WRITEs (item 5): they are applied in 1 MiB parts, a few MiB a turn (before:
 * reads stalled up to 172 ms). The bound asserted is 50 ms, for a shared, noisy machine.
 */
import test from 'ava';
import { describeRun, requireTools, runPython, startServer, stopServer } from '../helpers/interop.js';

const LABELS = { trim: 'a 1 GiB TRIM', zero: 'a 1 GiB WRITE_ZEROES (NO_HOLE)', write64: '1 GiB written in 64 MiB WRITEs' } as const;

for (const kind of ['trim', 'zero', 'write64'] as const) {
  test.serial(`other connections' reads keep flowing during ${LABELS[kind]}`, async (t) => {
    requireTools(['/usr/bin/python3']);
    const server = await startServer(t);
    const run = await runPython('long_unmap.py', [server.socketPath, '1024', kind], { timeoutMs: 180_000 });
    t.is(run.code, 0, describeRun(run));
    const result = JSON.parse(run.stdout.trim().split('\n').pop()!) as { unmap_s: number; reads: number; p50_ms: number; p99_ms: number; max_ms: number; over_120_ms: number; zeros: boolean; beside_intact: boolean };
    t.log(`${kind} of 1 GiB: ${result.unmap_s.toFixed(2)} s; ${result.reads} reads meanwhile, p50 ${result.p50_ms.toFixed(2)} ms, p99 ${result.p99_ms.toFixed(1)} ms, max ${result.max_ms.toFixed(1)} ms`);
    t.true(result.zeros, kind === 'write64' ? 'the range reads back what was written' : 'the range reads as zeros afterwards');
    t.true(result.beside_intact, 'the data beside it is intact');
    t.true(result.reads >= 20, `reads got through during the ${kind} (${result.reads})`);
    t.true(result.p99_ms <= 50, `p99 ${result.p99_ms.toFixed(1)} ms`);
    // Between 64 MiB writes the client is busy making data and the server idle, so the p99 says
    // little there; each unsplit write stalled one read by 170-190 ms, 16 stalls in all. One or two
    // reads over 120 ms are the machine's (a shared box under load showed a single 200 ms read).
    if (kind === 'write64') t.true(result.over_120_ms <= 2, `${result.over_120_ms} reads over 120 ms, max ${result.max_ms.toFixed(1)} ms`);
    await stopServer(t, server);
  });
}
