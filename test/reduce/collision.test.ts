/**
 * Collision safety of dedup (DESIGN.md, "Address translation"): with a fingerprint that is not
 * cryptographic, a hit is shared only after a byte-for-byte compare, so blocks whose fingerprints
 * collide each keep their own content, and a block crafted to collide with another tenant's
 * block can neither read nor corrupt it. Identical blocks still dedup.
 *
 * The fingerprint used here returns the same 32 bytes for every block: every block collides with
 * every other, which is the worst case the verification has to survive.
 */
import test, { type ExecutionContext } from 'ava';
import { LogStream } from '../../src/ftl/log-stream.js';
import { Codec, compressBlock } from '../../src/reduce/codec.js';
import type { FingerprintFunction } from '../../src/reduce/fingerprint.js';
import type { FlashArray } from '../../src/volume/flash-array.js';
import type { Volume } from '../../src/volume/volume.js';
import { LBA_BYTES, SMALL_GEOMETRY, expectCleanAudit, memoryArray, randomBlock, readBytes, statsOf, textBlock } from '../helpers/reduce-data.js';

const VOLUME_BYTES = 4 * 1024 * 1024;
const GEOMETRY = { ...SMALL_GEOMETRY, eraseBlockCount: 128 };

let fingerprintCalls = 0;
/** Every block gets the same fingerprint. */
const collide: FingerprintFunction = Object.assign(
  (_block: Buffer) => {
    fingerprintCalls += 1;
    return Buffer.alloc(32, 0x42);
  },
  { cryptographic: false },
);

async function collidingArray(t: ExecutionContext): Promise<FlashArray> {
  const { array } = await memoryArray(t, GEOMETRY, { compression: 'lz4', fingerprint: collide });
  if (array.fingerprint !== collide) throw new Error('the array did not take the injected fingerprint function');
  return array;
}

async function expectBlock(t: ExecutionContext, volume: Volume, lba: number, expected: Buffer, what: string): Promise<void> {
  t.true((await readBytes(volume, lba * LBA_BYTES, LBA_BYTES)).equals(expected), `${what} (lba ${lba} of ${volume.record.name}) reads back its own content`);
}

const recordBytes = (block: Buffer) => LogStream.recordBytes(compressBlock(block, Codec.Lz4).stored.length);

test('collision: two different blocks with the same fingerprint each keep their own content', async (t) => {
  const array = await collidingArray(t);
  const volume = await array.createVolume('v', VOLUME_BYTES);
  const a = randomBlock(1);
  const b = textBlock(1);
  const calls = fingerprintCalls;
  await volume.write(0, a, { fua: false });
  await volume.write(LBA_BYTES, b, { fua: false });
  t.true(fingerprintCalls > calls, 'the injected fingerprint function is used');
  await expectBlock(t, volume, 0, a, 'first block');
  await expectBlock(t, volume, 1, b, 'second, colliding block');
  const stats = statsOf(array);
  t.is(stats.reduction.liveChunks, 2, 'two chunks: the collision was not shared');
  t.is(stats.reduction.dedupHits, 0);
  t.is(stats.physicalBytes, recordBytes(a) + recordBytes(b));
  await expectCleanAudit(t, array);
  // After a flush and with cold caches the answer is the same.
  await array.flush();
  await expectBlock(t, volume, 0, a, 'first block after flush');
  await expectBlock(t, volume, 1, b, 'second block after flush');
});

test('collision: two different blocks in one write, neither stored before, each keep their own content', async (t) => {
  const array = await collidingArray(t);
  const volume = await array.createVolume('v', VOLUME_BYTES);
  const a = randomBlock(2);
  const b = randomBlock(3);
  await volume.write(0, Buffer.concat([a, b]), { fua: false });
  await expectBlock(t, volume, 0, a, 'first block');
  await expectBlock(t, volume, 1, b, 'second block');
  t.is(statsOf(array).reduction.liveChunks, 2);
  await expectCleanAudit(t, array);
});

