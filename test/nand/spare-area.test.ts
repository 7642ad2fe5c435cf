import test from 'ava';
import fc from 'fast-check';
import { StorageError } from '../../src/common/errors.js';
import {
  SPARE_HEADER_BYTES,
  SPARE_RECORD_BYTES,
  decodeSpareHeader,
  decodeSpareRecord,
  encodeSpareHeader,
  encodeSpareRecord,
} from '../../src/nand/spare-area.js';

const infoArbitrary = fc.record({
  eraseCount: fc.integer({ min: 0, max: 0xffffffff }),
  writePointer: fc.integer({ min: 0, max: 0xffff }),
  bad: fc.boolean(),
});

test('spare records round trip', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xffffffff }), infoArbitrary, (eraseBlockIndex, info) => {
      const buffer = Buffer.alloc(SPARE_RECORD_BYTES * 2, 0x77);
      encodeSpareRecord(eraseBlockIndex, info, buffer, SPARE_RECORD_BYTES);
      t.deepEqual(decodeSpareRecord(eraseBlockIndex, buffer, SPARE_RECORD_BYTES, 'test'), info);
      t.true(buffer.subarray(0, SPARE_RECORD_BYTES).every((byte) => byte === 0x77), 'writes only its own 16 bytes');
    }),
  );
});

test('a spare record is checked against its index and its bytes', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 1000 }), infoArbitrary, fc.integer({ min: 0, max: 15 }), (eraseBlockIndex, info, flipByte) => {
      const record = Buffer.alloc(SPARE_RECORD_BYTES);
      encodeSpareRecord(eraseBlockIndex, info, record, 0);
      t.throws(() => decodeSpareRecord(eraseBlockIndex + 1, record, 0, 'test'), { instanceOf: StorageError, code: 'CORRUPT' });
      record[flipByte]! ^= 0x01;
      t.throws(() => decodeSpareRecord(eraseBlockIndex, record, 0, 'test'), { instanceOf: StorageError, code: 'CORRUPT' });
    }),
  );
});

test('an all-zero spare record is a fresh block', (t) => {
  t.deepEqual(decodeSpareRecord(12, Buffer.alloc(SPARE_RECORD_BYTES), 0, 'test'), { eraseCount: 0, writePointer: 0, bad: false });
});

test('the spare header round trips and rejects damage', (t) => {
  const geometry = { pageBytes: 8192, pagesPerEraseBlock: 128, eraseBlockCount: 100000, enduranceCycles: 5000 };
  const header = encodeSpareHeader(geometry);
  t.is(header.length, SPARE_HEADER_BYTES);
  t.deepEqual(decodeSpareHeader(header, 'test'), geometry);
  const damaged = Buffer.from(header);
  damaged[21]! ^= 0x10;
  t.throws(() => decodeSpareHeader(damaged, 'test'), { instanceOf: StorageError, code: 'CORRUPT', message: /checksum/ });
  t.throws(() => decodeSpareHeader(Buffer.alloc(SPARE_HEADER_BYTES), 'test'), { instanceOf: StorageError, code: 'CORRUPT', message: /magic/ });
});
