/**
 * The FTL's batch read through the NAND image's memory mapping (native/nand-map's copyRecords):
 * its XXH64 is @node-rs/xxhash's, it returns exactly what the JavaScript path returns for records
 * of any length and place (spanning pages, in buffered and in mapped erase blocks), and a record
 * changed on the disk, or one that is not the chunk asked for, is CORRUPT through it as well.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { xxh64 } from '@node-rs/xxhash';
import test from 'ava';
import { StorageError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { copyRecords, hashInto, nandMap, readRecords } from '../../src/common/native.js';
import { Ftl, defaultFtlOptions, type RecordRef } from '../../src/ftl/ftl.js';
import { PAGE_HEADER_BYTES, RECORD_HEADER_BYTES } from '../../src/ftl/page-format.js';
import { FileNand, IMAGE_FILE_NAME } from '../../src/nand/index.js';
import type { NandGeometry } from '../../src/nand/index.js';

const GEOMETRY: NandGeometry = { pageBytes: 4096, pagesPerEraseBlock: 16, eraseBlockCount: 64, enduranceCycles: 3000 };
const SEED = 0x0123456789abcdefn;

test('the addon is built and its XXH64 is the one page-format.ts uses', (t) => {
  t.not(copyRecords, null, 'pstorage-nand-map has copyRecords (npm rebuild pstorage-nand-map)');
  for (let length = 0; length < 300; length++) {
    const data = crypto.randomBytes(length);
    const seed = crypto.randomBytes(8).readBigUInt64LE();
    if (nandMap!.xxh64(data, seed) !== xxh64(data, seed)) t.fail(`XXH64 differs at ${length} bytes, seed ${seed}`);
  }
  const block = crypto.randomBytes(4096);
  for (const seed of [0n, 1n, 2n ** 64n - 1n, SEED]) t.is(nandMap!.xxh64(block, seed), xxh64(block, seed));
});

test('hashInto writes the XXH64 big-endian where asked and returns its low 32 bits, for views at any offset', (t) => {
  t.not(hashInto, null, 'pstorage-nand-map has hashInto (npm rebuild pstorage-nand-map)');
  const backing = crypto.randomBytes(4096 + 64);
  for (let trial = 0; trial < 400; trial++) {
    const from = trial % 13;
    const length = trial < 300 ? trial : 4096;
    const data = backing.subarray(from, from + length);
    const seed = trial % 4 === 0 ? SEED : crypto.randomBytes(8).readBigUInt64BE();
    const expected = xxh64(data, seed);
    const out = Buffer.alloc(40);
    const at = (trial * 7) % 33;
    const low = hashInto!(data, Number(seed >> 32n), Number(seed & 0xffffffffn), out, at);
    if (low !== Number(expected & 0xffffffffn) || out.readBigUInt64BE(at) !== expected) t.fail(`hashInto differs at ${length} bytes from ${from}, seed ${seed}`);
    if (hashInto!(data, Number(seed >> 32n), Number(seed & 0xffffffffn), null, 0) !== low) t.fail('without an out buffer');
  }
  t.throws(() => hashInto!(backing, 0, 0, Buffer.alloc(8), 1), { instanceOf: RangeError }, 'the hash must fit in out');
  t.pass();
});

interface Written {
  ref: RecordRef;
  data: Buffer;
}

async function withFtl(body: (ftl: Ftl, nand: FileNand, directory: string) => Promise<void>, mappedLimitBytes?: number): Promise<void> {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'pstorage-mapped-'));
  const nand = await FileNand.open(directory, GEOMETRY, { create: true, mappedLimitBytes });
  try {
    const ftl = new Ftl(nand, defaultFtlOptions(GEOMETRY.eraseBlockCount), silentLogger, 1, SEED);
    await body(ftl, nand, directory);
  } finally {
    await nand.close();
    fs.rmSync(directory, { recursive: true, force: true });
  }
}

/** Appends records of mixed lengths (whole blocks, compressed sizes, a few bytes) and makes them durable. */
async function writeRecords(ftl: Ftl, count: number): Promise<Written[]> {
  const written: Written[] = [];
  for (let i = 0; i < count; i++) {
    const length = i % 3 === 0 ? 4096 : i % 3 === 1 ? 1 + ((i * 977) % 4000) : 7;
    const data = crypto.randomBytes(length);
    const address = ftl.append('host', 1000 + i, data);
    written.push({ ref: { address, chunkId: 1000 + i, storedBytes: length }, data });
  }
  await ftl.makeDurable(() => undefined);
  return written;
}

