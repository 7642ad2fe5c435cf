/**
 * FTL wear scenarios through the real array: static wear leveling moves cold data so the P/E
 * spread stays bounded, and blocks that reach their endurance are retired without losing data
 * until the array says NO_SPACE. Every run is seeded (see ftl-harness.ts).
 */
import test from 'ava';
import { BlockState } from '../../src/ftl/erase-block-table.js';
import { Harness, codeOf, seedFor } from './ftl-harness.js';

const SPREAD_THRESHOLD = 8;
/** Static wear leveling moves one cold block per GC round, so the spread may pass the threshold briefly. */
const SPREAD_MARGIN = 4;

test('static wear leveling moves cold data and keeps the P/E spread bounded', async (t) => {
  const seed = seedFor(t);
  const h = await Harness.create(seed, { ftl: { wearSpreadThreshold: SPREAD_THRESHOLD } });
  const ftl = h.array.ftl;
  // A cold region written once (40% of capacity), then made durable.
  const coldLbas = Math.floor(h.capacityLbas * 0.4);
  for (let lba = 0; lba < coldLbas; lba += 8) await h.write(lba, Math.min(8, coldLbas - lba));
  await h.volume.flush();
  const coldBlocks: number[] = [];
  for (let block = 0; block < ftl.table.blockCount; block++) {
    if (ftl.table.validBytes[block]! > 0) coldBlocks.push(block);
  }
  t.true(coldBlocks.every((block) => ftl.table.eraseCount[block] === 0), `cold blocks start unworn (seed ${seed})`);
  // A hot region (40% of capacity) after it, overwritten at random; the cold region is never written again.
  const hotFirst = coldLbas;
  const hotLbas = Math.floor(h.capacityLbas * 0.4);
  for (let lba = hotFirst; lba < hotFirst + hotLbas; lba += 8) await h.write(lba, 8);
  let spreadMax = 0;
  // Forty passes over the hot region, with the spread sampled every quarter pass.
  for (let round = 0; round < 160; round++) {
    await h.drive(Math.floor(hotLbas / 4), 4, () => ({ lba: hotFirst + h.random.nextInt(hotLbas), count: 1 }));
    const { peMin, peMax } = h.flash();
    spreadMax = Math.max(spreadMax, peMax! - peMin!);
  }
  await h.volume.flush();
  await h.quiesce();
  const { peMin, peMax, peMean } = h.flash();
  const coldPe = coldBlocks.map((block) => ftl.table.eraseCount[block]!);
  t.log(`P/E min ${peMin} mean ${peMean} max ${peMax}; largest spread seen ${spreadMax} (threshold ${SPREAD_THRESHOLD}); original cold blocks' P/E now ${Math.min(...coldPe)}..${Math.max(...coldPe)}`);
  t.true(peMax! >= 2 * SPREAD_THRESHOLD, `the workload wore blocks too little to test anything: P/E max ${peMax} (seed ${seed})`);
  t.true(spreadMax <= SPREAD_THRESHOLD + SPREAD_MARGIN, `P/E spread reached ${spreadMax} (seed ${seed})`);
  // Every block that held cold data was emptied and erased at least once: the cold data moved.
  t.deepEqual(coldBlocks.filter((block) => ftl.table.eraseCount[block]! === 0), [], `cold blocks never erased (seed ${seed})`);
  t.deepEqual(await h.mismatches(0, hotFirst + hotLbas), [], `(seed ${seed})`);
  t.deepEqual(h.logged('error'), [], `engine errors (seed ${seed})`);
  await h.close();
});

test('blocks past their endurance are retired; nothing is lost until the array reports NO_SPACE', async (t) => {
  const seed = seedFor(t);
  const enduranceCycles = 20;
  const h = await Harness.create(seed, { geometry: { enduranceCycles }, ftl: { wearSpreadThreshold: 4 } });
  const ftl = h.array.ftl;
  const usableAtStart = ftl.usableBytes;
  const live = Math.floor(h.capacityLbas * 0.5);
  for (let lba = 0; lba < live; lba += 8) await h.write(lba, Math.min(8, live - lba));
  // Overwrite at random until 64 writes in a row fail; every failure must be NO_SPACE.
  let failuresInARow = 0;
  let accepted = 0;
  const otherErrors: string[] = [];
  for (let i = 0; i < 200_000 && failuresInARow < 64; i++) {
    const lba = h.random.nextInt(live);
    try {
      await h.write(lba, 1);
      accepted += 1;
      failuresInARow = 0;
      if (accepted % 500 === 0) await h.volume.flush();
    } catch (error) {
      failuresInARow += 1;
      if (codeOf(error) !== 'NO_SPACE') {
        otherErrors.push(`write ${i}: ${codeOf(error)} ${(error as Error).message}`);
        break;
      }
    }
  }
  const flash = h.flash();
  t.log(`accepted ${accepted} overwrites; retired for wear ${ftl.counters.retiredForWear}, bad ${flash.badEraseBlocks}, free ${flash.freeEraseBlocks}, P/E ${flash.peMin}..${flash.peMax}; usable ${usableAtStart} -> ${ftl.usableBytes} bytes, live ${ftl.liveBytes}`);
  t.deepEqual(otherErrors, [], `writes failed with something other than NO_SPACE (seed ${seed})`);
  t.is(failuresInARow, 64, `the array never filled up (seed ${seed})`);
  t.true(ftl.counters.retiredForWear > 0, `no block was retired for wear (seed ${seed})`);
  t.true(ftl.usableBytes < usableAtStart, `usable bytes did not shrink (seed ${seed})`);
  for (let block = 0; block < ftl.table.blockCount; block++) {
    if (ftl.table.state[block] !== BlockState.Bad) {
      t.true(ftl.table.eraseCount[block]! < enduranceCycles, `erase block ${block} is in use with P/E ${ftl.table.eraseCount[block]} >= endurance ${enduranceCycles} (seed ${seed})`);
    }
  }
  t.deepEqual(await h.mismatches(0, live), [], `after the array filled up (seed ${seed})`);
  const flushError = await h.volume.flush().then(() => null, (error: unknown) => codeOf(error));
  t.is(flushError, null, `flush of a worn-out array (seed ${seed})`);
  t.deepEqual(await h.mismatches(0, live), [], `after flush (seed ${seed})`);
  // At the end of life every remaining block sits one erase short of its endurance, so trimming
  // cannot bring space back here; trim itself is checked in ftl-faults.test.ts (see the bug
  // report there). Log what happens, and check that nothing is lost either way.
  const trimError = await h.trim(0, Math.floor(live / 2)).then(() => null, (error: unknown) => `${codeOf(error)} ${(error as Error).message}`);
  if (trimError === null) h.versions.fill(0, 0, Math.floor(live / 2));
  t.log(`trim of half the data on the worn-out array: ${trimError ?? 'ok'}`);
  t.deepEqual(await h.mismatches(0, live), [], `after trim (seed ${seed})`);
  // GC failing for want of a free block is the expected end of life here; nothing else may be logged.
  const errors = h.logged('error').filter((line) => !/^garbage collection failed .*no free erase block/.test(line));
  t.deepEqual(errors, [], `engine errors (seed ${seed})`);
  await h.close();
});
