/**
 * The NAND conformance suite: the rules of `NandDevice`, registered as ava tests against any
 * implementation (as abstract-level's suite runs against every `level` store).
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { StorageError } from '../../src/common/errors.js';
import type { NandDevice, NandGeometry } from '../../src/nand/index.js';

export interface NandHarness {
  device: NandDevice;
  /** Closes the device if needed and removes whatever the factory created. */
  cleanup(): Promise<void>;
}

export type NandFactory = (geometry: NandGeometry) => Promise<NandHarness>;

export const SMALL_GEOMETRY: NandGeometry = { pageBytes: 512, pagesPerEraseBlock: 4, eraseBlockCount: 8, enduranceCycles: 100 };

/** `pageCount` pages of `pageBytes`, each page different from every other for a different `tag`. */
export function pagesOf(pageBytes: number, pageCount: number, tag: number): Buffer {
  const data = Buffer.alloc(pageBytes * pageCount);
  for (let i = 0; i < data.length; i += 1) data[i] = (tag * 31 + Math.floor(i / pageBytes) * 7 + i) & 0xff;
  return data;
}

export const invalid = { instanceOf: StorageError, code: 'INVALID_ARGUMENT' };

type Body = (t: ExecutionContext, device: NandDevice, geometry: NandGeometry) => Promise<void>;

export function registerNandConformanceTests(name: string, factory: NandFactory, geometry: NandGeometry = SMALL_GEOMETRY): void {
  const run = (title: string, body: Body): void => {
    test(`${name}: ${title}`, async (t) => {
      const harness = await factory(geometry);
      try {
        await body(t, harness.device, geometry);
      } finally {
        await harness.cleanup();
      }
    });
  };
  for (const [title, body] of Object.entries(CASES)) run(title, body);
}

