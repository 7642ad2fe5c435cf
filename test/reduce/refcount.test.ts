/**
 * Refcounts under random interleavings of write, overwrite, TRIM and WRITE_ZEROES across three
 * volumes that share many duplicate blocks (seeded fast-check).
 *
 * A run is a list of rounds; a round gives each of some volumes one operation and runs them all
 * at once (Promise.all), so operations on different volumes that share chunks interleave inside
 * the engine. Contents come from a small pool (a few incompressible and text-like blocks, a
 * pattern, zero), so most written blocks are duplicates of blocks in other volumes.
 *
 * After a run: every volume equals its model, the audit is clean (each chunk's refcount equals the
 * map entries naming it, valid bytes add up, records verify), and — where dedup is exact (a real fingerprint, every match verified,
 * cache large enough) — there is exactly one live chunk per distinct data content still
 * referenced, and physicalBytes is exactly the record bytes of those contents.
 */
import test from 'ava';
import fc from 'fast-check';
import { LogStream } from '../../src/ftl/log-stream.js';
import { Codec, compressBlock } from '../../src/reduce/codec.js';
import type { FingerprintFunction } from '../../src/reduce/fingerprint.js';
import { detectPattern } from '../../src/reduce/pattern.js';
import { auditArray } from '../../src/volume/audit.js';
import type { ArrayOptions, FlashArray } from '../../src/volume/flash-array.js';
import type { Volume } from '../../src/volume/volume.js';
import {
  LBA_BYTES,
  SMALL_GEOMETRY,
  VolumeModel,
  blockFor,
  expectCleanAudit,
  expectSameAsModel,
  memoryArray,
  readBytes,
  statsOf,
  testSeed,
  type BlockSpec,
} from '../helpers/reduce-data.js';

const VOLUMES = ['a', 'b', 'c'];
const VOLUME_BLOCKS = 48;
const VOLUME_BYTES = VOLUME_BLOCKS * LBA_BYTES;
const RUNS = Number(process.env.PSTORAGE_REDUCE_RUNS ?? 25);

/** The content pool: 4 random, 3 text, 1 pattern, zero: nine contents, so duplicates abound. */
const POOL: BlockSpec[] = [
  { kind: 'random', id: 1 },
  { kind: 'random', id: 2 },
  { kind: 'random', id: 3 },
  { kind: 'random', id: 4 },
  { kind: 'text', id: 1 },
  { kind: 'text', id: 2 },
  { kind: 'text', id: 3 },
  { kind: 'pattern4', id: 1 },
  { kind: 'zero', id: 0 },
];
const POOL_BLOCKS = POOL.map(blockFor);

type Op =
  | { type: 'write'; lba: number; contents: number[]; headSkip: number; tailSkip: number }
  | { type: 'trim'; lba: number; blocks: number }
  | { type: 'zero'; offsetBytes: number; lengthBytes: number; noHole: boolean };

/** 0 two times in three (aligned), else any byte offset inside the block. */
const edgeSkip = fc.oneof(fc.constant(0), fc.constant(0), fc.nat({ max: LBA_BYTES - 1 }));

const writeOp = fc.record({
  type: fc.constant('write' as const),
  lba: fc.nat({ max: VOLUME_BLOCKS - 1 }),
  contents: fc.array(fc.nat({ max: POOL.length - 1 }), { minLength: 1, maxLength: 8 }),
  headSkip: edgeSkip,
  tailSkip: edgeSkip,
});
const trimOp = fc.record({ type: fc.constant('trim' as const), lba: fc.nat({ max: VOLUME_BLOCKS - 1 }), blocks: fc.integer({ min: 1, max: 16 }) });
const zeroOp = fc.record({
  type: fc.constant('zero' as const),
  offsetBytes: fc.nat({ max: VOLUME_BYTES - 1 }),
  lengthBytes: fc.integer({ min: 1, max: 12 * LBA_BYTES }),
  noHole: fc.boolean(),
});
const opArbitrary: fc.Arbitrary<Op> = fc.oneof({ weight: 6, arbitrary: writeOp }, { weight: 2, arbitrary: trimOp }, { weight: 1, arbitrary: zeroOp });

/** A round: at most one operation per volume, run concurrently. */
const roundArbitrary = fc.uniqueArray(fc.tuple(fc.nat({ max: VOLUMES.length - 1 }), opArbitrary), { minLength: 1, maxLength: VOLUMES.length, selector: ([volume]) => volume });

