import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { StorageError } from '../../src/common/errors.js';
import { FileNand, IMAGE_FILE_NAME, SPARE_FILE_NAME } from '../../src/nand/index.js';
import { directOffsetOf } from '../../src/nand/nand-device.js';
import type { NandGeometry } from '../../src/nand/index.js';
import { SMALL_GEOMETRY, pagesOf, registerNandConformanceTests } from './conformance.js';

function temporaryDirectory(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'pstorage-nand-'));
}

function removeDirectory(directory: string): void {
  fs.rmSync(directory, { recursive: true, force: true });
}

registerNandConformanceTests('file', async (geometry) => {
  const directory = temporaryDirectory();
  const device = await FileNand.open(directory, geometry, { create: true });
  return {
    device,
    cleanup: async () => {
      await device.close();
      removeDirectory(directory);
    },
  };
});

/** 64 erase blocks of 64 pages of 4 KiB: 16 MiB. */
const GEOMETRY: NandGeometry = { pageBytes: 4096, pagesPerEraseBlock: 64, eraseBlockCount: 64, enduranceCycles: 3000 };
const ERASE_BLOCK_BYTES = 4096 * 64;

function allocatedBytes(filePath: string): number {
  return fs.statSync(filePath).blocks * 512;
}

/** Copies the image and spare files of an open device to `DIR/after-crash`, as a crash would leave them. */
function copyAsCrashed(directory: string): string {
  const copy = path.join(directory, 'after-crash');
  fs.mkdirSync(copy);
  for (const name of [IMAGE_FILE_NAME, SPARE_FILE_NAME]) fs.copyFileSync(path.join(directory, name), path.join(copy, name));
  return copy;
}

/** Runs `body` with a fresh directory, removed afterwards. */
async function withDirectory(body: (directory: string) => Promise<void>): Promise<void> {
  const directory = temporaryDirectory();
  try {
    await body(directory);
  } finally {
    removeDirectory(directory);
  }
}

test('the image is sparse at creation and shrinks after erases (no warm pool)', async (t) => {
  await withDirectory(async (directory) => {
    const device = await FileNand.open(directory, GEOMETRY, { create: true, warmEraseBytes: 0 });
    const imagePath = path.join(directory, IMAGE_FILE_NAME);
    t.is(fs.statSync(imagePath).size, 64 * ERASE_BLOCK_BYTES);
    t.is(allocatedBytes(imagePath), 0, 'no data written at creation');
    const sparePath = path.join(directory, SPARE_FILE_NAME);
    t.true(allocatedBytes(sparePath) >= fs.statSync(sparePath).size, 'the spare file takes its space up front (a sync never needs new space)');
    for (const eraseBlockIndex of [3, 4, 5]) await device.programPages(eraseBlockIndex, 0, pagesOf(4096, 64, eraseBlockIndex));
    await device.sync();
    t.true(allocatedBytes(imagePath) >= 3 * ERASE_BLOCK_BYTES);
    await device.eraseBlock(4);
    await device.eraseBlock(5);
    t.true(device.punchSupported);
    t.true(allocatedBytes(imagePath) < 2 * ERASE_BLOCK_BYTES, `allocated ${allocatedBytes(imagePath)}`);
    t.is(await device.allocatedBytes(), allocatedBytes(imagePath));
    t.deepEqual(await device.readPages(3, 0, 64), pagesOf(4096, 64, 3), 'the punch spared its neighbour');
    await device.close();
  });
});

