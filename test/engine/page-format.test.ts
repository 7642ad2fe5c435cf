import test from 'ava';
import fc from 'fast-check';
import { sealPageNative } from '../../src/common/native.js';
import { PAGE_HEADER_BYTES, checkPage, sealPage, sealPageInJs } from '../../src/ftl/page-format.js';

test('sealPage: the addon and the JavaScript seal write the same bytes, and checkPage accepts them (property)', (t) => {
  if (sealPageNative === null) t.log('the addon is not built here: both calls are the JavaScript seal');
  fc.assert(
    fc.property(
      fc.constantFrom(512, 4096, 16384),
      fc.integer({ min: 0, max: 3 }),
      fc.integer({ min: 0, max: 0xffff }),
      fc.integer({ min: 0, max: 0xffff_ffff }),
      fc.double({ min: 0, max: 1, noNaN: true }),
      fc.integer({ min: 0, max: 2 ** 31 - 1 }),
      (pageBytes, pageSlot, pageIndex, sequence, fill, seed) => {
        const used = Math.floor(fill * (pageBytes - PAGE_HEADER_BYTES));
        const buffer = Buffer.alloc(pageBytes * 4);
        // Stale bytes everywhere (a pooled block buffer): the seal must zero the padding.
        for (let i = 0; i < buffer.length; i++) buffer[i] = (i * 31 + seed) & 0xff;
        const other = Buffer.from(buffer);
        const at = pageSlot * pageBytes;
        sealPage(buffer, at, pageBytes, pageIndex, sequence, used);
        sealPageInJs(other, at, pageBytes, pageIndex, sequence, used);
        if (!buffer.equals(other)) return false;
        const page = buffer.subarray(at, at + pageBytes);
        const check = checkPage(page, pageIndex);
        return check.ok && check.header.usedBytes === used && check.header.sequence === sequence && page.subarray(PAGE_HEADER_BYTES + used).every((byte) => byte === 0);
      },
    ),
    { numRuns: 300 },
  );
  t.pass();
});

test('sealPage: a page or payload outside the buffer is a RangeError and writes nothing', (t) => {
  const buffer = Buffer.alloc(8192, 7);
  t.throws(() => sealPage(buffer, 4096, 8192, 0, 1, 10), { instanceOf: RangeError });
  t.throws(() => sealPage(buffer, 0, 4096, 0, 1, 4096), { instanceOf: RangeError });
  t.true(buffer.every((byte) => byte === 7));
});