/** Applies one operation to the volume and to its model. */
async function apply(volume: Volume, model: VolumeModel, op: Op): Promise<void> {
  if (op.type === 'write') {
    const contents = op.contents.slice(0, VOLUME_BLOCKS - op.lba);
    const whole = Buffer.concat(contents.map((index) => POOL_BLOCKS[index]!));
    const tailSkip = contents.length === op.contents.length ? op.tailSkip : 0;
    if (op.headSkip + tailSkip >= whole.length) return;
    const data = whole.subarray(op.headSkip, whole.length - tailSkip);
    const offsetBytes = op.lba * LBA_BYTES + op.headSkip;
    model.write(offsetBytes, data);
    await volume.write(offsetBytes, data, { fua: false });
  } else if (op.type === 'trim') {
    // Whole logical blocks only: the engine treats TRIM as a hint and leaves partial edges alone.
    const blocks = Math.min(op.blocks, VOLUME_BLOCKS - op.lba);
    model.zero(op.lba * LBA_BYTES, blocks * LBA_BYTES);
    await volume.trim(op.lba * LBA_BYTES, blocks * LBA_BYTES, { fua: false });
  } else {
    const lengthBytes = Math.min(op.lengthBytes, VOLUME_BYTES - op.offsetBytes);
    model.zero(op.offsetBytes, lengthBytes);
    await volume.writeZeroes(op.offsetBytes, lengthBytes, { fua: false, noHole: op.noHole, fastZero: false });
  }
}

/** Distinct non-pattern block contents the models hold: what exact dedup stores once each. */
function distinctDataBlocks(models: VolumeModel[]): Buffer[] {
  const distinct = new Map<string, Buffer>();
  for (const model of models) {
    for (let lba = 0; lba < model.blocks; lba++) {
      const block = model.block(lba);
      if (detectPattern(block) === null) distinct.set(block.toString('base64'), block);
    }
  }
  return [...distinct.values()];
}

interface Config {
  name: string;
  options: ArrayOptions;
  /** Dedup is exact: one chunk per distinct content. */
  exact: boolean;
  /** Fails because of a reported engine bug (see below); more runs make the failure certain. */
}

const collidingFingerprint: FingerprintFunction = Object.assign((_block: Buffer) => Buffer.alloc(32, 0xc5), { cryptographic: false });
/** Weak but not constant: blocks agreeing on their first 8 bytes collide. */
const prefixFingerprint: FingerprintFunction = Object.assign((block: Buffer) => Buffer.concat([block.subarray(0, 8), Buffer.alloc(24)]), { cryptographic: false });

const CONFIGS: Config[] = [
  { name: 'keyed xxHash64, lz4', options: { compression: 'lz4' }, exact: true },
  { name: 'keyed xxHash64, lz4, every batch reduced on the worker', options: { compression: 'lz4', reductionWorkers: 1, workerMinBlocks: 0 }, exact: true },
  { name: 'keyed xxHash64, zstd, small metadata cache', options: { compression: 'zstd', cacheBytes: 96 * 1024 }, exact: true },
  // Regression (fixed bug, see test/reduce/collision.test.ts): with a non-cryptographic fingerprint,
  // one write holding a copy of a stored chunk C and a different block whose fingerprint also maps
  // to C used to share C for both.
  { name: 'colliding fingerprint (verified by byte compare)', options: { compression: 'lz4', fingerprint: collidingFingerprint }, exact: false },
  { name: 'prefix fingerprint (verified by byte compare)', options: { compression: 'none', fingerprint: prefixFingerprint }, exact: false },
  { name: 'dedup off', options: { compression: 'lz4', dedup: false }, exact: false },
];

for (const [index, config] of CONFIGS.entries()) {
  test(`refcounts: concurrent write/overwrite/trim/zero rounds across 3 volumes, ${config.name}: audit clean, data verifies`, async (t) => {
    const seed = testSeed(t, index);
    let failure: string | null = null;
    await fc.assert(
      fc.asyncProperty(fc.array(roundArbitrary, { minLength: 1, maxLength: 30 }), async (rounds) => {
        const { array } = await memoryArray(t, SMALL_GEOMETRY, { cacheBytes: 1024 * 1024, ...config.options });
        const volumes = await Promise.all(VOLUMES.map((name) => array.createVolume(name, VOLUME_BYTES)));
        const models = VOLUMES.map(() => new VolumeModel(VOLUME_BYTES));
        for (const round of rounds) await Promise.all(round.map(([v, op]) => apply(volumes[v]!, models[v]!, op)));
        const problems = await checkRun(array, volumes, models, config);
        await array.close();
        if (problems.length > 0) failure = problems.join('\n');
        return problems.length === 0;
      }),
      { seed, numRuns: config.options.fingerprint ? Math.max(RUNS, 100) : RUNS },
    ).catch((error: unknown) => {
      t.fail(`${(error as Error).message}\n${failure ?? ''}`);
    });
    t.pass();
  });
}