const CASES: Record<string, Body> = {
  'program and read round trip across multi-page calls': async (t, device, { pageBytes }) => {
    const first = pagesOf(pageBytes, 3, 1);
    const second = pagesOf(pageBytes, 1, 2);
    await device.programPages(2, 0, first);
    await device.programPages(2, 3, second);
    t.deepEqual(await device.readPages(2, 0, 4), Buffer.concat([first, second]));
    t.deepEqual(await device.readPages(2, 1, 1), first.subarray(pageBytes, 2 * pageBytes));
    t.deepEqual(await device.readPages(2, 2, 2), Buffer.concat([first.subarray(2 * pageBytes), second]));
    t.deepEqual(device.blockInfo(2), { eraseCount: 0, writePointer: 4, bad: false });
    t.deepEqual(await device.readPages(3, 0, 4), Buffer.alloc(4 * pageBytes), 'other blocks untouched');
  },

  'never-programmed pages read as zeros': async (t, device, { pageBytes }) => {
    await device.programPages(0, 0, pagesOf(pageBytes, 1, 3));
    t.deepEqual(await device.readPages(0, 1, 3), Buffer.alloc(3 * pageBytes));
    t.deepEqual(await device.readPages(7, 0, 4), Buffer.alloc(4 * pageBytes));
  },

  'stored data does not follow later changes to the caller buffers': async (t, device, { pageBytes }) => {
    const data = pagesOf(pageBytes, 2, 4);
    const expected = Buffer.from(data);
    await device.programPages(1, 0, data);
    data.fill(0xaa);
    const read = await device.readPages(1, 0, 2);
    t.deepEqual(read, expected);
    read.fill(0x55);
    t.deepEqual(await device.readPages(1, 0, 2), expected);
  },

  'program twice rejected': async (t, device, { pageBytes, pagesPerEraseBlock }) => {
    await device.programPages(0, 0, pagesOf(pageBytes, 2, 5));
    await t.throwsAsync(device.programPages(0, 0, pagesOf(pageBytes, 1, 6)), { ...invalid, message: /already programmed/ });
    await t.throwsAsync(device.programPages(0, 1, pagesOf(pageBytes, 1, 6)), invalid);
    await device.programPages(0, 2, pagesOf(pageBytes, pagesPerEraseBlock - 2, 7));
    await t.throwsAsync(device.programPages(0, pagesPerEraseBlock - 1, pagesOf(pageBytes, 1, 8)), invalid);
    t.deepEqual(await device.readPages(0, 0, 2), pagesOf(pageBytes, 2, 5), 'rejected programs changed nothing');
  },

  'out-of-order program rejected': async (t, device, { pageBytes }) => {
    await t.throwsAsync(device.programPages(4, 1, pagesOf(pageBytes, 1, 9)), { ...invalid, message: /out of order/ });
    t.is(device.blockInfo(4).writePointer, 0);
    await device.programPages(4, 0, pagesOf(pageBytes, 1, 9));
    await t.throwsAsync(device.programPages(4, 2, pagesOf(pageBytes, 1, 9)), invalid);
    t.is(device.blockInfo(4).writePointer, 1);
  },

  'program past the erase block end or of partial pages rejected': async (t, device, { pageBytes, pagesPerEraseBlock }) => {
    await t.throwsAsync(device.programPages(5, 0, pagesOf(pageBytes, pagesPerEraseBlock + 1, 1)), { ...invalid, message: /past the end/ });
    await device.programPages(5, 0, pagesOf(pageBytes, pagesPerEraseBlock - 1, 1));
    await t.throwsAsync(device.programPages(5, pagesPerEraseBlock - 1, pagesOf(pageBytes, 2, 1)), invalid);
    await t.throwsAsync(device.programPages(5, pagesPerEraseBlock - 1, Buffer.alloc(pageBytes + 1)), { ...invalid, message: /whole/ });
    await t.throwsAsync(device.programPages(5, pagesPerEraseBlock - 1, Buffer.alloc(pageBytes - 1)), invalid);
    await t.throwsAsync(device.programPages(5, pagesPerEraseBlock - 1, Buffer.alloc(0)), invalid);
    t.is(device.blockInfo(5).writePointer, pagesPerEraseBlock - 1);
  },

  'erase resets pages and write pointer and counts the cycle': async (t, device, { pageBytes, pagesPerEraseBlock }) => {
    await device.programPages(3, 0, pagesOf(pageBytes, pagesPerEraseBlock, 10));
    await device.programPages(6, 0, pagesOf(pageBytes, 1, 11));
    await device.eraseBlock(3);
    t.deepEqual(device.blockInfo(3), { eraseCount: 1, writePointer: 0, bad: false });
    t.deepEqual(await device.readPages(3, 0, pagesPerEraseBlock), Buffer.alloc(pagesPerEraseBlock * pageBytes));
    t.deepEqual(await device.readPages(6, 0, 1), pagesOf(pageBytes, 1, 11), 'a neighbour keeps its data');
    await device.programPages(3, 0, pagesOf(pageBytes, 2, 12));
    t.deepEqual(await device.readPages(3, 0, 2), pagesOf(pageBytes, 2, 12));
    await device.eraseBlock(3);
    await device.eraseBlock(3);
    t.deepEqual(device.blockInfo(3), { eraseCount: 3, writePointer: 0, bad: false });
  },

  'programs and erases of a bad block rejected, reads allowed': async (t, device, { pageBytes }) => {
    await device.programPages(1, 0, pagesOf(pageBytes, 2, 13));
    device.markBad(1);
    device.markBad(1);
    t.true(device.blockInfo(1).bad);
    await t.throwsAsync(device.programPages(1, 2, pagesOf(pageBytes, 1, 13)), { ...invalid, message: /bad/ });
    await t.throwsAsync(device.eraseBlock(1), { ...invalid, message: /bad/ });
    t.deepEqual(await device.readPages(1, 0, 2), pagesOf(pageBytes, 2, 13), 'live data of a retired block stays readable');
    t.false(device.blockInfo(2).bad);
  },

  'out-of-range indexes rejected': async (t, device, { pageBytes, pagesPerEraseBlock, eraseBlockCount }) => {
    const page = pagesOf(pageBytes, 1, 14);
    for (const eraseBlockIndex of [-1, eraseBlockCount, 1.5, Number.NaN]) {
      await t.throwsAsync(device.readPages(eraseBlockIndex, 0, 1), { ...invalid, message: /out of range/ });
      await t.throwsAsync(device.programPages(eraseBlockIndex, 0, page), invalid);
      await t.throwsAsync(device.eraseBlock(eraseBlockIndex), invalid);
      t.throws(() => device.blockInfo(eraseBlockIndex), invalid);
      t.throws(() => device.markBad(eraseBlockIndex), invalid);
    }
    for (const pageIndex of [-1, pagesPerEraseBlock, 0.5]) {
      await t.throwsAsync(device.readPages(0, pageIndex, 1), invalid);
      await t.throwsAsync(device.programPages(0, pageIndex, page), invalid);
    }
    for (const pageCount of [0, -1, pagesPerEraseBlock + 1, 1.5]) await t.throwsAsync(device.readPages(0, 0, pageCount), invalid);
    await t.throwsAsync(device.readPages(0, pagesPerEraseBlock - 1, 2), invalid);
    t.deepEqual(device.blockInfo(eraseBlockCount - 1), { eraseCount: 0, writePointer: 0, bad: false });
  },

  'programs queued without waiting land in order': async (t, device, { pageBytes, pagesPerEraseBlock }) => {
    const pending: Array<Promise<void>> = [];
    for (let pageIndex = 0; pageIndex < pagesPerEraseBlock; pageIndex += 1) {
      pending.push(device.programPages(2, pageIndex, pagesOf(pageBytes, 1, 20 + pageIndex)));
      pending.push(device.programPages(3, pageIndex, pagesOf(pageBytes, 1, 40 + pageIndex)));
    }
    t.is(device.blockInfo(2).writePointer, pagesPerEraseBlock, 'the pointer advances when the call is made');
    const read = device.readPages(2, 0, pagesPerEraseBlock);
    await Promise.all(pending);
    const expected = Buffer.concat(Array.from({ length: pagesPerEraseBlock }, (_, i) => pagesOf(pageBytes, 1, 20 + i)));
    t.deepEqual(await read, expected, 'a read waits for the programs called before it');
    const erase = device.eraseBlock(2);
    const program = device.programPages(2, 0, pagesOf(pageBytes, 1, 99));
    await Promise.all([erase, program]);
    t.deepEqual(await device.readPages(2, 0, 2), Buffer.concat([pagesOf(pageBytes, 1, 99), Buffer.alloc(pageBytes)]));
  },

  'counters count pages and erases': async (t, device, { pageBytes }) => {
    await device.programPages(0, 0, pagesOf(pageBytes, 3, 1));
    await device.readPages(0, 0, 2);
    await device.eraseBlock(0);
    await device.sync();
    t.like(device.counters, { pagesProgrammed: 3, pagesRead: 2, erases: 1, syncs: 1 });
  },

  'sync keeps state, and a closed device refuses work': async (t, device, { pageBytes }) => {
    await device.programPages(0, 0, pagesOf(pageBytes, 1, 15));
    await device.sync();
    t.deepEqual(device.blockInfo(0), { eraseCount: 0, writePointer: 1, bad: false });
    t.deepEqual(await device.readPages(0, 0, 1), pagesOf(pageBytes, 1, 15));
    await device.close();
    const closed = { instanceOf: StorageError, code: 'SHUTTING_DOWN' };
    await t.throwsAsync(device.readPages(0, 0, 1), closed);
    await t.throwsAsync(device.programPages(0, 1, pagesOf(pageBytes, 1, 15)), closed);
    await t.throwsAsync(device.sync(), closed);
    t.throws(() => device.blockInfo(0), closed);
    await device.close();
  },
};
