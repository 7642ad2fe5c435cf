import test from 'ava';
import { StorageError } from '../../src/common/errors.js';
import { MemoryNand, SeededRandom } from '../../src/nand/index.js';
import { SMALL_GEOMETRY, invalid, pagesOf, registerNandConformanceTests } from './conformance.js';

registerNandConformanceTests('memory', async (geometry) => {
  const device = new MemoryNand(geometry);
  return { device, cleanup: () => device.close() };
});

const geometry = { ...SMALL_GEOMETRY, pageBytes: 2048 };
const { pageBytes, pagesPerEraseBlock } = geometry;
const zeros = (pageCount: number): Buffer => Buffer.alloc(pageCount * pageBytes);

test('crash: unsynced programs are lost, synced ones kept', async (t) => {
  const device = new MemoryNand(geometry);
  await device.programPages(0, 0, pagesOf(pageBytes, 2, 1));
  await device.sync();
  await device.programPages(0, 2, pagesOf(pageBytes, 1, 2));
  await device.programPages(1, 0, pagesOf(pageBytes, 1, 3));
  const after = device.crash();
  t.deepEqual(await after.readPages(0, 0, 4), Buffer.concat([pagesOf(pageBytes, 2, 1), zeros(2)]));
  t.deepEqual(await after.readPages(1, 0, 1), zeros(1));
  t.deepEqual(after.blockInfo(0), { eraseCount: 0, writePointer: 2, bad: false });
  t.deepEqual(after.blockInfo(1), { eraseCount: 0, writePointer: 0, bad: false });
  await after.programPages(0, 2, pagesOf(pageBytes, 1, 4));
  t.deepEqual(await after.readPages(0, 2, 1), pagesOf(pageBytes, 1, 4), 'the survivor is usable');
});

test('crash: an unsynced erase is undone, with its erase count', async (t) => {
  const device = new MemoryNand(geometry);
  await device.programPages(2, 0, pagesOf(pageBytes, pagesPerEraseBlock, 5));
  await device.eraseBlock(3);
  await device.sync();
  await device.eraseBlock(2);
  await device.eraseBlock(3);
  const after = device.crash();
  t.deepEqual(await after.readPages(2, 0, pagesPerEraseBlock), pagesOf(pageBytes, pagesPerEraseBlock, 5));
  t.deepEqual(after.blockInfo(2), { eraseCount: 0, writePointer: pagesPerEraseBlock, bad: false });
  t.deepEqual(after.blockInfo(3), { eraseCount: 1, writePointer: 0, bad: false });
});

test('crash: bad flags are durable only once synced', async (t) => {
  const device = new MemoryNand(geometry);
  device.markBad(4);
  await device.sync();
  device.markBad(5);
  const after = device.crash();
  t.true(after.blockInfo(4).bad);
  t.false(after.blockInfo(5).bad);
});

test('crash: a torn last page keeps its first half, and the pointer stays at the sync', async (t) => {
  const device = new MemoryNand(geometry);
  await device.programPages(0, 0, pagesOf(pageBytes, 1, 6));
  await device.sync();
  await device.programPages(1, 0, pagesOf(pageBytes, 1, 7));
  const last = pagesOf(pageBytes, 2, 8);
  await device.programPages(0, 1, last);
  const after = device.crash({ tornLastPage: true });
  const torn = Buffer.concat([last.subarray(pageBytes, pageBytes + pageBytes / 2), Buffer.alloc(pageBytes / 2)]);
  t.deepEqual(await after.readPages(0, 0, 3), Buffer.concat([pagesOf(pageBytes, 1, 6), zeros(1), torn]));
  t.deepEqual(await after.readPages(1, 0, 1), zeros(1), 'earlier unsynced programs are lost');
  t.is(after.blockInfo(0).writePointer, 1, 'the torn page lies at or above the write pointer');
  await after.programPages(0, 1, pagesOf(pageBytes, 3, 9));
  t.deepEqual(await after.readPages(0, 1, 3), pagesOf(pageBytes, 3, 9), 'programming at the pointer replaces leftovers');
});

test('crash: a random tear falls on a sector boundary strictly inside the page', async (t) => {
  const seed = 1234;
  t.log(`seed ${seed}`);
  const random = new SeededRandom(seed);
  const tearBytes = new Set<number>();
  for (let round = 0; round < 40; round += 1) {
    const device = new MemoryNand(geometry);
    const page = Buffer.alloc(pageBytes, 0xee);
    await device.programPages(0, 0, page);
    const read = await device.crash({ tornLastPage: true, random: () => random.next() }).readPages(0, 0, 1);
    const written = read.indexOf(0);
    t.true(written > 0 && written < pageBytes && written % 512 === 0, `tear at ${written}`);
    t.deepEqual(read.subarray(written), Buffer.alloc(pageBytes - written));
    tearBytes.add(written);
  }
  t.deepEqual([...tearBytes].sort((a, b) => a - b), [512, 1024, 1536]);
});

test('crash: a torn program after an unsynced erase means the erase reached the media', async (t) => {
  const device = new MemoryNand(geometry);
  await device.programPages(2, 0, pagesOf(pageBytes, 3, 10));
  await device.sync();
  await device.eraseBlock(2);
  await device.programPages(2, 0, pagesOf(pageBytes, 1, 11));
  const after = device.crash({ tornLastPage: true });
  const torn = Buffer.concat([pagesOf(pageBytes, 1, 11).subarray(0, pageBytes / 2), Buffer.alloc(pageBytes / 2)]);
  t.deepEqual(await after.readPages(2, 0, 3), Buffer.concat([torn, zeros(2)]));
  t.deepEqual(after.blockInfo(2), { eraseCount: 0, writePointer: 3, bad: false }, 'the record is the synced one');
});