/** Counts the pages the FTL read through the mapping's batch path, and those it was told to read directly. */
function countMapped(nand: FileNand): { pages: number; directPages: number } {
  const counter = { pages: 0, directPages: 0 };
  const original = nand.mapPagesSync.bind(nand);
  nand.mapPagesSync = (block, firstPage, pageCount) => {
    const at = original(block, firstPage, pageCount);
    if (at >= 0) counter.pages += pageCount;
    if (at < -1) counter.directPages += pageCount;
    return at;
  };
  return counter;
}

function readInto(ftl: Ftl, refs: RecordRef[]): Buffer[] {
  const destinations = refs.map((ref) => Buffer.alloc(ref.storedBytes));
  const got: Buffer[] = new Array(refs.length);
  ftl.readRecordsSync(refs, (index, payload) => (got[index] = Buffer.from(payload)), destinations);
  return got;
}

test('batch reads through the mapping return what was written, mixed with buffered blocks and reads without a destination', async (t) => {
  if (copyRecords === null) return t.fail('addon not built');
  await withFtl(async (ftl, nand) => {
    t.true(nand.mapped);
    const mapped = countMapped(nand);
    const written = await writeRecords(ftl, 400);
    // Shuffled, as a read of scattered chunks asks for them.
    const order = written.map((_, i) => i).sort(() => Math.random() - 0.5);
    const refs = order.map((i) => written[i]!.ref);
    const got = readInto(ftl, refs);
    order.forEach((i, k) => {
      if (!got[k]!.equals(written[i]!.data)) t.fail(`record ${i} (${written[i]!.ref.storedBytes} bytes at block ${written[i]!.ref.address.block})`);
    });
    t.true(mapped.pages > 100, `most pages went through the batch path (${mapped.pages})`);
    // Without destinations (the JavaScript view path) the same bytes, and one at a time too.
    const viaViews: Buffer[] = new Array(refs.length);
    ftl.readRecordsSync(refs, (index, payload) => (viaViews[index] = Buffer.from(payload)));
    t.true(viaViews.every((payload, k) => payload.equals(got[k]!)));
    for (const k of [0, 17, 399]) t.true(readInto(ftl, [refs[k]!])[0]!.equals(got[k]!), `single read ${k}`);
  });
});

for (const [how, mappedLimitBytes] of [['mapped', undefined], ['read directly (past the mapping\'s limit)', 1]] as const) {
test(`a record changed on the disk, or not the chunk asked for, is CORRUPT through the batch path, ${how}`, async (t) => {
  await withFtl(async (ftl, nand, directory) => {
    const written = await writeRecords(ftl, 120);
    const victim = written.find((record) => record.ref.storedBytes === 4096 && record.ref.address.block < 3)!;
    const { address } = victim.ref;
    const payloadBytes = GEOMETRY.pageBytes - PAGE_HEADER_BYTES;
    const page = Math.floor(address.offsetBytes / payloadBytes);
    const imageOffset =
      (address.block * GEOMETRY.pagesPerEraseBlock + page) * GEOMETRY.pageBytes + PAGE_HEADER_BYTES + (address.offsetBytes % payloadBytes) + RECORD_HEADER_BYTES;
    const image = fs.openSync(path.join(directory, IMAGE_FILE_NAME), 'r+');
    try {
      const byte = Buffer.alloc(1);
      fs.readSync(image, byte, 0, 1, imageOffset);
      t.is(byte[0], victim.data[0], 'the test found the record in the image');
      fs.writeSync(image, Buffer.from([byte[0]! ^ 0x40]), 0, 1, imageOffset);
    } finally {
      fs.closeSync(image);
    }
    const mapped = countMapped(nand);
    const others = written.filter((record) => record !== victim).slice(0, 30);
    const error = t.throws(() => readInto(ftl, [...others.map((record) => record.ref), victim.ref]));
    t.true(error instanceof StorageError && error.code === 'CORRUPT', String(error));
    t.true((mappedLimitBytes === undefined ? mapped.pages : mapped.directPages) > 0, how);
    // The others still read back right; a ref naming another chunk fails its header check.
    const good = readInto(ftl, others.map((record) => record.ref));
    t.true(good.every((payload, k) => payload.equals(others[k]!.data)));
    const wrongChunk = { ...others[0]!.ref, chunkId: others[0]!.ref.chunkId + 1 };
    t.throws(() => readInto(ftl, [wrongChunk]), { code: 'CORRUPT' });
  }, mappedLimitBytes);
});
}

