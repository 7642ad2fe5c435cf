/**
 * FTL log streams: with hot/cold separation (the default) GC relocations go to a stream of their
 * own; with `hotColdSeparation: false` they share the host stream. Either way a device filled to
 * its usable capacity and overwritten at random keeps every block, GC frees space (it may take
 * the reserve blocks for its own appends, or it could not), and a crash loses nothing committed.
 *
 * Observable difference: each stream holds at most one open erase block, so the number of open
 * blocks is at most 1 with one shared stream, and reaches 2 once GC has opened a block of its own.
 * Every run is seeded (see ftl-harness.ts).
 */
import test from 'ava';
import { BlockState } from '../../src/ftl/erase-block-table.js';
import { Harness, seedFor } from './ftl-harness.js';

async function fillAndOverwrite(t: import('ava').ExecutionContext, hotColdSeparation: boolean): Promise<void> {
  const seed = seedFor(t);
  const h = await Harness.create(seed, { ftl: { hotColdSeparation, victimPolicy: 'greedy' } });
  const ftl = h.array.ftl;
  const live = h.capacityLbas;
  for (let lba = 0; lba < live; lba += 8) await h.write(lba, Math.min(8, live - lba));
  t.deepEqual(await h.mismatches(0, live), [], `after the fill (seed ${seed})`);
  // Three passes of random single-block overwrites at queue depth 4, with the number of open
  // erase blocks sampled every 16 writes.
  let openMax = 0;
  for (let round = 0; round < Math.ceil((3 * live) / 16); round++) {
    await h.drive(16, 4, () => ({ lba: h.random.nextInt(live), count: 1 }));
    openMax = Math.max(openMax, ftl.table.count(BlockState.Open));
  }
  await h.volume.flush();
  await h.quiesce();
  t.log(`separation ${hotColdSeparation}: gcRuns ${ftl.counters.gcRuns}, relocated ${ftl.counters.relocatedBytes} bytes, most open erase blocks ${openMax}, free ${ftl.table.freeBlocks}`);
  t.true(ftl.counters.relocatedBytes > 0, `GC relocated nothing, so the streams were not exercised (seed ${seed})`);
  t.is(openMax, hotColdSeparation ? 2 : 1, `open erase blocks at once (seed ${seed})`);
  t.deepEqual(await h.mismatches(0, live), [], `after the overwrites (seed ${seed})`);
  t.deepEqual(h.logged('error'), [], `engine errors (seed ${seed})`);

  const reopened = await h.crashAndReopen();
  t.deepEqual(await reopened.mismatches(0, live), [], `after a crash and reopen (seed ${seed})`);
  // The reopened array goes on working: one more pass of overwrites.
  await reopened.drive(live, 4, () => ({ lba: reopened.random.nextInt(live), count: 1 }));
  await reopened.volume.flush();
  t.deepEqual(await reopened.mismatches(0, live), [], `after overwrites following the reopen (seed ${seed})`);
  t.deepEqual(reopened.logged('error'), [], `engine errors after the reopen (seed ${seed})`);
  await reopened.close();
}

test('without hot/cold separation GC shares the host stream, and a full device keeps its data', async (t) => {
  await fillAndOverwrite(t, false);
});

test('with hot/cold separation GC writes to a stream of its own, and a full device keeps its data', async (t) => {
  await fillAndOverwrite(t, true);
});

test('hot/cold separation is on by default', async (t) => {
  const h = await Harness.create(seedFor(t));
  t.true(h.array.ftl.options.hotColdSeparation);
  await h.close();
});
