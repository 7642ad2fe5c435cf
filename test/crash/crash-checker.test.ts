/**
 * The crash test's checker must be able to fail: these tests feed it hand-made journals and
 * region images with the faults it exists to catch (a lost flushed write, a lost FUA write, a torn
 * block, another block's data, a damaged sector) and the outcomes it must accept (an unflushed
 * write present or absent). They also check that the Python workload and the TypeScript checker
 * derive the same bytes for a sector.
 */
import test from 'ava';
import { SYSTEM_PYTHON, WORKLOAD_SCRIPT, run } from './crash-campaign.js';
import { LBA_BYTES, SECTOR_BYTES, SECTORS_PER_LBA, dataSector, patternSector, sharedSector, versionOf } from './crash-content.js';
import { RegionModel, parseJournal, summarise } from './crash-model.js';

const SEED = 7;
const CYCLE = 1;
const REGION_BLOCKS = 4;

/** A region image; `blocks[lba]` lists 8 sector contents: 0 zero, ['D', id] data, ['P', id] pattern, ['S', key] shared, or a 512-byte Buffer. */
type SectorSpec = 0 | ['D' | 'P' | 'S', number] | Buffer;
function image(blocks: Record<number, SectorSpec[]>): Buffer {
  const out = Buffer.alloc(REGION_BLOCKS * LBA_BYTES);
  for (const [lbaText, sectors] of Object.entries(blocks)) {
    const lba = Number(lbaText);
    sectors.forEach((spec, sector) => {
      const at = lba * LBA_BYTES + sector * SECTOR_BYTES;
      if (spec === 0) return;
      if (Buffer.isBuffer(spec)) spec.copy(out, at);
      else if (spec[0] === 'D') dataSector(SEED, lba, sector, versionOf(CYCLE, spec[1])).copy(out, at);
      else if (spec[0] === 'S') sharedSector(SEED, spec[1], sector).copy(out, at);
      else patternSector(lba, versionOf(CYCLE, spec[1])).copy(out, at);
    });
  }
  return out;
}
const whole = (spec: SectorSpec): SectorSpec[] => new Array<SectorSpec>(SECTORS_PER_LBA).fill(spec);

// lba 0: write #1 acked, then FLUSH #2 issued and acked (covers #1), then write #4 in flight.
// lba 1: sub-block write #3 of sectors 2-3, acked after the flush was issued (not covered).
// lba 2: pattern write #5 with FUA, acked. lba 3: write #6 acked, then TRIM #7 acked, not covered.
const JOURNAL = [
  `S ${SEED} ${CYCLE} ${REGION_BLOCKS}`,
  'W 1 0 D 0 0 4096',
  'A 1',
  'F 2 1',
  'W 3 1 D 0 5120 1024',
  'A 2',
  'W 4 0 D 0 0 4096',
  'A 3',
  'W 5 0 P 1 8192 4096',
  'A 5',
  'W 6 1 D 0 12288 4096',
  'A 6',
  'W 7 0 T 0 12288 4096',
  'A 7',
  'X server gone',
].join('\n');

function check(region: Buffer, journalText = JOURNAL, options: { allAckedDurable?: boolean } = {}) {
  const model = new RegionModel(SEED, REGION_BLOCKS);
  const journal = parseJournal(journalText);
  return model.verify(region, model.expectations(journal, options)).violations;
}

const GOOD: Record<number, SectorSpec[]> = { 0: whole(['D', 1]), 2: whole(['P', 5]) };

test('accepts durable writes present and unflushed writes either present or absent', (t) => {
  t.deepEqual(check(image(GOOD)), []);
  const newest = { 0: whole(['D', 4]), 1: [0, 0, ['D', 3], ['D', 3], 0, 0, 0, 0] as SectorSpec[], 2: whole(['P', 5]), 3: whole(['D', 6]) };
  t.deepEqual(check(image(newest)), []);
});

