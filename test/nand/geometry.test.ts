import test from 'ava';
import { StorageError } from '../../src/common/errors.js';
import { capacityBytes, eraseBlockBytes, geometryForCapacity, needsEraseBeforeReuse, validateGeometry } from '../../src/nand/index.js';

const invalid = { instanceOf: StorageError, code: 'INVALID_ARGUMENT' };

test('geometryForCapacity uses the defaults and drops the remainder', (t) => {
  const geometry = geometryForCapacity(1024 * 1024 * 1024 + 1000);
  t.deepEqual(geometry, { pageBytes: 4096, pagesPerEraseBlock: 64, eraseBlockCount: 4096, enduranceCycles: 3000 });
  t.is(eraseBlockBytes(geometry), 256 * 1024);
  t.is(capacityBytes(geometry), 1024 * 1024 * 1024);
  t.deepEqual(geometryForCapacity(8 * 512 * 2, 512, 2), { pageBytes: 512, pagesPerEraseBlock: 2, eraseBlockCount: 8, enduranceCycles: 3000 });
});

const REFUSED: Array<[string, () => unknown, RegExp]> = [
  ['page size not a power of two', () => geometryForCapacity(1 << 30, 3000), /power of two from 512/],
  ['page size below 512', () => geometryForCapacity(1 << 30, 256), /power of two from 512/],
  ['page size not a number', () => geometryForCapacity(1 << 30, Number.NaN), /page size/],
  ['one page per erase block', () => geometryForCapacity(1 << 30, 4096, 1), /pages per erase block 1 .* from 2/],
  ['fractional pages per erase block', () => geometryForCapacity(1 << 30, 4096, 2.5), /pages per erase block/],
  ['too many pages per erase block', () => geometryForCapacity(1 << 30, 512, 70000), /pages per erase block/],
  ['fewer than 8 erase blocks', () => geometryForCapacity(7 * 256 * 1024), /at least 8 erase blocks of 262144 bytes/],
  ['zero capacity', () => geometryForCapacity(0), /positive/],
  ['negative capacity', () => geometryForCapacity(-4096), /positive/],
  ['erase block count below 8', () => validateGeometry({ pageBytes: 4096, pagesPerEraseBlock: 64, eraseBlockCount: 7, enduranceCycles: 1 }), /erase block count 7/],
  ['zero endurance', () => validateGeometry({ pageBytes: 4096, pagesPerEraseBlock: 64, eraseBlockCount: 8, enduranceCycles: 0 }), /endurance/],
];

for (const [title, make, message] of REFUSED) {
  test(`geometry refused: ${title}`, (t) => {
    t.throws(make, { ...invalid, message });
  });
}

test('a block needs an erase before reuse exactly when its write pointer is not 0', (t) => {
  t.false(needsEraseBeforeReuse({ eraseCount: 5, writePointer: 0, bad: false }));
  t.true(needsEraseBeforeReuse({ eraseCount: 0, writePointer: 1, bad: false }));
});
