/**
 * Identical blocks written concurrently end up as one chunk: the dedup decision and the chunk it
 * creates are made in one synchronous step, so a write still in flight finds the chunk another
 * one just created. Many writes of the same block are started at once (Promise.all), to
 * different offsets, map pages and volumes; liveChunks must grow by exactly the number of
 * distinct blocks, and every copy must read back.
 */
import test from 'ava';
import { geometryForCapacity } from '../../src/nand/nand-device.js';
import type { CompressionName } from '../../src/reduce/codec.js';
import { LBA_BYTES, MiB, expectCleanAudit, memoryArray, randomBlock, readBytes, statsOf, textBlock } from '../helpers/reduce-data.js';

const VOLUME_BYTES = 1024 * MiB;
/** Spreads offsets over many map pages and both ends of the volume. */
const offsetOf = (i: number) => ((i * 7919) % (VOLUME_BYTES / LBA_BYTES)) * LBA_BYTES;

for (const [name, block, compression] of [
  ['incompressible', randomBlock(500), 'lz4'],
  ['text', textBlock(500), 'lz4'],
  ['text, zstd', textBlock(501), 'zstd'],
] as Array<[string, Buffer, CompressionName]>) {
  test(`concurrency: 64 writes of the same ${name} block in flight at once store one chunk`, async (t) => {
    const { array } = await memoryArray(t, geometryForCapacity(64 * MiB), { compression });
    const volume = await array.createVolume('v', VOLUME_BYTES);
    // Something stored before, so the test does not only see an empty array.
    await volume.write(VOLUME_BYTES - LBA_BYTES, randomBlock(1), { fua: false });
    const before = statsOf(array);
    await Promise.all(Array.from({ length: 64 }, (_, i) => volume.write(offsetOf(i), block, { fua: false })));
    const after = statsOf(array);
    t.is(after.reduction.liveChunks - before.reduction.liveChunks, 1, 'one new chunk');
    t.is(after.reduction.dedupHits - before.reduction.dedupHits, 63, 'the other 63 are dedup hits');
    t.true(after.physicalBytes - before.physicalBytes <= LBA_BYTES + 16, `physicalBytes grew by ${after.physicalBytes - before.physicalBytes}`);
    for (let i = 0; i < 64; i++) t.true((await readBytes(volume, offsetOf(i), LBA_BYTES)).equals(block), `copy ${i} reads back`);
    await expectCleanAudit(t, array);
  });
}

test('concurrency: 2 volumes × 32 writes of the same 16-block run, all in flight, store 16 chunks', async (t) => {
  const { array } = await memoryArray(t, geometryForCapacity(64 * MiB));
  const volumes = [await array.createVolume('a', VOLUME_BYTES), await array.createVolume('b', VOLUME_BYTES)];
  const run = Buffer.concat(Array.from({ length: 16 }, (_, i) => (i % 2 ? textBlock(600 + i) : randomBlock(600 + i))));
  const before = statsOf(array);
  await Promise.all(Array.from({ length: 64 }, (_, i) => volumes[i % 2]!.write(offsetOf(i) % (VOLUME_BYTES - run.length), run, { fua: false })));
  const after = statsOf(array);
  t.is(after.reduction.liveChunks - before.reduction.liveChunks, 16, 'one chunk per distinct block');
  t.is(after.reduction.dedupHits - before.reduction.dedupHits, 64 * 16 - 16);
  for (let i = 0; i < 64; i++) t.true((await readBytes(volumes[i % 2]!, offsetOf(i) % (VOLUME_BYTES - run.length), run.length)).equals(run), `copy ${i} reads back`);
  await expectCleanAudit(t, array);
});

test('concurrency: the same block written and overwritten concurrently in two volumes keeps refcounts exact', async (t) => {
  const { array } = await memoryArray(t, geometryForCapacity(64 * MiB));
  const volumes = [await array.createVolume('a', VOLUME_BYTES), await array.createVolume('b', VOLUME_BYTES)];
  const shared = randomBlock(700);
  const other = randomBlock(701);
  await Promise.all(Array.from({ length: 64 }, (_, i) => volumes[i % 2]!.write(i * LBA_BYTES, shared, { fua: false })));
  // Overwrite half of the copies while the rest is trimmed and rewritten, all at once.
  await Promise.all(
    Array.from({ length: 64 }, (_, i) => {
      const volume = volumes[i % 2]!;
      if (i % 4 === 0) return volume.write(i * LBA_BYTES, other, { fua: false });
      if (i % 4 === 1) return volume.trim(i * LBA_BYTES, LBA_BYTES, { fua: false });
      return volume.write(i * LBA_BYTES, shared, { fua: false });
    }),
  );
  const stats = statsOf(array);
  t.is(stats.reduction.liveChunks, 2, 'the shared block and the other one');
  for (let i = 0; i < 64; i++) {
    const expected = i % 4 === 0 ? other : i % 4 === 1 ? Buffer.alloc(LBA_BYTES) : shared;
    t.true((await readBytes(volumes[i % 2]!, i * LBA_BYTES, LBA_BYTES)).equals(expected), `lba ${i}`);
  }
  await expectCleanAudit(t, array);
});

test('one write of 300 blocks holding 37 distinct ones stores 37 chunks; the next writes start afresh', async (t) => {
  const { array } = await memoryArray(t, geometryForCapacity(64 * MiB));
  const volume = await array.createVolume('v', VOLUME_BYTES);
  const distinct = Array.from({ length: 37 }, (_, i) => (i % 3 === 0 ? textBlock(800 + i) : randomBlock(800 + i)));
  const data = Buffer.concat(Array.from({ length: 300 }, (_, i) => distinct[(i * 11) % 37]!));
  const before = statsOf(array);
  await volume.write(0, data, { fua: false });
  let after = statsOf(array);
  t.is(after.reduction.liveChunks - before.reduction.liveChunks, 37, 'one chunk per distinct block');
  t.is(after.reduction.dedupHits - before.reduction.dedupHits, 300 - 37, 'the rest share them');
  t.true((await readBytes(volume, 0, data.length)).equals(data));
  // Later writes (two blocks each: the same table, a new change) see none of the earlier entries
  // as their own: a pair of new distinct blocks stores two chunks, a pair of one block stores one.
  const [x, y, z] = [randomBlock(900), randomBlock(901), randomBlock(902)];
  await volume.write(400 * LBA_BYTES, Buffer.concat([x, y]), { fua: false });
  await volume.write(402 * LBA_BYTES, Buffer.concat([z, z]), { fua: false });
  after = statsOf(array);
  t.is(after.reduction.liveChunks - before.reduction.liveChunks, 40);
  t.true((await readBytes(volume, 400 * LBA_BYTES, 4 * LBA_BYTES)).equals(Buffer.concat([x, y, z, z])));
  await expectCleanAudit(t, array);
});