test('reopen keeps synced data, erase counts, write pointers and bad flags', async (t) => {
  await withDirectory(async (directory) => {
    const device = await FileNand.open(directory, GEOMETRY, { create: true });
    await device.programPages(7, 0, pagesOf(4096, 5, 1));
    await device.eraseBlock(8);
    await device.eraseBlock(8);
    await device.programPages(8, 0, pagesOf(4096, 2, 2));
    device.markBad(9);
    await device.sync();
    await device.close();
    const reopened = await FileNand.open(directory, GEOMETRY);
    t.deepEqual(reopened.blockInfo(7), { eraseCount: 0, writePointer: 5, bad: false });
    t.deepEqual(reopened.blockInfo(8), { eraseCount: 2, writePointer: 2, bad: false });
    t.deepEqual(reopened.blockInfo(9), { eraseCount: 0, writePointer: 0, bad: true });
    t.deepEqual(await reopened.readPages(7, 0, 5), pagesOf(4096, 5, 1));
    t.deepEqual(await reopened.readPages(8, 0, 2), pagesOf(4096, 2, 2));
    await t.throwsAsync(reopened.programPages(7, 4, pagesOf(4096, 1, 3)), { instanceOf: StorageError, code: 'INVALID_ARGUMENT' });
    await reopened.close();
  });
});

test('close syncs, and reopening without a geometry uses the recorded one', async (t) => {
  await withDirectory(async (directory) => {
    const device = await FileNand.open(directory, GEOMETRY, { create: true });
    await device.programPages(1, 0, pagesOf(4096, 3, 4));
    await device.close();
    const reopened = await FileNand.open(directory);
    t.deepEqual(reopened.geometry, GEOMETRY);
    t.is(reopened.blockInfo(1).writePointer, 3);
    await reopened.close();
  });
});

test('after a crash the records are those of the last sync', async (t) => {
  await withDirectory(async (directory) => {
    const device = await FileNand.open(directory, GEOMETRY, { create: true, warmEraseBytes: 0 });
    await device.programPages(2, 0, pagesOf(4096, 2, 5));
    await device.programPages(6, 0, pagesOf(4096, 1, 6));
    await device.sync();
    await device.programPages(2, 2, pagesOf(4096, 1, 7));
    await device.eraseBlock(6);
    // What a power cut could leave: the page cache's image (here: everything written) and the
    // spare file as last synced. Copy the files while the device is still open, as kill -9 would.
    const after = await FileNand.open(copyAsCrashed(directory), GEOMETRY);
    t.deepEqual(after.blockInfo(2), { eraseCount: 0, writePointer: 2, bad: false }, 'the unsynced program is not recorded');
    t.deepEqual(await after.readPages(2, 2, 1), pagesOf(4096, 1, 7), 'its data may still sit above the pointer');
    t.deepEqual(after.blockInfo(6), { eraseCount: 0, writePointer: 1, bad: false }, 'the unsynced erase is not recorded');
    t.deepEqual(await after.readPages(6, 0, 1), Buffer.alloc(4096), 'although the block was in fact erased');
    await after.close();
    await device.close();
  });
});

test('warm pool: by default a pause of seconds between bursts of writes keeps it (memory given back costs 12-17 µs a page to write into again)', async (t) => {
  await withDirectory(async (directory) => {
    const device = await FileNand.open(directory, GEOMETRY, { create: true });
    for (const block of [1, 2]) await device.programPages(block, 0, pagesOf(4096, 64, block));
    await device.sync();
    await device.eraseBlock(1);
    await device.eraseBlock(2);
    t.is(device.warmEraseBlocks, 2);
    await new Promise((resolve) => setTimeout(resolve, 3000));
    t.is(device.warmEraseBlocks, 2, 'still kept after 3 s without a program or an erase');
    await device.programPages(2, 0, pagesOf(4096, 64, 20));
    t.is(device.warmEraseBlocks, 1, 'the next burst programs a kept block');
    t.is(device.warmProgrammedBytes, 64 * 4096, 'and counts it as programmed over kept pages');
    await device.close();
    t.is(device.warmEraseBlocks, 0, 'close punches what is left');
  });
});

