/**
 * Encryption at rest (ftl/record-cipher.ts, volume/array-key.ts, volume/key-rotation.ts) at the
 * engine level: the native and JavaScript ciphers agree; a data directory full of a known marker
 * holds no copy of it when encrypted (and does when plain, so the check can fail); the data reads
 * back after reopening with the key; no key, a wrong key, or a key for a plain array are refused
 * and leave every file as it was; reduction is unchanged; rotation; GC relocation and a crash;
 * non-zero pattern blocks (whole, merged from partial writes, reduced in a worker) are stored as
 * encrypted chunks, not as map literals.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import fc from 'fast-check';
import { concatReadExtents } from '../../src/common/block-device.js';
import { isStorageError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { RecordCipher, xtsImplementation } from '../../src/ftl/record-cipher.js';
import { MemoryMetaStore } from '../../src/meta/memory-store.js';
import { MemoryNand } from '../../src/nand/memory-nand.js';
import { FlashArray, type ArrayOptions } from '../../src/volume/flash-array.js';
import { rotateArrayKey } from '../../src/volume/key-rotation.js';

const B = 4096;
/** BlockState.Full (a const enum of ftl/erase-block-table.ts). */
const FULL = 2;
const MiB = 1024 * 1024;
const MARKER = 'PSTORAGE-ENCRYPTION-MARKER-7f3a';

function markerBlocks(count: number): Buffer {
  // Each block numbered, so dedup keeps them all (a block of one repeated string would dedup to one).
  const blocks: Buffer[] = [];
  for (let i = 0; i < count; i++) blocks.push(Buffer.from(`${i.toString().padStart(8, '0')}:${MARKER.repeat(200)}`.slice(0, B).padEnd(B, '.')));
  return Buffer.concat(blocks);
}

/** Compressible, duplicate and random blocks. */
function mixedData(count: number, seed: number): Buffer {
  const blocks: Buffer[] = [];
  let state = seed;
  const random = () => (state = (state * 1103515245 + 12345) >>> 0);
  const pool = Array.from({ length: 8 }, (_, i) => Buffer.from(`duplicate block ${i} `.repeat(300).slice(0, B)));
  for (let i = 0; i < count; i++) {
    const kind = i % 3;
    if (kind === 0) blocks.push(Buffer.from(`text line ${random() % 1000} `.repeat(400).slice(0, B)));
    else if (kind === 1) blocks.push(pool[random() % pool.length]!);
    else blocks.push(randomBlock(seed, i));
  }
  return Buffer.concat(blocks);
}

/** 4 KiB of deterministic random bytes. */
function randomBlock(seed: number, index: number): Buffer {
  const parts: Buffer[] = [];
  for (let k = 0; k < B / 64; k++) parts.push(crypto.createHash('sha512').update(`${seed}:${index}:${k}`).digest());
  return Buffer.concat(parts);
}

function tempDir(name: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `pstorage-enc-${name}-`));
}

function filesOf(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true, recursive: true }).filter((entry) => entry.isFile()).map((entry) => path.join(entry.parentPath ?? entry.path, entry.name));
}

/** Every file's name, size, mtime and hash: what "nothing was touched" compares. */
function fingerprintDir(dir: string): string {
  return filesOf(dir)
    .sort()
    .map((file) => `${file} ${fs.statSync(file).mtimeMs} ${crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex')}`)
    .join('\n');
}

function countMarker(dir: string): number {
  let count = 0;
  for (const file of filesOf(dir)) {
    const bytes = fs.readFileSync(file);
    for (let at = bytes.indexOf(MARKER); at >= 0; at = bytes.indexOf(MARKER, at + 1)) count += 1;
  }
  return count;
}

const baseOptions: ArrayOptions = { capacityBytes: 64 * MiB, cacheBytes: 16 * MiB, reductionWorkers: 0 };

