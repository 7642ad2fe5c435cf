import test from 'ava';
import { StorageError } from '../../src/common/errors.js';
import { FaultyNand, MemoryNand, NandFault, SeededRandom, isNandFault } from '../../src/nand/index.js';
import type { NandDevice } from '../../src/nand/index.js';
import { SMALL_GEOMETRY, invalid, pagesOf, registerNandConformanceTests } from './conformance.js';

registerNandConformanceTests('faulty over memory, no faults', async (geometry) => {
  const device = new FaultyNand(new MemoryNand(geometry), { seed: 1 });
  return { device, cleanup: () => device.close() };
});

const { pageBytes, pagesPerEraseBlock, eraseBlockCount } = SMALL_GEOMETRY;

/** A fixed script of operations; returns what happened to each, as text. */
async function runScript(device: NandDevice): Promise<string[]> {
  const outcomes: string[] = [];
  const record = async (label: string, operation: () => Promise<unknown>): Promise<void> => {
    try {
      await operation();
      outcomes.push(`${label} ok`);
    } catch (error) {
      outcomes.push(`${label} ${isNandFault(error) ? error.cause.kind : 'other'}`);
    }
  };
  for (let round = 0; round < 3; round += 1) {
    for (let eraseBlockIndex = 0; eraseBlockIndex < eraseBlockCount; eraseBlockIndex += 1) {
      const info = device.blockInfo(eraseBlockIndex);
      if (info.writePointer < pagesPerEraseBlock) {
        await record(`program ${eraseBlockIndex}`, () => device.programPages(eraseBlockIndex, info.writePointer, pagesOf(pageBytes, 1, round)));
      }
      await record(`read ${eraseBlockIndex}`, () => device.readPages(eraseBlockIndex, 0, 1));
      if (round === 2) await record(`erase ${eraseBlockIndex}`, () => device.eraseBlock(eraseBlockIndex));
    }
  }
  return outcomes;
}

const RATES = { programFailureRate: 0.3, eraseFailureRate: 0.3, readFailureRate: 0.2 };

test('the same seed gives the same failure sequence', async (t) => {
  const seed = 424242;
  t.log(`seed ${seed}`);
  const first = await runScript(new FaultyNand(new MemoryNand(SMALL_GEOMETRY), { seed, ...RATES }));
  const second = await runScript(new FaultyNand(new MemoryNand(SMALL_GEOMETRY), { seed, ...RATES }));
  t.deepEqual(first, second);
  for (const kind of ['program', 'erase', 'read']) t.true(first.some((outcome) => outcome.endsWith(` ${kind}`)), `some ${kind} failed`);
  t.true(first.some((outcome) => outcome.endsWith(' ok')));
  const other = await runScript(new FaultyNand(new MemoryNand(SMALL_GEOMETRY), { seed: seed + 1, ...RATES }));
  t.notDeepEqual(first, other, 'another seed gives another sequence');
});

test('an unseeded wrapper picks a seed and records it', (t) => {
  const device = new FaultyNand(new MemoryNand(SMALL_GEOMETRY));
  t.true(Number.isSafeInteger(device.seed) && device.seed >= 0 && device.seed <= 0xffffffff);
  t.throws(() => new FaultyNand(new MemoryNand(SMALL_GEOMETRY), { seed: -1 }), invalid);
  t.throws(() => new FaultyNand(new MemoryNand(SMALL_GEOMETRY), { bitFlipRate: 2 }), invalid);
});

test('an injected program failure is an IO error caused by a NandFault, and changes nothing', async (t) => {
  const inner = new MemoryNand(SMALL_GEOMETRY);
  const device = new FaultyNand(inner, { seed: 7 });
  await device.programPages(3, 0, pagesOf(pageBytes, 1, 1));
  device.failNextProgram(3);
  await device.programPages(2, 0, pagesOf(pageBytes, 1, 2));
  const error = await t.throwsAsync(device.programPages(3, 1, pagesOf(pageBytes, 2, 3)), { instanceOf: StorageError, code: 'IO' });
  t.true(error?.cause instanceof NandFault);
  t.like(error?.cause, { kind: 'program', eraseBlockIndex: 3, pageIndex: 1 });
  t.true(isNandFault(error));
  t.is(inner.blockInfo(3).writePointer, 1, 'the write pointer did not move');
  t.deepEqual(await device.readPages(3, 0, 1), pagesOf(pageBytes, 1, 1), 'data already there stays readable');
  await device.programPages(3, 1, pagesOf(pageBytes, 2, 3));
  t.is(device.injected.programFailures, 1);
});