test('warm pool: an erase keeps the old pages on the host but they read as zeros; programs overwrite them; the pool is punched when idle, full, released or closed', async (t) => {
  await withDirectory(async (directory) => {
    // A pool of two erase blocks.
    // (Idle after 3 s: long enough that a slow machine does not punch in the middle of the test.)
    const device = await FileNand.open(directory, GEOMETRY, { create: true, warmEraseBytes: 2 * ERASE_BLOCK_BYTES, warmOverflowBytes: 0, warmIdleMs: 3000 });
    const imagePath = path.join(directory, IMAGE_FILE_NAME);
    for (const block of [3, 4, 5, 6]) await device.programPages(block, 0, pagesOf(4096, 64, block));
    await device.sync();
    await device.eraseBlock(4);
    t.is(device.warmEraseBlocks, 1);
    t.true(allocatedBytes(imagePath) >= 4 * ERASE_BLOCK_BYTES, 'the erase punched nothing');
    t.deepEqual(await device.readPages(4, 0, 64), Buffer.alloc(64 * 4096), 'erased pages read as zeros (async)');
    t.deepEqual(device.readPagesSync(4, 10, 3), Buffer.alloc(3 * 4096), 'and synchronously');
    t.is(device.viewPagesSync(4, 0, 1), null, 'no view of stale pages through the mapping');
    t.is(device.mapPagesSync(4, 0, 1), -1, 'nor a mapped offset');
    t.deepEqual(device.blockInfo(4), { eraseCount: 1, writePointer: 0, bad: false });

    // A program overwrites in place; pages above the write pointer still read as zeros.
    await device.programPages(4, 0, pagesOf(4096, 2, 40));
    t.deepEqual(device.readPagesSync(4, 0, 4), Buffer.concat([pagesOf(4096, 2, 40), Buffer.alloc(2 * 4096)]));
    t.deepEqual(await device.readPages(4, 1, 2), Buffer.concat([pagesOf(4096, 2, 40).subarray(4096), Buffer.alloc(4096)]));
    t.true(device.viewPagesSync(4, 0, 2)!.equals(pagesOf(4096, 2, 40)), 'programmed pages are viewed through the mapping as ever');
    // Programmed to its last page, the block holds nothing stale.
    await device.programPages(4, 2, pagesOf(4096, 62, 41));
    t.is(device.warmEraseBlocks, 0);
    t.true(device.viewPagesSync(4, 60, 4)!.equals(pagesOf(4096, 62, 41).subarray(58 * 4096)));

    // Full pool: the oldest stale block is punched (the part above its write pointer).
    await device.eraseBlock(3);
    await device.programPages(3, 0, pagesOf(4096, 1, 30));
    await device.eraseBlock(5);
    const erasing = device.eraseBlock(6);
    // Block 3's punch is queued now: its programmed page reads on meanwhile, synchronously too
    // (regression: the punch counted as a program in flight, and the FTL's reads failed).
    t.deepEqual(device.readPagesSync(3, 0, 2), Buffer.concat([pagesOf(4096, 1, 30), Buffer.alloc(4096)]), 'read while the punch is in flight');
    t.true(device.viewPagesSync(3, 0, 1)!.equals(pagesOf(4096, 1, 30)), 'viewed while the punch is in flight');
    t.true(device.mapPagesSync(3, 0, 1) >= 0);
    await erasing;
    t.is(device.warmEraseBlocks, 2);
    await device.sync();
    t.true(allocatedBytes(imagePath) < 3 * ERASE_BLOCK_BYTES + 2 * 4096, `block 3's tail punched: ${allocatedBytes(imagePath)}`);
    t.deepEqual(device.readPagesSync(3, 0, 2), Buffer.concat([pagesOf(4096, 1, 30), Buffer.alloc(4096)]), 'its programmed page survived the punch');

    // Released (the host is full): everything stale is punched at once, and nothing is kept warm.
    await device.releaseWarm();
    t.is(device.warmEraseBlocks, 0);
    t.true(allocatedBytes(imagePath) < ERASE_BLOCK_BYTES + 2 * 4096, `released: ${allocatedBytes(imagePath)}`);
    await device.eraseBlock(4);
    t.is(device.warmEraseBlocks, 0, 'punched at the erase while released');
    device.resumeWarm();

    // Idle: punched after a quiet second.
    await device.programPages(7, 0, pagesOf(4096, 64, 7));
    await device.eraseBlock(7);
    t.is(device.warmEraseBlocks, 1);
    const before = allocatedBytes(imagePath);
    const erasedAt = Date.now();
    while (device.warmEraseBlocks > 0 && Date.now() - erasedAt < 15_000) await new Promise((resolve) => setTimeout(resolve, 100));
    t.is(device.warmEraseBlocks, 0, 'punched when idle');
    t.true(Date.now() - erasedAt >= 2900, 'and not before');
    await new Promise((resolve) => setTimeout(resolve, 200)); // the punch itself
    t.true(allocatedBytes(imagePath) <= before - ERASE_BLOCK_BYTES, `idle punch: ${before} -> ${allocatedBytes(imagePath)}`);

    // Close punches what is left.
    await device.programPages(8, 0, pagesOf(4096, 64, 8));
    await device.eraseBlock(8);
    t.is(device.warmEraseBlocks, 1);
    await device.close();
    t.true(allocatedBytes(imagePath) < 2 * 4096 + 64 * 4096, `closed: ${allocatedBytes(imagePath)}`);
    const reopened = await FileNand.open(directory, GEOMETRY);
    t.deepEqual(reopened.readPagesSync(8, 0, 64), Buffer.alloc(64 * 4096));
    t.deepEqual(reopened.readPagesSync(3, 0, 1), pagesOf(4096, 1, 30));
    await reopened.close();
  });
});