test('crash: nothing is torn when everything was synced', async (t) => {
  const device = new MemoryNand(geometry);
  await device.programPages(0, 0, pagesOf(pageBytes, 2, 12));
  await device.sync();
  const after = device.crash({ tornLastPage: true });
  t.deepEqual(await after.readPages(0, 0, 2), pagesOf(pageBytes, 2, 12));
});

test('crash: the crashed device refuses work, and crashes chain', async (t) => {
  const device = new MemoryNand(geometry);
  await device.programPages(0, 0, pagesOf(pageBytes, 1, 13));
  await device.sync();
  const first = device.crash();
  await t.throwsAsync(device.readPages(0, 0, 1), { instanceOf: StorageError, code: 'SHUTTING_DOWN' });
  await first.programPages(0, 1, pagesOf(pageBytes, 1, 14));
  await first.sync();
  await first.eraseBlock(0);
  const second = first.crash();
  t.deepEqual(await second.readPages(0, 0, 2), Buffer.concat([pagesOf(pageBytes, 1, 13), pagesOf(pageBytes, 1, 14)]));
  t.deepEqual(second.blockInfo(0), { eraseCount: 0, writePointer: 2, bad: false });
});

// ---- Host space: a program the host file system has no room for stalls its erase block ------------

const noSpace = { instanceOf: StorageError, code: 'NO_SPACE' };

test('host full: a failed program writes nothing, programs behind it fail untried, and reprogramPages writes the range once there is room', async (t) => {
  const device = new MemoryNand(geometry);
  device.hostSpacePages = 2;
  await device.programPages(0, 0, pagesOf(pageBytes, 1, 1));
  // Issued back to back, as the FTL does: the second is queued behind the first. The first needs
  // two more pages and fails; the second would fit, but must not run (it would leave a gap).
  const first = device.programPages(0, 1, pagesOf(pageBytes, 2, 2));
  const second = device.programPages(0, 3, pagesOf(pageBytes, 1, 3));
  await t.throwsAsync(first, noSpace);
  await t.throwsAsync(second, noSpace);
  t.deepEqual(await device.readPages(0, 1, 3), zeros(3), 'nothing of either reached the device');
  t.is(device.blockInfo(0).writePointer, 4, 'the write pointer stays where the programs took it');

  await t.throwsAsync(device.reprogramPages(0, 2, pagesOf(pageBytes, 2, 5)), { ...invalid, message: /stall starts at page 1/ });
  await t.throwsAsync(device.reprogramPages(0, 1, pagesOf(pageBytes, 2, 5)), { ...invalid, message: /up to the write pointer/ });
  await t.throwsAsync(device.reprogramPages(1, 0, pagesOf(pageBytes, 1, 5)), { ...invalid, message: /not stalled/ });
  device.hostSpacePages = 10;
  const again = Buffer.concat([pagesOf(pageBytes, 2, 2), pagesOf(pageBytes, 1, 3)]);
  await device.reprogramPages(0, 1, again);
  t.deepEqual(await device.readPages(0, 0, 4), Buffer.concat([pagesOf(pageBytes, 1, 1), again]));
  await device.sync();
  const after = device.crash();
  t.deepEqual(after.blockInfo(0), { eraseCount: 0, writePointer: 4, bad: false }, 'the synced record covers the reprogrammed pages');
  t.deepEqual(await after.readPages(0, 1, 3), again);
});

test('host full: the synced write pointer never claims stalled pages, and a failed reprogram stalls again', async (t) => {
  const device = new MemoryNand(geometry);
  device.hostSpacePages = 2;
  await device.programPages(2, 0, pagesOf(pageBytes, 2, 6));
  await t.throwsAsync(device.programPages(2, 2, pagesOf(pageBytes, 2, 7)), noSpace);
  await device.sync();
  t.is(device.crash().blockInfo(2).writePointer, 2);

  const live = new MemoryNand(geometry);
  live.hostSpacePages = 0;
  await t.throwsAsync(live.programPages(3, 0, pagesOf(pageBytes, 1, 8)), noSpace);
  live.hostSpacePages = 1;
  await t.throwsAsync(live.programPages(3, 1, pagesOf(pageBytes, 1, 9)), noSpace, 'a program issued while stalled is not tried either');
  await t.throwsAsync(live.reprogramPages(3, 0, pagesOf(pageBytes, 2, 8)), noSpace);
  live.hostSpacePages = 2;
  await live.reprogramPages(3, 0, Buffer.concat([pagesOf(pageBytes, 1, 8), pagesOf(pageBytes, 1, 9)]));
  t.deepEqual(await live.readPages(3, 0, 2), Buffer.concat([pagesOf(pageBytes, 1, 8), pagesOf(pageBytes, 1, 9)]));
});

test('host full: an erase ends the stall and gives the pages back', async (t) => {
  const device = new MemoryNand(geometry);
  device.hostSpacePages = pagesPerEraseBlock;
  await device.programPages(4, 0, pagesOf(pageBytes, pagesPerEraseBlock, 9));
  await t.throwsAsync(device.programPages(5, 0, pagesOf(pageBytes, 1, 10)), noSpace);
  await device.eraseBlock(4);
  await device.eraseBlock(5);
  await device.programPages(5, 0, pagesOf(pageBytes, pagesPerEraseBlock, 11));
  t.deepEqual(await device.readPages(5, 0, pagesPerEraseBlock), pagesOf(pageBytes, pagesPerEraseBlock, 11));
  await t.throwsAsync(device.programPages(4, 0, pagesOf(pageBytes, 1, 12)), noSpace, 'the host space is what the erase gave back, no more');
});
