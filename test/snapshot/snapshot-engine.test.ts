/**
 * Snapshot cases the CLI reaches that the engine once got wrong, kept as regression tests. In
 * process, on memory NAND and a memory metadata store, so they cost milliseconds.
 */
import test, { type ExecutionContext } from 'ava';
import { concatReadExtents } from '../../src/common/block-device.js';
import { silentLogger } from '../../src/common/log.js';
import { MemoryMetaStore } from '../../src/meta/memory-store.js';
import { MemoryNand } from '../../src/nand/memory-nand.js';
import { auditArray } from '../../src/volume/audit.js';
import { FlashArray } from '../../src/volume/flash-array.js';
import { createSnapshot, deleteSnapshot, deleteVolume, resizeVolume, restoreSnapshot } from '../../src/volume/snapshots.js';

const B = 4096;
const GEOMETRY = { pageBytes: 4096, pagesPerEraseBlock: 16, eraseBlockCount: 64, enduranceCycles: 100000 };

async function fresh(t: ExecutionContext): Promise<FlashArray> {
  const array = await FlashArray.assemble('memory', new MemoryMetaStore(), new MemoryNand(GEOMETRY), silentLogger, { cacheBytes: 1024 * 1024 }, true);
  t.teardown(() => array.close());
  return array;
}

function block(tag: number): Buffer {
  return Buffer.from(`block ${tag} `.repeat(Math.ceil(B / 6)).slice(0, B), 'latin1');
}

test('restore to an older snapshot, then delete the newer one', async (t) => {
  const array = await fresh(t);
  const volume = await array.createVolume('v', 64 * B);
  await volume.write(0, block(1), { fua: false });
  await createSnapshot(array, 'v', 's1');
  await volume.write(0, block(2), { fua: false });
  await createSnapshot(array, 'v', 's2');
  await restoreSnapshot(array, 'v', 's1');
  // deleteSnapshot requires exactly one child layer; after the restore s2's layer has none.
  await t.notThrowsAsync(deleteSnapshot(array, 'v', 's2'));
  await deleteVolume(array, 'v', { force: true });
  t.is(array.stats().physicalBytes, 0, 'every chunk freed once the volume and its snapshots are gone');
});

test('volume delete --force after a restore frees the newer snapshot too', async (t) => {
  const array = await fresh(t);
  const volume = await array.createVolume('v', 64 * B);
  await volume.write(0, block(1), { fua: false });
  await createSnapshot(array, 'v', 's1');
  await volume.write(B, block(2), { fua: false });
  await createSnapshot(array, 'v', 's2');
  await restoreSnapshot(array, 'v', 's1');
  await deleteVolume(array, 'v', { force: true });
  t.is(array.stats().physicalBytes, 0, 'the chunk only s2 referenced is freed');
  t.deepEqual((await auditArray(array)).problems, []);
});

test('a snapshot stays readable to its own size after its volume shrinks', async (t) => {
  const array = await fresh(t);
  const volume = await array.createVolume('v', 64 * B);
  await volume.write(40 * B, block(7), { fua: false });
  const snapshot = await createSnapshot(array, 'v', 's1');
  await resizeVolume(array, 'v', 16 * B, { force: true });
  const view = array.snapshotView(snapshot);
  t.is(view.sizeBytes, 64 * B);
  const data = concatReadExtents(await view.read(40 * B, B), B);
  t.true(data.equals(block(7)), 'the snapshot still reads what it held');
});