test('warm pool: the erases of a commit may take it over its bound for a while; what programs did not take back is punched then, oldest first', async (t) => {
  await withDirectory(async (directory) => {
    // Bound 2 blocks, 2 more for up to a second; no idle punch during the test.
    const device = await FileNand.open(directory, GEOMETRY, { create: true, warmEraseBytes: 2 * ERASE_BLOCK_BYTES, warmOverflowBytes: 2 * ERASE_BLOCK_BYTES, warmOverflowMs: 1000, warmIdleMs: 600_000 });
    const imagePath = path.join(directory, IMAGE_FILE_NAME);
    for (const block of [1, 2, 3, 4, 5, 6]) await device.programPages(block, 0, pagesOf(4096, 64, block));
    await device.sync();
    const full = allocatedBytes(imagePath);
    for (const block of [1, 2, 3, 4]) await device.eraseBlock(block);
    t.is(device.warmEraseBlocks, 4, 'bound and overflow: nothing punched');
    await device.sync();
    t.is(allocatedBytes(imagePath), full);
    await device.eraseBlock(5);
    t.is(device.warmEraseBlocks, 4, 'past both: the oldest (block 1) punched at once');
    await device.programPages(5, 0, pagesOf(4096, 64, 50));
    t.is(device.warmEraseBlocks, 3, 'a program takes one back (blocks 2, 3, 4 stale)');
    t.is(device.warmProgrammedBytes, 64 * 4096);
    await device.sync();
    t.true(allocatedBytes(imagePath) <= full - ERASE_BLOCK_BYTES, `block 1 punched: ${full} -> ${allocatedBytes(imagePath)}`);
    const overAt = Date.now();
    while (device.warmEraseBlocks > 2 && Date.now() - overAt < 15_000) await new Promise((resolve) => setTimeout(resolve, 50));
    t.is(device.warmEraseBlocks, 2, 'the overflow is punched once it has waited its time');
    t.true(Date.now() - overAt >= 400, `not at once: ${Date.now() - overAt} ms`);
    await new Promise((resolve) => setTimeout(resolve, 200)); // the punch itself
    await device.sync();
    t.true(allocatedBytes(imagePath) <= full - 2 * ERASE_BLOCK_BYTES, `blocks 1 and 2 punched: ${full} -> ${allocatedBytes(imagePath)}`);
    t.deepEqual(device.readPagesSync(2, 0, 64), Buffer.alloc(64 * 4096), 'the punched block reads as erased');
    await new Promise((resolve) => setTimeout(resolve, 1500));
    t.is(device.warmEraseBlocks, 2, 'the pool within its bound is kept');
    t.true(allocatedBytes(imagePath) >= full - 2 * ERASE_BLOCK_BYTES - 4096, 'blocks 3 and 4 keep their pages');
    t.true(device.viewPagesSync(5, 0, 64)!.equals(pagesOf(4096, 64, 50)));
    await device.close();
  });
});