/** Everything that must hold after a run; returns the problems (empty when all is well). */
async function checkRun(array: FlashArray, volumes: Volume[], models: VolumeModel[], config: Config): Promise<string[]> {
  const problems: string[] = [];
  for (const [i, volume] of volumes.entries()) {
    const bytes = await readBytes(volume, 0, VOLUME_BYTES);
    if (!bytes.equals(models[i]!.bytes)) {
      const lba = Array.from({ length: VOLUME_BLOCKS }, (_, k) => k).find((k) => !bytes.subarray(k * LBA_BYTES, (k + 1) * LBA_BYTES).equals(models[i]!.block(k)));
      problems.push(`volume ${VOLUMES[i]}: lba ${lba} differs from the model`);
    }
  }
  const report = await auditArray(array);
  if (!report.ok) problems.push(`audit: ${report.problems.slice(0, 8).join('; ')}`);
  const stats = statsOf(array);
  if (report.liveChunks !== stats.reduction.liveChunks) problems.push(`stats say ${stats.reduction.liveChunks} live chunks, the chunk table holds ${report.liveChunks}`);
  const distinct = distinctDataBlocks(models);
  if (config.exact) {
    if (stats.reduction.liveChunks !== distinct.length) problems.push(`${stats.reduction.liveChunks} live chunks for ${distinct.length} distinct data blocks`);
    const codec = config.options.compression === 'zstd' ? Codec.Zstd : config.options.compression === 'none' ? Codec.Raw : Codec.Lz4;
    const expected = distinct.reduce((sum, block) => sum + LogStream.recordBytes(compressBlock(block, codec).stored.length), 0);
    if (stats.physicalBytes !== expected) problems.push(`physicalBytes ${stats.physicalBytes}, the distinct blocks need ${expected}`);
  } else if (stats.reduction.liveChunks < distinct.length && config.options.dedup !== false) {
    problems.push(`${stats.reduction.liveChunks} live chunks cannot hold ${distinct.length} distinct data blocks`);
  }
  return problems;
}

test('refcounts: the audit notices a refcount that does not match its references (the check can fail)', async (t) => {
  // Guards the guard: if auditArray stopped comparing refcounts, every test above would pass vacuously.
  const { array } = await memoryArray(t, SMALL_GEOMETRY);
  const a = await array.createVolume('a', VOLUME_BYTES);
  const b = await array.createVolume('b', VOLUME_BYTES);
  await a.write(0, POOL_BLOCKS[0]!, { fua: false });
  await b.write(0, POOL_BLOCKS[0]!, { fua: false });
  await expectCleanAudit(t, array, 'before the damage');
  const chunkId = [...Array(16).keys()].find((id) => array.chunks.isLoaded(id) && array.chunks.get(id)?.refcount === 2);
  t.not(chunkId, undefined, 'one chunk is shared by both volumes');
  array.chunks.incref(chunkId!);
  const report = await auditArray(array);
  t.false(report.ok, 'an extra reference is reported');
  t.true(report.problems.some((problem) => problem.includes(`chunk ${chunkId} has refcount 3 but 2 reference(s)`)), report.problems.join('\n'));
});

test('refcounts: after every volume is trimmed, no chunk and no physical byte is left', async (t) => {
  const seed = testSeed(t, 50);
  const rounds = fc.sample(fc.array(roundArbitrary, { minLength: 30, maxLength: 30 }), { seed, numRuns: 1 })[0]!;
  const { array } = await memoryArray(t, SMALL_GEOMETRY);
  const volumes = await Promise.all(VOLUMES.map((name) => array.createVolume(name, VOLUME_BYTES)));
  const models = VOLUMES.map(() => new VolumeModel(VOLUME_BYTES));
  for (const round of rounds) await Promise.all(round.map(([v, op]) => apply(volumes[v]!, models[v]!, op)));
  for (const [i, volume] of volumes.entries()) await expectSameAsModel(t, volume, models[i]!, VOLUMES[i]!);
  await Promise.all(volumes.map((volume) => volume.trim(0, VOLUME_BYTES, { fua: false })));
  await expectCleanAudit(t, array, 'after trimming everything');
  const stats = statsOf(array);
  t.is(stats.reduction.liveChunks, 0);
  t.is(stats.physicalBytes, 0);
  t.is(stats.logicalBytes, 0);
});