test('catches a lost write that a completed FLUSH covered', (t) => {
  const violations = check(image({ 2: whole(['P', 5]) }));
  t.is(violations.length, 1);
  t.is(violations[0]!.lba, 0);
  t.regex(violations[0]!.message, /durable write request c1#1 .* was lost/);
});

test('catches a lost FUA write', (t) => {
  const violations = check(image({ 0: whole(['D', 1]) }));
  t.deepEqual(violations.map((v) => v.lba), [2]);
});

test('catches a torn block: half old, half new', (t) => {
  const torn = [...whole(['D', 1]).slice(0, 4), ...whole(['D', 4]).slice(4)];
  const violations = check(image({ ...GOOD, 0: torn }));
  t.deepEqual(violations.map((v) => v.lba), [0]);
  t.regex(violations[0]!.message, /torn or mixed/);
});

test('catches a sub-block write applied on the wrong base or partly', (t) => {
  const partly = [0, 0, ['D', 3], 0, 0, 0, 0, 0] as SectorSpec[];
  t.deepEqual(check(image({ ...GOOD, 1: partly })).map((v) => v.lba), [1]);
});

test("catches another block's data and a damaged sector", (t) => {
  const foreign = whole(dataSector(SEED, 1, 0, versionOf(CYCLE, 3)));
  const violations = check(image({ ...GOOD, 3: foreign }));
  t.deepEqual(violations.map((v) => v.lba), [3]);
  t.regex(violations[0]!.message, /another block's data: lba 1 sector 0/);
  const damaged = Buffer.from(dataSector(SEED, 0, 5, versionOf(CYCLE, 1)));
  damaged[300] ^= 1;
  const block0 = whole(['D', 1]);
  block0[5] = damaged;
  t.regex(check(image({ ...GOOD, 0: block0 }))[0]!.message, /damaged body/);
});

test('a write acknowledged after the FLUSH was issued is not covered by it', (t) => {
  const journal = [`S ${SEED} ${CYCLE} ${REGION_BLOCKS}`, 'W 1 0 D 0 0 4096', 'F 2 1', 'A 1', 'A 2'].join('\n');
  t.deepEqual(check(image({}), journal), []);
  const flushedAfter = [`S ${SEED} ${CYCLE} ${REGION_BLOCKS}`, 'W 1 0 D 0 0 4096', 'F 2 1', 'A 1', 'A 2', 'F 3 0', 'A 3'].join('\n');
  t.deepEqual(check(image({}), flushedAfter).map((v) => v.lba), [0]);
});

test('after a clean shutdown every acknowledged write must be there', (t) => {
  const violations = check(image(GOOD), JOURNAL, { allAckedDurable: true });
  // lba 1 must hold #3; lba 3 (write #6, then TRIM #7, both acknowledged) must read zeroes.
  t.deepEqual(violations.map((v) => v.lba), [1]);
  const clean = { ...GOOD, 1: [0, 0, ['D', 3], ['D', 3], 0, 0, 0, 0] as SectorSpec[] };
  t.deepEqual(check(image({ ...clean, 3: whole(['D', 6]) }), JOURNAL, { allAckedDurable: true }).map((v) => v.lba), [3]);
  t.deepEqual(check(image(clean), JOURNAL, { allAckedDurable: true }), []);
});

test('shared (deduplicable) blocks must hold their own pool block', (t) => {
  // Write #1 puts pool blocks 10 and 11 in lba 0 and 1, write #2 pool block 10 in lba 2; a FLUSH covers both.
  const journal = [`S ${SEED} ${CYCLE} ${REGION_BLOCKS}`, 'W 1 0 S 0 0 8192 10', 'W 2 1 S 0 8192 4096 10', 'A 1', 'A 2', 'F 3 0', 'A 3'].join('\n');
  const good = { 0: whole(['S', 10]), 1: whole(['S', 11]), 2: whole(['S', 10]) };
  t.deepEqual(check(image(good), journal), []);
  t.deepEqual(check(image({ ...good, 1: whole(['S', 10]) }), journal).map((v) => v.lba), [1]);
  const shuffled = whole(['S', 10]);
  shuffled[3] = sharedSector(SEED, 10, 4);
  t.regex(check(image({ ...good, 2: shuffled }), journal)[0]!.message, /another block's data/);
});

test('error replies other than a lost connection are reported', (t) => {
  const journal = parseJournal([`S ${SEED} ${CYCLE} ${REGION_BLOCKS}`, 'W 1 0 D 0 0 4096', 'E 1 5', 'W 2 0 D 0 4096 4096', 'E 2 107'].join('\n'));
  t.deepEqual(summarise(journal).serverErrors, ['request 1 (D 0+4096) failed with errno 5']);
});

test('the Python workload and the checker derive the same sector bytes', async (t) => {
  const cases: Array<[number, number, number]> = [
    [5, 3, versionOf(2, 7)],
    [5, 3, 3 * 2 ** 20], // version divisible by 3: the compressible body
    [2047, 0, versionOf(999, 12345)],
  ];
  const script = [
    'import importlib.util, sys',
    `spec = importlib.util.spec_from_file_location("w", ${JSON.stringify(WORKLOAD_SCRIPT)})`,
    'w = importlib.util.module_from_spec(spec); spec.loader.exec_module(w)',
    ...cases.map(([lba, sector, version]) => `print(w.data_sector(${SEED}, ${lba}, ${sector}, ${version}).hex())`),
    `print(w.pattern_block(9, ${versionOf(4, 2)}).hex())`,
    `print(w.shared_sector(${SEED}, 17, 6).hex())`,
    `print(w.shared_sector(${SEED}, 18, 0).hex())`,
  ].join('\n');
  const result = await run(SYSTEM_PYTHON, ['-B', '-c', script], 20_000);
  t.is(result.code, 0, result.output);
  const lines = result.output.trim().split('\n');
  cases.forEach(([lba, sector, version], i) => t.is(lines[i], dataSector(SEED, lba, sector, version).toString('hex')));
  t.is(lines[cases.length], Buffer.concat(new Array(SECTORS_PER_LBA).fill(patternSector(9, versionOf(4, 2)))).toString('hex'));
  t.is(lines[cases.length + 1], sharedSector(SEED, 17, 6).toString('hex'));
  t.is(lines[cases.length + 2], sharedSector(SEED, 18, 0).toString('hex'));
});