test('warm pool: an erase issued before the punch of its block is queued leaves the pool count right (regression: close hung)', async (t) => {
  await withDirectory(async (directory) => {
    const device = await FileNand.open(directory, GEOMETRY, { create: true, warmEraseBytes: 2 * ERASE_BLOCK_BYTES, warmOverflowBytes: 0, warmIdleMs: 600_000 });
    for (const block of [1, 2, 3]) await device.programPages(block, 0, pagesOf(4096, 64, block));
    await device.eraseBlock(1); // stale, the oldest in the pool
    await device.eraseBlock(2);
    // Block 1 reused a little, then erased again while its program is still queued...
    const programmed = device.programPages(1, 0, pagesOf(4096, 2, 10));
    const erased = device.eraseBlock(1);
    // ...and the pool overflows now: block 1's punch is queued behind that erase.
    const overflow = device.eraseBlock(3);
    await Promise.all([programmed, erased, overflow]);
    t.is(device.warmEraseBlocks, 2, 'blocks 2 and 3 stale; block 1 punched');
    t.deepEqual(device.readPagesSync(1, 0, 4), Buffer.alloc(4 * 4096), 'block 1 reads as erased');
    await device.sync();
    const imagePath = path.join(directory, IMAGE_FILE_NAME);
    t.true(allocatedBytes(imagePath) >= 2 * ERASE_BLOCK_BYTES && allocatedBytes(imagePath) < 3 * ERASE_BLOCK_BYTES, `only block 1 was punched: ${allocatedBytes(imagePath)} bytes allocated`);
    const closing = device.close();
    const hung = await Promise.race([closing.then(() => false), new Promise<boolean>((resolve) => setTimeout(() => resolve(true), 10_000))]);
    t.false(hung, 'close finished');
  });
});

test('warm pool after a crash: a synced erase that was never punched leaves old pages above the write pointer, as the crash model allows', async (t) => {
  await withDirectory(async (directory) => {
    // (No idle punch during the test, however slow the machine.)
    const device = await FileNand.open(directory, GEOMETRY, { create: true, warmIdleMs: 600_000 });
    await device.programPages(6, 0, pagesOf(4096, 4, 6));
    await device.eraseBlock(6);
    await device.sync();
    const after = await FileNand.open(copyAsCrashed(directory), GEOMETRY);
    t.deepEqual(after.blockInfo(6), { eraseCount: 1, writePointer: 0, bad: false }, 'the erase is recorded');
    t.deepEqual(await after.readPages(6, 0, 1), pagesOf(4096, 1, 6), 'the old page is still there: pages at or above the write pointer may hold anything');
    await after.programPages(6, 0, pagesOf(4096, 1, 60));
    t.deepEqual(after.readPagesSync(6, 0, 1), pagesOf(4096, 1, 60), 'and the next program overwrites it');
    await after.close();
    await device.close();
  });
});

test('a geometry mismatch on reopen is refused with a clear message', async (t) => {
  await withDirectory(async (directory) => {
    await (await FileNand.open(directory, GEOMETRY, { create: true })).close();
    for (const other of [{ pageBytes: 8192 }, { pagesPerEraseBlock: 32 }, { eraseBlockCount: 128 }, { enduranceCycles: 10 }]) {
      const error = await t.throwsAsync(FileNand.open(directory, { ...GEOMETRY, ...other }), {
        instanceOf: StorageError,
        code: 'INVALID_ARGUMENT',
        message: /was made with other geometry/,
      });
      t.regex(error?.message ?? '', /pageBytes 4096, pagesPerEraseBlock 64, eraseBlockCount 64/);
    }
    await (await FileNand.open(directory, GEOMETRY)).close();
  });
});

