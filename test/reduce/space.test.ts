/**
 * Dedup and pattern removal save NAND space, measured with physicalBytes (NAND bytes holding live
 * records) on an in-memory 1 GiB array:
 *   - 256 MiB of random data written a second time (same volume, other offset) and a third time
 *     (another volume) grow physicalBytes by less than 1 % of the first copy;
 *   - 1 GiB of zeroes as WRITE calls of zero buffers, and 1 GiB as WRITE_ZEROES, grow it by nothing.
 * Samples of every copy are read back, so the savings are not bought with wrong data.
 */
import test, { type ExecutionContext } from 'ava';
import { geometryForCapacity } from '../../src/nand/nand-device.js';
import type { Volume } from '../../src/volume/volume.js';
import { GiB, LBA_BYTES, MiB, expectCleanAudit, memoryArray, readBytes, seededBytes, statsOf, testSeed } from '../helpers/reduce-data.js';

const COPY_BYTES = 256 * MiB;
const WRITE_BYTES = 4 * MiB;

async function writeAll(volume: Volume, offsetBytes: number, data: Buffer): Promise<void> {
  for (let at = 0; at < data.length; at += WRITE_BYTES) await volume.write(offsetBytes + at, data.subarray(at, at + WRITE_BYTES), { fua: false });
}

/** Compares a few MiB at spread-out places of a copy (a full read-back would double the runtime). */
async function sampleCopy(t: ExecutionContext, volume: Volume, offsetBytes: number, data: Buffer, label: string): Promise<void> {
  for (const at of [0, 37 * MiB + 4096 * 3, 128 * MiB - 512, COPY_BYTES - MiB]) {
    const length = Math.min(MiB, data.length - at);
    t.true((await readBytes(volume, offsetBytes + at, length)).equals(data.subarray(at, at + length)), `${label}: MiB at +${at} reads back`);
  }
}

test('dedup: 256 MiB of random data written again (same volume, other offset; other volume) grows physicalBytes by < 1 %', async (t) => {
  const seed = testSeed(t);
  const { array } = await memoryArray(t, geometryForCapacity(GiB));
  const a = await array.createVolume('a', 4 * GiB);
  const b = await array.createVolume('b', 4 * GiB);
  const data = seededBytes(COPY_BYTES, seed);

  const started = Date.now();
  await writeAll(a, 0, data);
  const first = statsOf(array);
  t.log(`first copy: logical ${first.logicalBytes}, physical ${first.physicalBytes}, DRR ${first.dataReductionRatio} (${Date.now() - started} ms)`);
  t.true(first.physicalBytes >= COPY_BYTES, 'random data does not shrink');
  t.true(first.physicalBytes <= COPY_BYTES * 1.01, `the first copy takes ${first.physicalBytes} bytes: raw plus record headers`);
  t.is(first.reduction.liveChunks, COPY_BYTES / LBA_BYTES);

  await writeAll(a, GiB + 8 * LBA_BYTES, data);
  const second = statsOf(array);
  await writeAll(b, 0, data);
  const third = statsOf(array);
  t.log(`after 3 copies: logical ${third.logicalBytes}, physical ${third.physicalBytes}, DRR ${third.dataReductionRatio}, dedup hits ${third.reduction.dedupHits} (${Date.now() - started} ms)`);
  t.true(second.physicalBytes - first.physicalBytes < 0.01 * first.physicalBytes, `second copy grew physicalBytes by ${second.physicalBytes - first.physicalBytes}`);
  t.true(third.physicalBytes - first.physicalBytes < 0.01 * first.physicalBytes, `third copy grew physicalBytes by ${third.physicalBytes - first.physicalBytes}`);
  t.is(third.logicalBytes, 3 * COPY_BYTES, 'all three copies are mapped');
  t.true(third.dataReductionRatio > 2.9, `DRR ${third.dataReductionRatio}`);

  await sampleCopy(t, a, 0, data, 'first copy');
  await sampleCopy(t, a, GiB + 8 * LBA_BYTES, data, 'second copy');
  await sampleCopy(t, b, 0, data, 'third copy');

  // 1 GiB of zeroes as WRITE calls of zero buffers (pattern entries), then 1 GiB as WRITE_ZEROES:
  // half with NO_HOLE (zero patterns), half without (unmapped).
  const zeroes = Buffer.alloc(WRITE_BYTES);
  for (let at = 0; at < GiB; at += WRITE_BYTES) await b.write(GiB + at, zeroes, { fua: false });
  const afterWrites = statsOf(array);
  t.is(afterWrites.physicalBytes, third.physicalBytes, '1 GiB of zero WRITEs takes no NAND');
  t.is(afterWrites.reduction.liveChunks, third.reduction.liveChunks);
  t.is(afterWrites.reduction.patternBlocks - third.reduction.patternBlocks, GiB / LBA_BYTES, 'they are pattern entries');
  await b.writeZeroes(2 * GiB, 512 * MiB, { fua: false, noHole: true, fastZero: false });
  await b.writeZeroes(2 * GiB + 512 * MiB, 512 * MiB, { fua: false, noHole: false, fastZero: false });
  const afterZeroes = statsOf(array);
  t.is(afterZeroes.physicalBytes, third.physicalBytes, '1 GiB of WRITE_ZEROES takes no NAND');
  t.is(afterZeroes.reduction.liveChunks, third.reduction.liveChunks);
  t.log(`after 2 GiB of zeroes: logical ${afterZeroes.logicalBytes}, physical ${afterZeroes.physicalBytes}, DRR ${afterZeroes.dataReductionRatio} (${Date.now() - started} ms)`);
  for (const at of [GiB, GiB + 700 * MiB, 2 * GiB + 100 * MiB, 2 * GiB + 900 * MiB]) {
    t.true((await readBytes(b, at, MiB)).equals(Buffer.alloc(MiB)), `zeroed MiB at ${at} reads as zeroes`);
  }
  await expectCleanAudit(t, array);
});
