/**
 * Reduce → store → read back gives identical bytes (seeded fast-check property, one test per
 * array configuration: compression lz4 / zstd / none × dedup on / off).
 *
 * A run is a random list of writes into a small volume. Each write covers 1–6 logical blocks
 * whose contents are of a random kind: incompressible, text-like, zero, a repeated 1/2/4/8-byte
 * word, a pattern with one byte changed; ids come from a small range half of the time, so many
 * blocks are duplicates. Half of the writes start and/or end inside a logical block (the engine
 * merges them with the old contents). The contents are laid out on logical-block boundaries, so
 * the whole blocks of an unaligned write are still exact patterns, duplicates, and so on.
 *
 * After every write its range reads back as written; after the run the whole volume equals the
 * model, unaligned reads do too, and the audit is clean.
 */
import test from 'ava';
import fc from 'fast-check';
import type { CompressionName } from '../../src/reduce/codec.js';
import type { Volume } from '../../src/volume/volume.js';
import {
  BLOCK_KINDS,
  LBA_BYTES,
  SMALL_GEOMETRY,
  VolumeModel,
  blockFor,
  expectCleanAudit,
  expectSameAsModel,
  firstDifference,
  memoryArray,
  readBytes,
  testSeed,
  type BlockSpec,
} from '../helpers/reduce-data.js';

const VOLUME_BLOCKS = 64;
const VOLUME_BYTES = VOLUME_BLOCKS * LBA_BYTES;
const RUNS = Number(process.env.PSTORAGE_REDUCE_RUNS ?? 25);

interface WriteSpec {
  lba: number;
  blocks: BlockSpec[];
  /** Bytes left out at the start of the first block and at the end of the last one. */
  headSkip: number;
  tailSkip: number;
}

const blockSpec: fc.Arbitrary<BlockSpec> = fc.record({
  kind: fc.constantFrom(...BLOCK_KINDS),
  id: fc.oneof(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 4, max: 1_000_000 })),
});

/** 0 half of the time (aligned), else a sector boundary or any byte. */
const skip = fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 1, max: 7 }).map((n) => n * 512), fc.integer({ min: 1, max: LBA_BYTES - 1 }));

const writeSpec: fc.Arbitrary<WriteSpec> = fc.record({
  lba: fc.integer({ min: 0, max: VOLUME_BLOCKS - 1 }),
  blocks: fc.array(blockSpec, { minLength: 1, maxLength: 6 }),
  headSkip: skip,
  tailSkip: skip,
});

/** The byte range and payload of a write, clipped to the volume; null if nothing is left. */
function layout(spec: WriteSpec): { offsetBytes: number; data: Buffer } | null {
  const blocks = spec.blocks.slice(0, VOLUME_BLOCKS - spec.lba);
  const whole = Buffer.concat(blocks.map(blockFor));
  const tailSkip = blocks.length === spec.blocks.length ? spec.tailSkip : 0;
  if (spec.headSkip + tailSkip >= whole.length) return null;
  return { offsetBytes: spec.lba * LBA_BYTES + spec.headSkip, data: whole.subarray(spec.headSkip, whole.length - tailSkip) };
}

async function readBack(volume: Volume, offsetBytes: number, expected: Buffer, what: string): Promise<void> {
  const actual = await readBytes(volume, offsetBytes, expected.length);
  if (!actual.equals(expected)) throw new Error(`${what}: bytes differ at +${firstDifference(actual, expected)} (offset ${offsetBytes}, length ${expected.length})`);
}

const CONFIGS: Array<{ compression: CompressionName; dedup: boolean }> = [];
for (const compression of ['lz4', 'zstd', 'none'] as const) for (const dedup of [true, false]) CONFIGS.push({ compression, dedup });

for (const { compression, dedup } of CONFIGS) {
  test(`round trip: compression ${compression}, dedup ${dedup ? 'on' : 'off'}: random kinds at aligned and unaligned offsets read back exactly`, async (t) => {
    const seed = testSeed(t, CONFIGS.findIndex((c) => c.compression === compression && c.dedup === dedup));
    await fc.assert(
      fc.asyncProperty(fc.array(writeSpec, { minLength: 1, maxLength: 20 }), fc.array(fc.tuple(fc.nat({ max: VOLUME_BYTES - 1 }), fc.integer({ min: 1, max: 5 * LBA_BYTES })), { maxLength: 4 }), async (writes, reads) => {
        const { array } = await memoryArray(t, SMALL_GEOMETRY, { compression, dedup, cacheBytes: 1024 * 1024 });
        const volume = await array.createVolume('v', VOLUME_BYTES);
        const model = new VolumeModel(VOLUME_BYTES);
        for (const [index, spec] of writes.entries()) {
          const write = layout(spec);
          if (write === null) continue;
          await volume.write(write.offsetBytes, write.data, { fua: false });
          model.write(write.offsetBytes, write.data);
          await readBack(volume, write.offsetBytes, write.data, `write ${index}`);
        }
        for (const [offsetBytes, length] of reads) {
          const lengthBytes = Math.min(length, VOLUME_BYTES - offsetBytes);
          await readBack(volume, offsetBytes, model.bytes.subarray(offsetBytes, offsetBytes + lengthBytes), 'unaligned read');
        }
        await readBack(volume, 0, model.bytes, 'whole volume');
        const stats = array.stats() as { reduction: { compression: string; dedup: boolean } };
        if (stats.reduction.compression !== compression || stats.reduction.dedup !== dedup) throw new Error(`array reports ${JSON.stringify(stats.reduction)}`);
        // A flush and a fresh read after it (the map and chunk pages may now come from the store).
        await array.flush();
        await readBack(volume, 0, model.bytes, 'whole volume after flush');
        await array.close();
      }),
      { seed, numRuns: RUNS },
    );
    t.pass();
  });
}

test('round trip ends with a clean audit and the model (lz4, dedup, every kind, many duplicates)', async (t) => {
  const seed = testSeed(t, 99);
  const random = fc.sample(fc.array(writeSpec, { minLength: 60, maxLength: 60 }), { seed, numRuns: 1 })[0]!;
  const { array } = await memoryArray(t, SMALL_GEOMETRY, { compression: 'lz4', dedup: true, cacheBytes: 256 * 1024 });
  const volume = await array.createVolume('v', VOLUME_BYTES);
  const model = new VolumeModel(VOLUME_BYTES);
  for (const spec of random) {
    const write = layout(spec);
    if (write === null) continue;
    await volume.write(write.offsetBytes, write.data, { fua: false });
    model.write(write.offsetBytes, write.data);
  }
  await expectSameAsModel(t, volume, model, 'volume');
  await expectCleanAudit(t, array);
});
