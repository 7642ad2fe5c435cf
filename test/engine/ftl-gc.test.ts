/**
 * FTL scenarios through the real array: garbage collection on a nearly full device, running out
 * of space (ENOSPC) and getting it back, and victim policies on skewed and uniform overwrites.
 * Every run is seeded (see ftl-harness.ts); the seed is printed and appears in assertion messages.
 */
import test from 'ava';
import { Harness, RECORD_BYTES, codeOf, greedyTheoryWa, seedFor } from './ftl-harness.js';

test('GC on a 90% full device keeps every block readable and amplifies writes a finite amount', async (t) => {
  const seed = seedFor(t);
  const h = await Harness.create(seed, { ftl: { victimPolicy: 'cost-benefit' } });
  const fillLbas = Math.floor(h.capacityLbas * 0.9);
  // Fill with unique data in runs of 1–8 logical blocks, at queue depth 4.
  for (let lba = 0; lba < fillLbas; ) {
    const count = Math.min(1 + h.random.nextInt(8), fillLbas - lba);
    await h.write(lba, count);
    lba += count;
  }
  t.deepEqual(await h.mismatches(0, fillLbas), [], `after the fill (seed ${seed})`);
  const before = { nand: h.array.nandBytesWritten, host: h.array.counters.hostBytesWritten };
  // Overwrite three times the filled size, at random, mostly single blocks.
  await h.drive(3 * fillLbas, 4, () => {
    const count = h.random.next() < 0.8 ? 1 : 1 + h.random.nextInt(4);
    return { lba: h.random.nextInt(fillLbas - count + 1), count };
  });
  t.deepEqual(await h.mismatches(0, fillLbas), [], `after the overwrites (seed ${seed})`);
  await h.volume.flush();
  await h.quiesce();
  t.deepEqual(await h.mismatches(0, fillLbas), [], `after flush and GC (seed ${seed})`);

  const { gcRuns, erases } = h.array.ftl.counters;
  const stats = h.array.stats() as { writeAmplification: number; physicalBytes: number };
  const steadyWa = (h.array.nandBytesWritten - before.nand) / (h.array.counters.hostBytesWritten - before.host);
  t.log(`gcRuns ${gcRuns}, erases ${erases}, WA total ${stats.writeAmplification}, WA of the overwrite phase ${steadyWa.toFixed(3)}`);
  t.true(gcRuns > 0, `GC never ran (seed ${seed})`);
  t.true(erases > 0, `nothing was erased (seed ${seed})`);
  t.true(Number.isFinite(stats.writeAmplification) && stats.writeAmplification > 1, `WA ${stats.writeAmplification} (seed ${seed})`);
  t.true(steadyWa > 1 && Number.isFinite(steadyWa), `overwrite-phase WA ${steadyWa} (seed ${seed})`);
  // Live bytes agree with the model: one record per mapped logical block, nothing leaked.
  t.is(stats.physicalBytes, h.liveLbas * RECORD_BYTES, `physical bytes vs model (seed ${seed})`);
  t.deepEqual(h.logged('error'), [], `engine errors (seed ${seed})`);
  await h.close();
});

