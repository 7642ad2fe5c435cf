/**
 * The idle reclaimer: memory is given back once per quiet spell (no activity and nothing busy for
 * `idleMs`), not while requests come, and again only after activity; and V8's collector (exposed
 * at run time) really runs, so garbage goes.
 */
import test from 'ava';
import { silentLogger } from '../../src/common/log.js';
import { IdleReclaimer } from '../../src/common/process-memory.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

test('reclaims once per quiet spell, never while busy or active', async (t) => {
  let activity = 0;
  let busy = false;
  let reclaims = 0;
  const reclaimer = new IdleReclaimer({ activity: () => activity, busy: () => busy, reclaim: () => (reclaims += 1, 0), logger: silentLogger, idleMs: 100, checkMs: 10 });
  reclaimer.start();
  try {
    for (let i = 0; i < 20; i++) {
      activity += 1; // a request every 10 ms: never idle
      await sleep(10);
    }
    t.is(reclaims, 0, 'not while requests come');
    busy = true;
    await sleep(250);
    t.is(reclaims, 0, 'not while something is in flight');
    busy = false;
    await sleep(400);
    t.is(reclaims, 1, 'once when quiet');
    await sleep(300);
    t.is(reclaims, 1, 'and not again while it stays quiet');
    activity += 1;
    await sleep(400);
    t.is(reclaims, 2, 'again after the next activity');
  } finally {
    reclaimer.stop();
  }
});

test('the idle reclaim collects garbage', async (t) => {
  let garbage: unknown[] | null = Array.from({ length: 300_000 }, (_, i) => ({ i, text: `object ${i}` }));
  const before = process.memoryUsage().heapUsed;
  garbage = null;
  const reclaimer = new IdleReclaimer({ activity: () => 0, busy: () => false, reclaim: () => 0, logger: silentLogger });
  await reclaimer.reclaimNow();
  t.is(garbage, null);
  const after = process.memoryUsage().heapUsed;
  t.true(after < before - 10 * 1024 * 1024, `heap used ${before} -> ${after}`);
});