async function fill(dataDir: string, options: ArrayOptions, data: Buffer): Promise<number> {
  const { array } = await FlashArray.open(dataDir, silentLogger, { ...baseOptions, ...options });
  const volume = await array.createVolume('v', 32 * MiB);
  for (let at = 0; at < data.length; at += 64 * B) await volume.write(at, data.subarray(at, at + 64 * B), { fua: false });
  await volume.flush();
  const physical = (array.stats() as { physicalBytes: number }).physicalBytes;
  await array.close();
  return physical;
}

async function readBack(dataDir: string, options: ArrayOptions, length: number): Promise<Buffer> {
  const { array } = await FlashArray.open(dataDir, silentLogger, { ...baseOptions, ...options, createIfMissing: false });
  try {
    return concatReadExtents(await array.lookup('v')!.device.read(0, length), length);
  } finally {
    await array.close();
  }
}

test('the native and JavaScript XTS ciphers give the same bytes, and decrypting undoes encrypting', (t) => {
  const key = crypto.randomBytes(64);
  const native = new RecordCipher(key);
  const js = new RecordCipher(key, false);
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 16, maxLength: 4096 }), fc.nat({ max: Number.MAX_SAFE_INTEGER }), (bytes, chunkId) => {
      const a = Buffer.from(bytes);
      const b = Buffer.from(bytes);
      native.encrypt(a, chunkId);
      js.encrypt(b, chunkId);
      if (!a.equals(b)) return false;
      if (bytes.length >= 32 && a.equals(Buffer.from(bytes))) return false;
      native.decrypt(a, chunkId);
      return a.equals(Buffer.from(bytes));
    }),
    { numRuns: 300 },
  );
  const one = Buffer.alloc(4096, 7);
  const other = Buffer.alloc(4096, 7);
  native.encrypt(one, 1);
  native.encrypt(other, 2);
  t.false(one.equals(other), 'the chunk id is the tweak: the same bytes encrypt differently under two ids');
});

test('each native XTS implementation (VAES where the CPU has it, OpenSSL) gives Node crypto\'s bytes for every length, both ways, record by record and by plan', (t) => {
  const initial = xtsImplementation();
  if (initial === null) {
    t.pass('no addon: the JavaScript cipher is the only one');
    return;
  }
  t.teardown(() => void xtsImplementation(initial));
  const implementations = [...new Set([xtsImplementation('openssl'), xtsImplementation('vaes')])];
  t.log(`implementations here: ${implementations.join(', ')} (default ${initial})`);
  // Every length up to 21 blocks (the vector loops of 16 and 4 blocks, the single blocks after
  // them, ciphertext stealing after each), around 4 KiB, and one past it.
  const lengths = [...Array.from({ length: 21 * 16 - 15 }, (_, i) => 16 + i), ...Array.from({ length: 33 }, (_, i) => 4080 + i), 8197, 65536 + 13];
  const key = crypto.randomBytes(64);
  const js = new RecordCipher(key, false);
  const ids = [0, 1, 255, 256, 0x1_0000_0000, Number.MAX_SAFE_INTEGER];
  for (const name of implementations) {
    t.is(xtsImplementation(name!), name);
    const native = new RecordCipher(key);
    let mismatches = 0;
    lengths.forEach((length, i) => {
      const clear = crypto.randomBytes(length);
      const chunkId = ids[i % ids.length]! + i;
      const a = Buffer.from(clear);
      const b = Buffer.from(clear);
      native.encrypt(a, chunkId);
      js.encrypt(b, chunkId);
      if (!a.equals(b)) mismatches += 1;
      js.decrypt(a, chunkId); // the native ciphertext, decrypted by Node's crypto
      native.decrypt(b, chunkId); // and the other way round
      if (!a.equals(clear) || !b.equals(clear)) mismatches += 1;
    });
    t.is(mismatches, 0, `${name}: ${lengths.length} lengths from 16 to ${lengths.at(-1)} bytes`);
    // decryptRows: many records of odd lengths in one call.
    const rows = lengths.filter((_, i) => i % 7 === 0);
    const clear = rows.map((length) => crypto.randomBytes(length));
    const plan = new Float64Array(rows.length * 5);
    const sealed = clear.map((bytes, row) => {
      const copy = Buffer.from(bytes);
      js.encrypt(copy, 77 + row);
      plan.set([0, 0, bytes.length, 77 + row, row], row * 5);
      return copy;
    });
    native.decryptRows(plan, rows.length, sealed);
    t.true(sealed.every((bytes, row) => bytes.equals(clear[row]!)), `${name}: a plan of ${rows.length} records decrypted in one call`);
  }
});