test('writing past the usable capacity fails with NO_SPACE, harms nothing, and trimming brings space back', async (t) => {
  const seed = seedFor(t);
  const h = await Harness.create(seed);
  const capacity = h.capacityLbas;
  let written = 0;
  let firstFailure: unknown = null;
  // Unique data, in runs of 1–4 blocks, until the array refuses; then a few more attempts.
  for (let lba = 0; lba < h.lbaCount - 8 && written < capacity * 2; ) {
    const count = 1 + h.random.nextInt(4);
    try {
      await h.write(lba, count);
      written += count;
      lba += count;
    } catch (error) {
      firstFailure = error;
      break;
    }
  }
  t.not(firstFailure, null, `${written} blocks of ${capacity} written without a failure (seed ${seed})`);
  t.is(codeOf(firstFailure), 'NO_SPACE', `first failure (seed ${seed})`);
  // The refused run may have been longer than what is left: top up one block at a time.
  for (let i = 0; i < 4; i++) {
    const error = await h.write(written, 1).then(() => null, (e: unknown) => e);
    if (error !== null) {
      t.is(codeOf(error), 'NO_SPACE', `top-up write (seed ${seed})`);
      break;
    }
    written += 1;
  }
  t.true(written >= capacity - 1, `only ${written} of ${capacity} blocks fitted before NO_SPACE (seed ${seed})`);
  t.true(written <= capacity, `${written} blocks accepted, more than the ${capacity} the array says it can hold (seed ${seed})`);
  // Later writes of new blocks keep failing cleanly.
  for (let i = 0; i < 16; i++) {
    const error = await h.write(written + i, 1).then(() => null, (e: unknown) => e);
    t.is(codeOf(error), 'NO_SPACE', `new block write ${i} after full (seed ${seed})`);
  }
  t.deepEqual(await h.mismatches(0, written + 16), [], `after NO_SPACE (seed ${seed})`);
  await h.volume.flush();
  t.deepEqual(await h.mismatches(0, written + 16), [], `after NO_SPACE and flush (seed ${seed})`);

  // Trim every other run of 8 logical blocks: about half the data.
  for (let lba = 0; lba < written; lba += 16) await h.trim(lba, Math.min(8, written - lba));
  await h.volume.flush();
  const freedLbas = written - h.liveLbas;
  t.true(freedLbas >= written / 2 - 8, `trim freed ${freedLbas} of ${written} (seed ${seed})`);
  // Space comes back: new unique data up to 90% of what was freed fits (written into the trimmed
  // holes), once GC reclaims the erase blocks the trim emptied or thinned.
  const refill = Math.floor(freedLbas * 0.9);
  for (let i = 0; i < refill; i++) {
    const lba = Math.floor(i / 8) * 16 + (i % 8);
    await h.write(lba, 1).catch((error: unknown) => t.fail(`refill write ${i} of ${refill} failed with ${codeOf(error)} (seed ${seed})`));
  }
  t.deepEqual(await h.mismatches(0, h.lbaCount), [], `after refill (seed ${seed})`);
  t.true(h.array.ftl.counters.erases > 0, `GC erased nothing while refilling (seed ${seed})`);
  t.deepEqual(h.logged('error'), [], `engine errors (seed ${seed})`);
  await h.close();
});

/** Overwrites `hotShare` of the writes onto the first `hotLbas` blocks, the rest uniformly. */
async function overwritePhase(h: Harness, liveLbas: number, writes: number, hotLbas: number, hotShare: number): Promise<number> {
  const before = { nand: h.array.nandBytesWritten, host: h.array.counters.hostBytesWritten };
  await h.drive(writes, 4, () => {
    const hot = h.random.next() < hotShare;
    const lba = hot ? h.random.nextInt(hotLbas) : hotLbas + h.random.nextInt(liveLbas - hotLbas);
    return { lba, count: 1 };
  });
  return (h.array.nandBytesWritten - before.nand) / (h.array.counters.hostBytesWritten - before.host);
}

async function fill(h: Harness, lbas: number): Promise<void> {
  for (let lba = 0; lba < lbas; lba += 8) await h.write(lba, Math.min(8, lbas - lba));
}

const POLICY_GEOMETRY = { eraseBlockCount: 64 };

test('cost-benefit and greedy both keep data on a skewed (80/20) overwrite; their WA is reported', async (t) => {
  const seed = seedFor(t);
  const results: Record<string, number> = {};
  for (const victimPolicy of ['greedy', 'cost-benefit'] as const) {
    const h = await Harness.create(seed, { geometry: POLICY_GEOMETRY, ftl: { victimPolicy } });
    const live = Math.floor(h.capacityLbas * 0.95);
    await fill(h, live);
    const hotLbas = Math.floor(live * 0.2);
    // Warm up, then measure.
    await overwritePhase(h, live, live, hotLbas, 0.8);
    const wa = await overwritePhase(h, live, 4 * live, hotLbas, 0.8);
    results[victimPolicy] = wa;
    t.true(Number.isFinite(wa) && wa >= 1, `${victimPolicy}: WA ${wa} (seed ${seed})`);
    t.deepEqual(await h.mismatches(0, live), [], `${victimPolicy} (seed ${seed})`);
    t.deepEqual(h.logged('error'), [], `${victimPolicy}: engine errors (seed ${seed})`);
    t.log(`${victimPolicy}: skewed 80/20 WA ${wa.toFixed(3)} (live ${live} blocks, gcRuns ${h.array.ftl.counters.gcRuns}, P/E ${h.flash().peMin}..${h.flash().peMax})`);
    await h.close();
  }
  t.log(`skewed WA: greedy ${results.greedy!.toFixed(3)}, cost-benefit ${results['cost-benefit']!.toFixed(3)}`);
});