test('open refuses a missing image, a second open, and a damaged spare file', async (t) => {
  await withDirectory(async (directory) => {
    await t.throwsAsync(FileNand.open(directory, GEOMETRY), { instanceOf: StorageError, code: 'NOT_FOUND', message: /create/ });
    const device = await FileNand.open(directory, GEOMETRY, { create: true });
    await t.throwsAsync(FileNand.open(directory, GEOMETRY), { instanceOf: StorageError, code: 'BUSY' });
    await device.programPages(5, 0, pagesOf(4096, 1, 8));
    await device.close();
    const sparePath = path.join(directory, SPARE_FILE_NAME);
    const spare = fs.readFileSync(sparePath);
    spare[32 + 16 * 5 + 1] ^= 0x40;
    fs.writeFileSync(sparePath, spare);
    await t.throwsAsync(FileNand.open(directory, GEOMETRY), { instanceOf: StorageError, code: 'CORRUPT', message: /erase block 5/ });
  });
});

test('creation refuses to overwrite an image whose spare file is missing', async (t) => {
  await withDirectory(async (directory) => {
    const device = await FileNand.open(directory, SMALL_GEOMETRY, { create: true });
    await device.programPages(0, 0, pagesOf(512, 1, 9));
    await device.close();
    fs.rmSync(path.join(directory, SPARE_FILE_NAME));
    await t.throwsAsync(FileNand.open(directory, SMALL_GEOMETRY, { create: true }), { instanceOf: StorageError, code: 'CORRUPT' });
    t.is(fs.readFileSync(path.join(directory, IMAGE_FILE_NAME)).subarray(0, 512).compare(pagesOf(512, 1, 9)), 0);
  });
});

test('an invalid geometry is refused at creation', async (t) => {
  await withDirectory(async (directory) => {
    await t.throwsAsync(FileNand.open(directory, { ...GEOMETRY, pageBytes: 1000 }, { create: true }), {
      instanceOf: StorageError,
      code: 'INVALID_ARGUMENT',
      message: /power of two/,
    });
    t.false(fs.existsSync(path.join(directory, SPARE_FILE_NAME)));
  });
});

test('reads through the memory mapping equal preads, see programs at once and zeros after an erase', async (t) => {
  await withDirectory(async (directory) => {
    const device = await FileNand.open(directory, GEOMETRY, { create: true, warmEraseBytes: 0 });
    t.true(device.mapped, 'the pstorage-nand-map addon is built and the image is mapped');
    await device.programPages(10, 0, pagesOf(4096, 8, 10));
    await device.programPages(10, 8, pagesOf(4096, 4, 11));
    const view = device.viewPagesSync(10, 2, 10)!;
    t.true(view.equals(device.readPagesSync(10, 2, 10)), 'view = pread');
    t.true(view.equals(Buffer.concat([pagesOf(4096, 8, 10), pagesOf(4096, 4, 11)]).subarray(2 * 4096, 12 * 4096)));
    t.true(device.viewPagesSync(11, 0, 1)!.equals(Buffer.alloc(4096)), 'a page never programmed reads as zeros');
    await device.eraseBlock(10);
    t.true(device.viewPagesSync(10, 0, 12)!.equals(Buffer.alloc(12 * 4096)), 'an erased (punched) block reads as zeros through the mapping');
    t.throws(() => device.viewPagesSync(64, 0, 1), { code: 'INVALID_ARGUMENT' }, 'ranges are checked as for any read');
    await device.close();
  });
});