test('a read plan decrypted in one call equals record-by-record decryption', (t) => {
  const key = crypto.randomBytes(64);
  const cipher = new RecordCipher(key);
  const js = new RecordCipher(key, false);
  // Rows as record-reader.ts plans them: [page at, offset in page, stored bytes, chunk id, destination index].
  const lengths = [4096, 16, 17, 1000, 4095, 4096, 2048, 31, ...Array<number>(40).fill(4096)];
  const clear = lengths.map((length) => crypto.randomBytes(length));
  const chunkIds = lengths.map((_, i) => 1000 + i * 7919);
  const plan = new Float64Array(lengths.length * 5);
  // Destinations in another order than the rows, some of them views of one buffer (as a read's are).
  const order = lengths.map((_, i) => (i * 5) % lengths.length);
  lengths.forEach((length, row) => plan.set([0, 0, lengths[order[row]!]!, chunkIds[order[row]!]!, order[row]!], row * 5));
  const encrypted = (): Buffer[] => {
    const whole = Buffer.alloc(lengths.reduce((sum, length) => sum + length, 0));
    let at = 0;
    return clear.map((bytes, i) => {
      const destination = whole.subarray(at, (at += bytes.length));
      bytes.copy(destination);
      js.encrypt(destination, chunkIds[i]!);
      return destination;
    });
  };
  const inOneCall = encrypted();
  cipher.decryptRows(plan, lengths.length, inOneCall);
  t.deepEqual(inOneCall, clear, 'decryptRows');
  const byJs = encrypted();
  js.decryptRows(plan, lengths.length, byJs);
  t.deepEqual(byJs, clear, 'the JavaScript fallback');
  const partly = encrypted();
  cipher.decryptRows(plan, 3, partly);
  t.deepEqual(partly.map((bytes, i) => bytes.equals(clear[i]!)), order.map((_, i) => order.slice(0, 3).includes(i)), 'only the first count rows');
  const wrongLength = encrypted();
  wrongLength[order[1]!] = Buffer.alloc(5);
  t.throws(() => cipher.decryptRows(plan, lengths.length, wrongLength), { message: /not a Buffer of the record's length/ });
});

test('an encrypted array leaves no copy of a marker in its data directory (a plain one does), reads back with the key, and stores the same physical bytes', async (t) => {
  const keyFileBytes = crypto.randomBytes(32);
  const data = Buffer.concat([markerBlocks(512), mixedData(1536, 1)]);
  const plainDir = tempDir('plain');
  const encryptedDir = tempDir('encrypted');
  const plainPhysical = await fill(plainDir, {}, data);
  const encryptedPhysical = await fill(encryptedDir, { keyFileBytes }, data);
  t.true(countMarker(plainDir) > 0, 'the plain array holds the marker (the check can fail)');
  t.is(countMarker(encryptedDir), 0, 'no file of the encrypted array holds the marker');
  t.true(Math.abs(encryptedPhysical - plainPhysical) <= plainPhysical * 0.01, `physical bytes within 1 % (plain ${plainPhysical}, encrypted ${encryptedPhysical})`);
  t.true(plainPhysical < data.length * 0.8, 'the dataset does reduce');
  t.true((await readBack(encryptedDir, { keyFileBytes }, data.length)).equals(data), 'reads back exactly with the key');
  t.true((await readBack(plainDir, {}, data.length)).equals(data));

  const before = fingerprintDir(encryptedDir);
  const refused = async (options: ArrayOptions, pattern: RegExp, dir = encryptedDir) => {
    const error = await t.throwsAsync(FlashArray.open(dir, silentLogger, { ...baseOptions, ...options, createIfMissing: false }));
    t.true(isStorageError(error) && error.code === 'INVALID_ARGUMENT', `INVALID_ARGUMENT (${error?.message})`);
    t.regex(error!.message, pattern);
  };
  await refused({}, /is encrypted: pass its key file/);
  await refused({ keyFileBytes: crypto.randomBytes(32) }, /wrong key/);
  t.is(fingerprintDir(encryptedDir), before, 'no key and a wrong key change no file (names, sizes, mtimes, contents)');
  const plainBefore = fingerprintDir(plainDir);
  await refused({ keyFileBytes }, /is not encrypted, but a key file was given/, plainDir);
  t.is(fingerprintDir(plainDir), plainBefore);
  const stats = await (async () => {
    const { array } = await FlashArray.open(encryptedDir, silentLogger, { ...baseOptions, keyFileBytes, createIfMissing: false });
    const document = array.stats();
    await array.close();
    return document;
  })();
  t.deepEqual(stats.encryption, { cipher: 'aes-256-xts', keyWrap: 'aes-256-gcm' });
});

test('key rotation: the new key opens the array, the old one is refused, the data stays', async (t) => {
  const oldKey = crypto.randomBytes(48);
  const newKey = crypto.randomBytes(32);
  const dir = tempDir('rotate');
  const data = mixedData(300, 2);
  await fill(dir, { keyFileBytes: oldKey }, data);
  await t.throwsAsync(rotateArrayKey(dir, newKey, crypto.randomBytes(32)), { message: /wrong key/ });
  t.deepEqual(await rotateArrayKey(dir, oldKey, newKey), { rotated: true });
  t.true((await readBack(dir, { keyFileBytes: newKey }, data.length)).equals(data));
  const error = await t.throwsAsync(FlashArray.open(dir, silentLogger, { ...baseOptions, keyFileBytes: oldKey, createIfMissing: false }));
  t.regex(error!.message, /wrong key/);
  t.deepEqual(await rotateArrayKey(dir, oldKey, newKey), { rotated: false }, 'running it again only brings the copy in step');
});

test('an encrypted array survives GC relocation and a crash: flushed blocks read back exactly', async (t) => {
  const geometry = { pageBytes: 4096, pagesPerEraseBlock: 16, eraseBlockCount: 96, enduranceCycles: 100_000 };
  const options: ArrayOptions = { cacheBytes: 4 * MiB, reductionWorkers: 0, keyFileBytes: crypto.randomBytes(32) };
  let nand = new MemoryNand(geometry);
  let meta = new MemoryMetaStore();
  let array = await FlashArray.assemble('memory', meta, nand, silentLogger, options, true);
  const volume = await array.createVolume('v', 1024 * B);
  const expected = Buffer.alloc(1024 * B);
  // Overwrite far more than the NAND holds, at random places, so erase blocks keep live records
  // of several ages: GC must relocate live (encrypted) records many times.
  let state = 7;
  for (let i = 0; i < 4000; i++) {
    state = (state * 1103515245 + 12345) >>> 0;
    const lba = i < 1024 ? i : state % 1024;
    const block = crypto.randomBytes(B);
    if (i % 2 === 1) block.fill(`write ${i} lba ${lba} `, 0, 3 * 1024); // half compressible
    block.copy(expected, lba * B);
    await volume.write(lba * B, block, { fua: false });
    if (i % 64 === 63) await volume.flush();
  }
  await volume.flush();
  // And relocate some full blocks that still hold live records, as GC does.
  let relocated = 0;
  for (let block = 0; block < geometry.eraseBlockCount && relocated < 8; block++) {
    if (array.ftl.table.state[block] !== FULL || array.ftl.table.validBytes[block] === 0) continue;
    await array.ftl.relocateBlock(block, false);
    relocated += 1;
  }
  await volume.flush();
  t.true(array.ftl.counters.relocatedBytes > 0, `GC relocated records ${JSON.stringify(array.ftl.counters)} ${JSON.stringify(array.ftl.stats())}`);
  await volume.write(0, crypto.randomBytes(8 * B), { fua: false }); // not flushed: old or new after the crash
  array.abandon();
  nand = nand.crash();
  meta = meta.crash();
  array = await FlashArray.assemble('memory', meta, nand, silentLogger, options, false);
  const after = concatReadExtents(await array.lookup('v')!.device.read(0, 1024 * B), 1024 * B);
  t.true(after.subarray(8 * B).equals(expected.subarray(8 * B)), 'every flushed block reads back exactly');
  array.abandon();
});

/** A 4 KiB block of `word` repeated. */
const patternBlock = (word: string): Buffer => Buffer.alloc(B, word, 'latin1');

test('an encrypted array stores non-zero pattern blocks encrypted, whole, merged from partial writes and reduced in a worker; only zero blocks stay map literals', async (t) => {
  const keyFileBytes = crypto.randomBytes(32);
  // 1-, 2-, 4- and 8-byte words; PSTRMARK is also looked for as a plain array's map keeps it (its
  // two u32 halves, read big-endian, stored little-endian side by side in the journal entry).
  const words = ['Q', 'PS', 'PSTR', 'PSTRMARK'];
  const needles = ['PSTRMARK', 'RTSPKRAM'];
  const data = Buffer.concat([...Array.from({ length: 64 }, (_, i) => patternBlock(words[i % words.length]!)), Buffer.alloc(4 * B), mixedData(60, 3)]);
  const mergedLba = data.length / B; // a pattern block made of two writes: the merge path reduces it
  const expected = Buffer.concat([data, patternBlock('PSTRMARK')]);
  const fillPatterns = async (dir: string, options: ArrayOptions): Promise<{ physicalBytes: number; patternBlocks: number }> => {
    // Every batch through the reduction worker (workerMinBlocks 0), as a busy array would.
    const { array } = await FlashArray.open(dir, silentLogger, { ...baseOptions, reductionWorkers: 1, workerMinBlocks: 0, ...options });
    const volume = await array.createVolume('v', 32 * MiB);
    await volume.write(0, data, { fua: false });
    const first = patternBlock('PSTRMARK');
    first.fill('x', 0, 512);
    await volume.write(mergedLba * B, first, { fua: false });
    await volume.write(mergedLba * B, patternBlock('PSTRMARK').subarray(0, 512), { fua: false });
    await volume.flush();
    const stats = array.stats() as { physicalBytes: number; reduction: { patternBlocks: number } };
    await array.close();
    return { physicalBytes: stats.physicalBytes, patternBlocks: stats.reduction.patternBlocks };
  };
  const countNeedles = (dir: string): number => {
    let count = 0;
    for (const file of filesOf(dir)) {
      const bytes = fs.readFileSync(file);
      for (const needle of needles) for (let at = bytes.indexOf(needle); at >= 0; at = bytes.indexOf(needle, at + 1)) count += 1;
    }
    return count;
  };
  const plainDir = tempDir('pattern-plain');
  const encryptedDir = tempDir('pattern-encrypted');
  const plain = await fillPatterns(plainDir, {});
  const encrypted = await fillPatterns(encryptedDir, { keyFileBytes });
  t.is(plain.patternBlocks, 64 + 4 + 1, 'a plain array keeps every pattern block as a map literal (the check can fail)');
  t.is(encrypted.patternBlocks, 4, 'an encrypted array keeps only the zero blocks as patterns');
  t.is(countNeedles(encryptedDir), 0, 'no copy of the pattern word in any file of the encrypted array');
  t.true(Math.abs(encrypted.physicalBytes - plain.physicalBytes) <= plain.physicalBytes * 0.01, `physical bytes within 1 % (plain ${plain.physicalBytes}, encrypted ${encrypted.physicalBytes})`);
  t.true((await readBack(encryptedDir, { keyFileBytes }, expected.length)).equals(expected), 'reads back exactly after reopening with the key');
  t.true((await readBack(plainDir, {}, expected.length)).equals(expected));
});