test('uniform random overwrite at the array over-provisioning: measured greedy WA next to theory', async (t) => {
  const seed = seedFor(t);
  const h = await Harness.create(seed, { geometry: POLICY_GEOMETRY, ftl: { victimPolicy: 'greedy' } });
  const live = h.capacityLbas;
  await fill(h, live);
  await overwritePhase(h, live, live, 0, 0);
  const wa = await overwritePhase(h, live, 4 * live, 0, 0);
  t.deepEqual(await h.mismatches(0, live), [], `(seed ${seed})`);
  const ftl = h.array.ftl;
  // α = physical / live. Nominal: what the over-provisioning option promises, 1 / (1 - op).
  // Physical: counted in record slots, since a record never spans erase blocks (an erase block holds
  // floor(stream bytes / record bytes) records, the tail is lost): over every erase block, and over
  // the blocks GC may fill (without the reserve and the free-block target).
  const slotsPerBlock = Math.floor(ftl.streamBytesPerBlock / RECORD_BYTES);
  const alphas: Array<[string, number]> = [
    ['nominal 1/(1-op)', 1 / (1 - ftl.options.overProvisioning)],
    ['all erase blocks', (ftl.table.blockCount * slotsPerBlock) / live],
    ['without reserve and free target', ((ftl.table.blockCount - ftl.options.reserveBlocks - ftl.options.gcTargetFreeBlocks) * slotsPerBlock) / live],
  ];
  t.log(`uniform greedy WA measured ${wa.toFixed(3)}; theory α/(α+W(−αe^−α)): ${alphas.map(([name, alpha]) => `${greedyTheoryWa(alpha).toFixed(3)} at α=${alpha.toFixed(3)} (${name})`).join(', ')}`);
  t.true(Number.isFinite(wa) && wa > 1, `WA ${wa} (seed ${seed})`);
  t.deepEqual(h.logged('error'), [], `engine errors (seed ${seed})`);
  await h.close();
});

test('a sequential overwrite frees whole erase blocks after the next commit, without GC', async (t) => {
  const seed = seedFor(t);
  const h = await Harness.create(seed);
  const { pagesPerEraseBlock, eraseBlockCount } = h.array.ftl.nand.geometry;
  // A third of the device: far from the GC threshold, so only the eager release can erase.
  const lbas = Math.floor(h.capacityLbas / 3);
  for (let lba = 0; lba < lbas; lba += 8) await h.write(lba, Math.min(8, lbas - lba));
  await h.volume.flush();
  const freeBefore = h.array.ftl.table.freeBlocks;
  t.is(h.array.ftl.counters.erases, 0, `(seed ${seed})`);
  // Overwrite it all in the same order: every block the first pass filled is left with nothing live.
  for (let lba = 0; lba < lbas; lba += 8) await h.write(lba, Math.min(8, lbas - lba));
  await h.volume.flush(); // the commit that stops referencing the old records...
  await h.volume.flush(); // ...then the erases it allowed (released after the synced commit)
  await h.quiesce();
  const { erases, gcRuns, relocatedBytes } = h.array.ftl.counters;
  const filledBlocks = Math.floor(lbas / pagesPerEraseBlock); // a lower bound on the blocks the first pass filled
  t.log(`${eraseBlockCount} erase blocks, ${lbas} lbas overwritten, ${erases} erased, ${gcRuns} GC runs, free ${freeBefore} -> ${h.array.ftl.table.freeBlocks}`);
  t.is(gcRuns, 0, `GC ran (seed ${seed})`);
  t.is(relocatedBytes, 0, `(seed ${seed})`);
  t.true(erases >= filledBlocks - 1, `only ${erases} of ~${filledBlocks} dead blocks erased (seed ${seed})`);
  t.true(h.array.ftl.table.freeBlocks >= freeBefore - 2, `free blocks ${freeBefore} -> ${h.array.ftl.table.freeBlocks} (seed ${seed})`);
  t.deepEqual(await h.mismatches(0, lbas), [], `(seed ${seed})`);
  const reopened = await h.crashAndReopen();
  t.deepEqual(await reopened.mismatches(0, lbas), [], `after a crash (seed ${seed})`);
  t.deepEqual(h.logged('error'), [], `engine errors (seed ${seed})`);
  await reopened.close();
});