test('the mapping takes in blocks up to its limit, refuses others (read directly), and gives room when blocks turn cold', async (t) => {
  await withDirectory(async (directory) => {
    // 8 MiB: 32 erase blocks of 256 KiB; a read epoch is 2 MiB read.
    const device = await FileNand.open(directory, GEOMETRY, { create: true, mappedLimitBytes: 8 * 1024 * 1024 });
    try {
      t.true(device.mapped);
      for (let block = 0; block < 48; block++) await device.programPages(block, 0, pagesOf(4096, 64, block));
      const taken: number[] = [];
      const refused: number[] = [];
      for (let block = 0; block < 48; block++) {
        const view = device.viewPagesSync(block, 0, 64);
        (view === null ? refused : taken).push(block);
        t.true((view ?? device.readPagesSync(block, 0, 64)).equals(pagesOf(4096, 64, block)), `erase block ${block}`);
      }
      t.deepEqual(taken, [...Array(32).keys()], 'the first 32 blocks read are taken in');
      t.is(device.mappedBytes, 8 * 1024 * 1024);
      const answer = device.mapPagesSync(40, 2, 1);
      t.true(answer < -1, 'the batch form answers "read directly"');
      t.is(directOffsetOf(answer), (40 * 64 + 2) * 4096, '...at the pages\' offset in the image');
      t.true(device.mapPagesSync(3, 2, 1) >= 0, 'a block taken in is read through the mapping');
      // Block 0 read on, some refused block asked for in every epoch: the blocks taken in at first turn
      // cold eight epochs after their read and leave, and the refused blocks are taken in instead.
      const takenLater: number[] = [];
      for (let epoch = 0; epoch < 12; epoch++) {
        for (let i = 0; i < 8; i++) t.truthy(device.viewPagesSync(0, 0, 64));
        const block = refused[epoch]!;
        const view = device.viewPagesSync(block, 0, 64);
        if (view !== null) takenLater.push(block);
        t.true((view ?? device.readPagesSync(block, 0, 64)).equals(pagesOf(4096, 64, block)), `erase block ${block}`);
      }
      t.true(takenLater.length >= 4, `refused blocks were taken in once there was room (${takenLater})`);
      t.true(device.droppedEraseBlocks >= 31, `every block taken in at first but block 0 left (${device.droppedEraseBlocks})`);
      t.true(device.mappedBytes <= 8 * 1024 * 1024);
      t.true(device.mapPagesSync(0, 0, 1) >= 0, 'block 0, read all along, is still mapped');
      for (let block = 0; block < 48; block++) {
        t.true((device.viewPagesSync(block, 0, 64) ?? device.readPagesSync(block, 0, 64)).equals(pagesOf(4096, 64, block)), `erase block ${block} after the drop`);
      }
    } finally {
      await device.close();
    }
  });
});

test('a batch planned across many read epochs maps no more than the mapping counts (regression: 58 MiB mapped at a limit of 8 MiB)', async (t) => {
  await withDirectory(async (directory) => {
    const geometry: NandGeometry = { ...GEOMETRY, eraseBlockCount: 256 };
    const device = await FileNand.open(directory, geometry, { create: true, mappedLimitBytes: 2 * 1024 * 1024 });
    try {
      for (let block = 0; block < 200; block++) await device.programPages(block, 0, pagesOf(4096, 64, block));
      const sharedBytes = (): number => Number(fs.readFileSync('/proc/self/statm', 'latin1').split(' ')[2]) * 4096;
      const segment = device.mappedImage!.segments[0]!;
      for (let round = 0; round < 3; round++) {
        device.dropMapped();
        const before = sharedBytes();
        // As the FTL plans a big read: every record's place first (50 MiB of pages, 50 read epochs), then the reads.
        const offsets: number[] = [];
        for (let block = 0; block < 200; block++) for (let page = 0; page < 64; page++) offsets.push(device.mapPagesSync(block, page, 1));
        const started = performance.now();
        let sum = 0;
        for (const at of offsets) if (at >= 0) sum += segment[at]!;
        device.noteMappedRead(started, offsets.length);
        t.true(sum > 0);
        const mapped = sharedBytes() - before;
        t.true(mapped <= device.mappedBytes + 256 * 1024 && device.mappedBytes <= 2 * 1024 * 1024, `round ${round}: the kernel mapped ${mapped} bytes, counted ${device.mappedBytes}`);
      }
    } finally {
      await device.close();
    }
  });
});