test('planned erase and read failures hit the named block only', async (t) => {
  const device = new FaultyNand(new MemoryNand(SMALL_GEOMETRY), { seed: 8 });
  device.failNextErase(5);
  device.failNextRead();
  await device.eraseBlock(4);
  const erase = await t.throwsAsync(device.eraseBlock(5), { instanceOf: StorageError, code: 'IO' });
  t.like(erase?.cause, { kind: 'erase', eraseBlockIndex: 5 });
  t.is(device.blockInfo(5).eraseCount, 0, 'a failed erase does not count');
  const read = await t.throwsAsync(device.readPages(1, 2, 1), { instanceOf: StorageError, code: 'IO' });
  t.like(read?.cause, { kind: 'read', eraseBlockIndex: 1, pageIndex: 2 });
  await device.readPages(1, 2, 1);
  t.deepEqual(device.injected, { programFailures: 0, eraseFailures: 1, readFailures: 1, bitFlips: 0 });
});

test('misuse stays INVALID_ARGUMENT even when every operation would fail', async (t) => {
  const device = new FaultyNand(new MemoryNand(SMALL_GEOMETRY), { seed: 9, programFailureRate: 1, eraseFailureRate: 1 });
  await t.throwsAsync(device.programPages(0, 1, pagesOf(pageBytes, 1, 1)), invalid);
  await t.throwsAsync(device.eraseBlock(eraseBlockCount), invalid);
  await t.throwsAsync(device.programPages(0, 0, pagesOf(pageBytes, 1, 1)), { instanceOf: StorageError, code: 'IO' });
});

test('bit flips change the returned buffer only, one bit per page', async (t) => {
  const seed = 10;
  t.log(`seed ${seed}`);
  const inner = new MemoryNand(SMALL_GEOMETRY);
  const device = new FaultyNand(inner, { seed, bitFlipRate: 1 });
  const stored = pagesOf(pageBytes, pagesPerEraseBlock, 4);
  await device.programPages(0, 0, stored);
  const read = await device.readPages(0, 0, pagesPerEraseBlock);
  for (let page = 0; page < pagesPerEraseBlock; page += 1) {
    const slice = (buffer: Buffer): Buffer => buffer.subarray(page * pageBytes, (page + 1) * pageBytes);
    t.is(differingBits(slice(read), slice(stored)), 1, `page ${page}`);
  }
  t.deepEqual(await inner.readPages(0, 0, pagesPerEraseBlock), stored, 'the stored data is unchanged');
  t.is(device.injected.bitFlips, pagesPerEraseBlock);
});

test('a planned bit flip hits the first page of the next read of that block', async (t) => {
  const device = new FaultyNand(new MemoryNand(SMALL_GEOMETRY), { seed: 11 });
  const stored = pagesOf(pageBytes, 2, 5);
  await device.programPages(6, 0, stored);
  device.flipBitOnNextRead(6);
  t.deepEqual(await device.readPages(5, 0, 2), Buffer.alloc(2 * pageBytes));
  const read = await device.readPages(6, 0, 2);
  t.is(differingBits(read.subarray(0, pageBytes), stored.subarray(0, pageBytes)), 1);
  t.deepEqual(read.subarray(pageBytes), stored.subarray(pageBytes));
  t.deepEqual(await device.readPages(6, 0, 2), stored);
});

test('crash goes through to the memory model and keeps the generator', async (t) => {
  const device = new FaultyNand(new MemoryNand(SMALL_GEOMETRY), { seed: 12, readFailureRate: 0.5 });
  await device.programPages(0, 0, pagesOf(pageBytes, 1, 6));
  await device.sync();
  await device.programPages(0, 1, pagesOf(pageBytes, 1, 7));
  const after = device.crash();
  t.is(after.seed, 12);
  t.deepEqual(after.rates, device.rates);
  t.is(after.blockInfo(0).writePointer, 1);
  after.rates.readFailureRate = 0;
  t.deepEqual(await after.readPages(0, 0, 2), Buffer.concat([pagesOf(pageBytes, 1, 6), Buffer.alloc(pageBytes)]));
  const overFaulty = new FaultyNand(after, { seed: 13 });
  t.throws(() => overFaulty.crash(), { instanceOf: StorageError, code: 'NOT_SUPPORTED' });
});

test('the seeded generator replays and stays in [0, 1)', (t) => {
  const a = new SeededRandom(99);
  const b = new SeededRandom(99);
  const values = Array.from({ length: 1000 }, () => a.next());
  t.deepEqual(values, Array.from({ length: 1000 }, () => b.next()));
  t.true(values.every((value) => value >= 0 && value < 1));
  const mean = values.reduce((sum, value) => sum + value, 0) / values.length;
  t.true(Math.abs(mean - 0.5) < 0.05, `mean ${mean}`);
  const other = new SeededRandom(100);
  t.notDeepEqual(values.slice(0, 10), Array.from({ length: 10 }, () => other.next()));
});

function differingBits(a: Buffer, b: Buffer): number {
  let count = 0;
  for (let i = 0; i < a.length; i += 1) {
    let diff = a[i]! ^ b[i]!;
    while (diff !== 0) {
      count += diff & 1;
      diff >>= 1;
    }
  }
  return count;
}
