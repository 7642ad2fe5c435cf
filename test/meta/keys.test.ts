import test from 'ava';
import fc from 'fast-check';
import { AssertionError } from '../../src/common/assert.js';
import { StorageError } from '../../src/common/errors.js';
import {
  decodeU32Key,
  decodeU64Key,
  decodeVolumeMapKey,
  prefixRange,
  u32Key,
  u64Key,
  volumeMapKey,
  volumeMapRange,
} from '../../src/meta/keys.js';

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const u53 = fc.maxSafeNat();
/** Numbers near the 32-bit word boundary and the ends, where a u64 split goes wrong. */
const edgyU53 = fc.oneof(u53, fc.constantFrom(0, 1, 0xffff_ffff, 0x1_0000_0000, 0x1_0000_0001, 2 ** 52, Number.MAX_SAFE_INTEGER - 1, Number.MAX_SAFE_INTEGER));
const sign = (n: number): number => (n < 0 ? -1 : n > 0 ? 1 : 0);
const corrupt = { instanceOf: StorageError, code: 'CORRUPT' };

test('u32 keys decode to what was encoded and sort like the numbers', (t) => {
  fc.assert(fc.property(u32, (n) => decodeU32Key(u32Key(n)) === n && u32Key(n).length === 4));
  fc.assert(fc.property(u32, u32, (a, b) => sign(Buffer.compare(u32Key(a), u32Key(b))) === sign(a - b)));
  t.deepEqual(u32Key(0x01020304), Buffer.from([1, 2, 3, 4]), 'big-endian');
});

test('u64 keys decode to what was encoded and sort like the numbers', (t) => {
  fc.assert(fc.property(edgyU53, (n) => decodeU64Key(u64Key(n)) === n && u64Key(n).length === 8));
  fc.assert(fc.property(edgyU53, edgyU53, (a, b) => sign(Buffer.compare(u64Key(a), u64Key(b))) === sign(a - b)));
  t.deepEqual(u64Key(0x0102_0304_0506), Buffer.from([0, 0, 1, 2, 3, 4, 5, 6]), 'big-endian');
  t.deepEqual(u64Key(Number.MAX_SAFE_INTEGER), Buffer.from([0, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
});

test('volume map keys decode to what was encoded and sort by volume, then page', (t) => {
  fc.assert(fc.property(u32, edgyU53, (volumeId, mapPageIndex) => {
    const decoded = decodeVolumeMapKey(volumeMapKey(volumeId, mapPageIndex));
    return decoded.volumeId === volumeId && decoded.mapPageIndex === mapPageIndex;
  }));
  fc.assert(
    fc.property(u32, edgyU53, u32, edgyU53, (volumeA, pageA, volumeB, pageB) => {
      const numeric = volumeA !== volumeB ? volumeA - volumeB : pageA - pageB;
      return sign(Buffer.compare(volumeMapKey(volumeA, pageA), volumeMapKey(volumeB, pageB))) === sign(numeric);
    }),
  );
  t.deepEqual(volumeMapKey(7, 0x1_0000_0002), Buffer.from([0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2]));
});

test('decoders accept Uint8Array views at an offset', (t) => {
  const backing = new Uint8Array([0xaa, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9, 0xbb]);
  t.is(decodeU32Key(backing.subarray(1, 5)), 5);
  t.is(decodeU64Key(backing.subarray(5, 13)), 9);
  t.deepEqual(decodeVolumeMapKey(backing.subarray(1, 13)), { volumeId: 5, mapPageIndex: 9 });
});

test('decoding bytes of the wrong length or a u64 beyond 2^53 is CORRUPT', (t) => {
  t.throws(() => decodeU32Key(Buffer.alloc(3)), corrupt);
  t.throws(() => decodeU32Key(Buffer.alloc(5)), corrupt);
  t.throws(() => decodeU64Key(Buffer.alloc(7)), corrupt);
  t.throws(() => decodeVolumeMapKey(Buffer.alloc(8)), corrupt);
  t.throws(() => decodeU64Key(Buffer.from([0, 0x20, 0, 0, 0, 0, 0, 0])), corrupt);
  t.throws(() => decodeVolumeMapKey(Buffer.from([0, 0, 0, 1, 0xff, 0, 0, 0, 0, 0, 0, 0])), corrupt);
});

test('encoding a number out of range fails an assertion', (t) => {
  for (const bad of [-1, 0.5, 2 ** 32, Number.NaN]) t.throws(() => u32Key(bad), { instanceOf: AssertionError }, String(bad));
  for (const bad of [-1, 1.5, 2 ** 53, Infinity]) t.throws(() => u64Key(bad), { instanceOf: AssertionError }, String(bad));
  t.throws(() => volumeMapKey(2 ** 32, 0), { instanceOf: AssertionError });
  t.throws(() => volumeMapKey(0, -1), { instanceOf: AssertionError });
});

test('prefixRange selects exactly the keys that start with the prefix', (t) => {
  const byteString = (maxLength: number) => fc.uint8Array({ maxLength }).map((array) => Buffer.from(array));
  const edgyByteString = fc.oneof(byteString(4), fc.constantFrom(Buffer.from([0xff]), Buffer.from([1, 0xff, 0xff]), Buffer.from([0xff, 0xff])));
  fc.assert(
    fc.property(edgyByteString, byteString(6), (prefix, key) => {
      const { gte, lt } = prefixRange(prefix);
      const inRange = Buffer.compare(key, gte) >= 0 && (lt === undefined || Buffer.compare(key, lt) < 0);
      const extended = Buffer.concat([prefix, key]);
      const extendedInRange = Buffer.compare(extended, gte) >= 0 && (lt === undefined || Buffer.compare(extended, lt) < 0);
      return inRange === key.subarray(0, prefix.length).equals(prefix) && extendedInRange;
    }),
    { numRuns: 2000 },
  );
  t.deepEqual(prefixRange(Buffer.from([1, 0xff, 0xff])), { gte: Buffer.from([1, 0xff, 0xff]), lt: Buffer.from([2]) });
  t.deepEqual(prefixRange(Buffer.from([0xff, 0xff])), { gte: Buffer.from([0xff, 0xff]) }, 'no upper bound');
  t.deepEqual(prefixRange(Buffer.alloc(0)), { gte: Buffer.alloc(0) }, 'everything');
});

test('volumeMapRange holds every map page of one volume and nothing of its neighbours', (t) => {
  fc.assert(
    fc.property(u32, u32, edgyU53, (volumeId, otherVolumeId, mapPageIndex) => {
      const { gte, lt } = volumeMapRange(volumeId);
      const inRange = (key: Buffer): boolean => Buffer.compare(key, gte) >= 0 && (lt === undefined || Buffer.compare(key, lt) < 0);
      return inRange(volumeMapKey(volumeId, mapPageIndex)) && inRange(volumeMapKey(otherVolumeId, mapPageIndex)) === (volumeId === otherVolumeId);
    }),
  );
  t.is(volumeMapRange(0xffff_ffff).lt, undefined, 'the last volume runs to the end of the keyspace');
});