test('past the mapping\'s limit, batch reads go by pread through the same native call and return what was written', async (t) => {
  if (readRecords === null) return t.fail('addon not built');
  // A limit of one byte: no erase block is taken in, every record is read directly.
  await withFtl(async (ftl, nand) => {
    const counted = countMapped(nand);
    const written = await writeRecords(ftl, 400);
    const order = written.map((_, i) => i).sort(() => Math.random() - 0.5);
    const got = readInto(ftl, order.map((i) => written[i]!.ref));
    order.forEach((i, k) => {
      if (!got[k]!.equals(written[i]!.data)) t.fail(`record ${i} (${written[i]!.ref.storedBytes} bytes at block ${written[i]!.ref.address.block})`);
    });
    t.true(counted.directPages > 100 && counted.pages === 0, `every page was read directly (${counted.directPages}, mapped ${counted.pages})`);
  }, 1);
});

test('readRecords refuses a bad plan, fails the row of a record past the end of the file, and throws the errno of a failed pread', async (t) => {
  if (readRecords === null) return t.fail('addon not built');
  await withFtl(async (ftl, nand) => {
    const [first] = await writeRecords(ftl, 20);
    const descriptor = nand.mappedImage!.descriptor;
    const call = (fd: number, row: number[], destination: Buffer) => readRecords!(fd, GEOMETRY.pageBytes, PAGE_HEADER_BYTES, RECORD_HEADER_BYTES, SEED, Float64Array.from(row), 1, [destination]);
    const capacity = GEOMETRY.pageBytes * GEOMETRY.pagesPerEraseBlock * GEOMETRY.eraseBlockCount;
    t.throws(() => call(descriptor, [100, 0, 16, 1000, 0], Buffer.alloc(16)), { instanceOf: RangeError }, 'not at a page start');
    t.throws(() => call(descriptor, [0, 4090, 16, 1000, 0], Buffer.alloc(16)), { instanceOf: RangeError }, 'header past the page');
    t.throws(() => call(descriptor, [0, 0, 16, 1000, 0], Buffer.alloc(15)), { instanceOf: RangeError }, 'destination length');
    t.is(call(descriptor, [capacity - GEOMETRY.pageBytes, 0, 8192, 0, 0], Buffer.alloc(8192)), 0, 'a record running past the image fails');
    const { address, chunkId, storedBytes } = first!.ref;
    const payloadBytes = GEOMETRY.pageBytes - PAGE_HEADER_BYTES;
    const row = [(address.block * GEOMETRY.pagesPerEraseBlock + Math.floor(address.offsetBytes / payloadBytes)) * GEOMETRY.pageBytes, address.offsetBytes % payloadBytes, storedBytes, chunkId, 0];
    const destination = Buffer.alloc(storedBytes);
    t.is(call(descriptor, row, destination), -1);
    t.true(destination.equals(first!.data));
    const directory = fs.openSync(os.tmpdir(), 'r');
    try {
      t.throws(() => call(directory, row, Buffer.alloc(storedBytes)), { code: 'EIO', message: /directory/i }, 'pread of a directory: EISDIR, reported as an I/O error');
    } finally {
      fs.closeSync(directory);
    }
  });
});

test('copyRecords refuses a plan that points outside the mapping or at a destination of another length', async (t) => {
  if (copyRecords === null) return t.fail('addon not built');
  await withFtl(async (ftl, nand) => {
    await writeRecords(ftl, 20);
    const image = nand.mappedImage!;
    const call = (row: number[], destination: Buffer) =>
      copyRecords!(image.segments, image.segmentBytes, GEOMETRY.pageBytes, PAGE_HEADER_BYTES, RECORD_HEADER_BYTES, SEED, Float64Array.from(row), 1, [destination]);
    const capacity = GEOMETRY.pageBytes * GEOMETRY.pagesPerEraseBlock * GEOMETRY.eraseBlockCount;
    t.throws(() => call([capacity, 0, 16, 1000, 0], Buffer.alloc(16)), { instanceOf: RangeError }, 'past the end');
    t.throws(() => call([100, 0, 16, 1000, 0], Buffer.alloc(16)), { instanceOf: RangeError }, 'not at a page start');
    t.throws(() => call([0, 4090, 16, 1000, 0], Buffer.alloc(16)), { instanceOf: RangeError }, 'header past the page');
    t.throws(() => call([0, 0, 16, 1000, 0], Buffer.alloc(15)), { instanceOf: RangeError }, 'destination length');
    t.throws(() => call([capacity - GEOMETRY.pageBytes, 0, 8192, 0, 0], Buffer.alloc(8192)), { instanceOf: RangeError }, 'a record running past the image');
  });
});
