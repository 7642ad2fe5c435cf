/**
 * Compression saves NAND, not only bytes: compressed chunks are packed back to back into pages.
 *
 * On text-like 4 KiB blocks (LZ4 gives ~1.1 KiB, zstd ~0.7 KiB) physicalBytes must be within 5 % of
 * the sum of the blocks' compressed sizes computed independently with the codec libraries
 * (lz4-napi compressSync, zstd-napi compress) and far below the raw size; and the NAND bytes
 * actually programmed (whole pages) must be close to physicalBytes — if each chunk took a page
 * of its own, they would be the raw size. A mix with incompressible blocks stores those raw.
 */
import test from 'ava';
import { compressSync as lz4Compress } from 'lz4-napi';
import { compress as zstdCompress } from 'zstd-napi';
import { geometryForCapacity } from '../../src/nand/nand-device.js';
import type { CompressionName } from '../../src/reduce/codec.js';
import { LBA_BYTES, MiB, expectCleanAudit, memoryArray, randomBlock, readBytes, statsOf, textBlock } from '../helpers/reduce-data.js';

const BLOCKS = 4096; // 16 MiB
const RAW_BYTES = BLOCKS * LBA_BYTES;

const independent: Record<Exclude<CompressionName, 'none'>, (block: Buffer) => number> = {
  lz4: (block) => lz4Compress(block).length,
  zstd: (block) => zstdCompress(block, { compressionLevel: 3 }).length,
};

for (const compression of ['lz4', 'zstd'] as const) {
  test(`packing (${compression}): physicalBytes is within 5 % of the summed compressed sizes, and so are the NAND bytes programmed`, async (t) => {
    const { array } = await memoryArray(t, geometryForCapacity(256 * MiB), { compression });
    const volume = await array.createVolume('v', RAW_BYTES);
    const blocks = Array.from({ length: BLOCKS }, (_, i) => textBlock(i));
    const compressedSum = blocks.reduce((sum, block) => sum + independent[compression](block), 0);
    t.true(compressedSum < RAW_BYTES / 2, `precondition: the data compresses (${compressedSum} of ${RAW_BYTES} bytes)`);
    for (let i = 0; i < BLOCKS; i += 256) await volume.write(i * LBA_BYTES, Buffer.concat(blocks.slice(i, i + 256)), { fua: false });
    await array.flush();
    const stats = statsOf(array);
    const ratio = stats.physicalBytes / compressedSum;
    t.log(`${compression}: raw ${RAW_BYTES}, compressed (library) ${compressedSum}, physical ${stats.physicalBytes} (${ratio.toFixed(4)}x), NAND programmed ${stats.nandBytesWritten}, DRR ${stats.dataReductionRatio}`);
    t.true(Math.abs(ratio - 1) <= 0.05, `physicalBytes ${stats.physicalBytes} vs compressed sum ${compressedSum}`);
    t.true(stats.physicalBytes < 0.5 * RAW_BYTES, 'well below the raw size');
    t.true(stats.nandBytesWritten <= 1.05 * compressedSum + 64 * 1024, `NAND programmed ${stats.nandBytesWritten}: chunks share pages`);
    t.true(stats.nandBytesWritten < 0.5 * RAW_BYTES, 'the saving is in NAND pages');
    t.is(stats.reduction.liveChunks, BLOCKS);
    const back = await readBytes(volume, 0, RAW_BYTES);
    t.true(back.equals(Buffer.concat(blocks)), 'every packed chunk reads back (chunks spanning pages included)');
    await expectCleanAudit(t, array);
  });
}

test('packing: a mix of compressible and incompressible blocks costs compressed + raw sizes', async (t) => {
  const { array } = await memoryArray(t, geometryForCapacity(256 * MiB), { compression: 'lz4' });
  const volume = await array.createVolume('v', RAW_BYTES);
  const blocks = Array.from({ length: 1024 }, (_, i) => (i % 2 === 0 ? textBlock(10_000 + i) : randomBlock(10_000 + i)));
  const expected = blocks.reduce((sum, block, i) => sum + (i % 2 === 0 ? lz4Compress(block).length : LBA_BYTES), 0);
  await volume.write(0, Buffer.concat(blocks), { fua: false });
  await array.flush();
  const stats = statsOf(array);
  t.log(`mix: raw ${blocks.length * LBA_BYTES}, expected ${expected}, physical ${stats.physicalBytes}, NAND programmed ${stats.nandBytesWritten}`);
  t.true(Math.abs(stats.physicalBytes / expected - 1) <= 0.05, `physicalBytes ${stats.physicalBytes} vs ${expected}`);
  t.true(stats.nandBytesWritten <= 1.05 * expected + 64 * 1024, `NAND programmed ${stats.nandBytesWritten}`);
  t.true((await readBytes(volume, 0, blocks.length * LBA_BYTES)).equals(Buffer.concat(blocks)));
  await expectCleanAudit(t, array);
});

test('packing: with compression none the same text costs its raw size (the comparison can fail)', async (t) => {
  const { array } = await memoryArray(t, geometryForCapacity(256 * MiB), { compression: 'none' });
  const volume = await array.createVolume('v', RAW_BYTES);
  const blocks = Array.from({ length: 512 }, (_, i) => textBlock(i));
  await volume.write(0, Buffer.concat(blocks), { fua: false });
  const stats = statsOf(array);
  const compressedSum = blocks.reduce((sum, block) => sum + lz4Compress(block).length, 0);
  t.true(stats.physicalBytes >= blocks.length * LBA_BYTES, 'stored raw');
  t.true(stats.physicalBytes > 2 * compressedSum, 'far from what compression would give');
});