test('collision: 400 different blocks (one write each and in batches of 8) across two volumes all read back exactly', async (t) => {
  const array = await collidingArray(t);
  const volumes = [await array.createVolume('tenant-1', VOLUME_BYTES), await array.createVolume('tenant-2', VOLUME_BYTES)];
  const blockAt = (i: number) => (i % 3 === 0 ? textBlock(1000 + i) : randomBlock(1000 + i));
  // 200 single-block writes, alternating volumes.
  for (let i = 0; i < 200; i++) await volumes[i % 2]!.write(Math.floor(i / 2) * LBA_BYTES, blockAt(i), { fua: false });
  // 200 more in 8-block writes of distinct new blocks.
  for (let i = 200; i < 400; i += 8) {
    const data = Buffer.concat(Array.from({ length: 8 }, (_, k) => blockAt(i + k)));
    await volumes[(i / 8) % 2]!.write(i * LBA_BYTES, data, { fua: false });
  }
  let wrong = 0;
  for (let i = 0; i < 400; i++) {
    const [volume, lba] = i < 200 ? [volumes[i % 2]!, Math.floor(i / 2)] : [volumes[Math.floor(i / 8) % 2]!, i];
    if (!(await readBytes(volume, lba * LBA_BYTES, LBA_BYTES)).equals(blockAt(i))) wrong += 1;
  }
  t.is(wrong, 0, 'every block reads back as written');
  t.is(statsOf(array).reduction.liveChunks, 400, 'one chunk per distinct block');
  await expectCleanAudit(t, array);
});

test('collision: identical blocks still dedup (the byte compare succeeds)', async (t) => {
  const array = await collidingArray(t);
  const volume = await array.createVolume('v', VOLUME_BYTES);
  const other = await array.createVolume('w', VOLUME_BYTES);
  const a = textBlock(7);
  await volume.write(0, a, { fua: false });
  const before = statsOf(array);
  await volume.write(9 * LBA_BYTES, a, { fua: false });
  await other.write(3 * LBA_BYTES, a, { fua: false });
  let after = statsOf(array);
  t.is(after.reduction.liveChunks, before.reduction.liveChunks, 'the copies share the first chunk');
  t.is(after.reduction.dedupHits, before.reduction.dedupHits + 2);
  t.is(after.physicalBytes, before.physicalBytes, 'no NAND for the copies');
  // Pairs of identical blocks inside one write: X X Y Y stores two chunks.
  const x = randomBlock(70);
  const y = randomBlock(71);
  await volume.write(20 * LBA_BYTES, Buffer.concat([x, x, y, y]), { fua: false });
  after = statsOf(array);
  t.is(after.reduction.liveChunks, before.reduction.liveChunks + 2, 'X X Y Y in one write: two chunks');
  t.is(after.physicalBytes, before.physicalBytes + recordBytes(x) + recordBytes(y));
  for (const [lba, block] of [[0, a], [9, a], [20, x], [21, x], [22, y], [23, y]] as const) await expectBlock(t, volume, lba, block, `lba ${lba}`);
  await expectBlock(t, other, 3, a, 'copy in the other volume');
  await expectCleanAudit(t, array);
});

test('collision: a block crafted to collide with another tenant\'s block neither reads nor corrupts it', async (t) => {
  const array = await collidingArray(t);
  const victim = await array.createVolume('victim', VOLUME_BYTES);
  const attacker = await array.createVolume('attacker', VOLUME_BYTES);
  const secret = textBlock(4242);
  await victim.write(0, secret, { fua: false });
  const crafted = Buffer.from(secret);
  crafted[100] = crafted[100]! ^ 1; // differs in one byte; same (colliding) fingerprint
  await attacker.write(0, crafted, { fua: false });
  await expectBlock(t, attacker, 0, crafted, 'the attacker reads its own block, not the secret');
  await expectBlock(t, victim, 0, secret, 'the victim block is untouched');
  // The attacker overwrites and trims: the victim's chunk must keep its reference.
  await attacker.write(0, randomBlock(9), { fua: false });
  await attacker.trim(0, LBA_BYTES, { fua: false });
  await expectBlock(t, victim, 0, secret, 'the victim block survives the attacker\'s overwrite and trim');
  await expectCleanAudit(t, array);
});

// Regression (fixed): Volume.verifyCandidates used to record a verified *chunk id*, not a verified
// (block, chunk) pair. When one write held a block equal to an existing chunk C and another,
// different block whose fingerprint also mapped to C, the second block shared C too.
test('collision: in one write, a copy of a stored block and a different colliding block each keep their own content', async (t) => {
  const array = await collidingArray(t);
  const volume = await array.createVolume('v', VOLUME_BYTES);
  const a = randomBlock(11);
  const b = randomBlock(12);
  await volume.write(0, a, { fua: false });
  await volume.write(LBA_BYTES, Buffer.concat([a, b]), { fua: false });
  await expectBlock(t, volume, 1, a, 'the copy of A');
  await expectBlock(t, volume, 2, b, 'B, written next to a copy of A');
  t.is(statsOf(array).reduction.liveChunks, 2);
  await expectCleanAudit(t, array);
});