test('setMappedLimit: a lower limit drops blocks at once, the least recently read first; a higher one takes more in', async (t) => {
  await withDirectory(async (directory) => {
    const device = await FileNand.open(directory, GEOMETRY, { create: true, mappedLimitBytes: 4 * 1024 * 1024 });
    try {
      for (let block = 0; block < 40; block++) await device.programPages(block, 0, pagesOf(4096, 64, block));
      for (let block = 0; block < 16; block++) t.truthy(device.viewPagesSync(block, 0, 64), `block ${block} taken in`);
      t.is(device.viewPagesSync(16, 0, 1), null, 'the limit holds 16 blocks');
      // Blocks 12-15 read again, four epochs later (an epoch is 1 MiB read).
      for (let i = 0; i < 4; i++) for (let block = 12; block < 16; block++) t.truthy(device.viewPagesSync(block, 0, 64));
      device.setMappedLimit(1024 * 1024);
      t.is(device.mappedBytes, 1024 * 1024, 'down to the new limit');
      t.is(device.droppedEraseBlocks, 12);
      for (let block = 12; block < 16; block++) t.true(device.mapPagesSync(block, 0, 1) >= 0, `block ${block}, read last, stays`);
      t.true(device.mapPagesSync(0, 0, 1) < -1, 'block 0 left, and there is no room for it');
      device.setMappedLimit(8 * 1024 * 1024);
      for (let block = 0; block < 40; block++) {
        const view = device.viewPagesSync(block, 0, 64);
        t.true((view ?? device.readPagesSync(block, 0, 64)).equals(pagesOf(4096, 64, block)), `erase block ${block}`);
      }
      t.true(device.mappedBytes > 4 * 1024 * 1024 && device.mappedBytes <= 8 * 1024 * 1024, `taken in past the first limit, up to the higher one (${device.mappedBytes})`);
    } finally {
      await device.close();
    }
  });
});

test('dropMapped() takes every page read through the mapping out of the resident set, and they read back right', async (t) => {
  await withDirectory(async (directory) => {
    const device = await FileNand.open(directory, GEOMETRY, { create: true });
    t.true(device.mapped);
    for (let block = 0; block < 16; block++) await device.programPages(block, 0, pagesOf(4096, 64, block));
    for (let block = 0; block < 16; block++) t.true(device.viewPagesSync(block, 0, 64)!.equals(pagesOf(4096, 64, block)));
    const sharedBytes = (): number => Number(fs.readFileSync('/proc/self/statm', 'latin1').split(' ')[2]) * 4096;
    const before = sharedBytes();
    const dropped = device.dropMapped();
    const left = before - sharedBytes();
    t.is(device.droppedEraseBlocks, 16, 'every block read since the last drop');
    t.is(dropped, 4 * 1024 * 1024, 'the 4 MiB read were counted as mapped');
    t.is(device.mappedBytes, 0);
    t.true(left >= 2 * 1024 * 1024 && left <= dropped + 256 * 1024, `about 4 MiB left the resident set (${left} bytes)`);
    for (let block = 0; block < 16; block++) t.true(device.viewPagesSync(block, 0, 64)!.equals(pagesOf(4096, 64, block)), `erase block ${block} after the drop`);
    await device.close();
  });
});

test('a mapped image bigger than one mapping segment (1 GiB) reads right across segments', async (t) => {
  await withDirectory(async (directory) => {
    // 2.5 GiB of sparse image, mapped in three pieces; a Node Buffer cannot hold it in one.
    const geometry: NandGeometry = { pageBytes: 4096, pagesPerEraseBlock: 64, eraseBlockCount: 10240, enduranceCycles: 3000 };
    const device = await FileNand.open(directory, geometry, { create: true });
    t.true(device.mapped);
    for (const block of [0, 4095, 4096, 10239]) {
      await device.programPages(block, 0, pagesOf(4096, 2, block));
      t.true(device.viewPagesSync(block, 0, 2)!.equals(pagesOf(4096, 2, block)), `erase block ${block}`);
    }
    await device.close();
  });
});
