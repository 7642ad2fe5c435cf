/**
 * Unit tests of the two pure stages of the write path: pattern removal (detectPattern /
 * expandPattern) and block compression (compressBlock / decompressBlock). Table tests pin the
 * rules; seeded property tests check the round trips on arbitrary input.
 */
import test from 'ava';
import fc from 'fast-check';
import { compressSync as lz4Compress } from 'lz4-napi';
import { StorageError } from '../../src/common/errors.js';
import { hashAndSample, hashInto } from '../../src/common/native.js';
import { Codec, MIN_SAVING_BYTES, codecFor, compressBlock, decompressBlock, looksIncompressible } from '../../src/reduce/codec.js';
import { detectPattern, expandPattern } from '../../src/reduce/pattern.js';
import { LBA_BYTES, nearPatternBlock, patternBlock, randomBlock, testSeed, textBlock } from '../helpers/reduce-data.js';

// ---- Patterns -------------------------------------------------------------------------------

const word = (hex: string, lengthBytes = LBA_BYTES) => Buffer.alloc(lengthBytes, Buffer.from(hex, 'hex'));

const patternTable: Array<[string, Buffer, { high: number; low: number } | null]> = [
  ['zero block', Buffer.alloc(LBA_BYTES), { high: 0, low: 0 }],
  ['1-byte word 0xab', word('ab'), { high: 0xabababab, low: 0xabababab }],
  ['2-byte word', word('12ab'), { high: 0x12ab12ab, low: 0x12ab12ab }],
  ['4-byte word', word('deadbeef'), { high: 0xdeadbeef, low: 0xdeadbeef }],
  ['8-byte word', word('0102030405060708'), { high: 0x01020304, low: 0x05060708 }],
  ['all ones (high bit set)', word('ff'), { high: 0xffffffff, low: 0xffffffff }],
  ['8-byte word, 512-byte sector', word('8000000000000001', 512), { high: 0x80000000, low: 0x00000001 }],
  ['16-byte period is not an 8-byte word', word('0102030405060708090a0b0c0d0e0f10'), null],
  ['3-byte period is not an 8-byte word', word('abcdef'), null],
  ['random block', randomBlock(1), null],
  ['text block', textBlock(1), null],
  ['zero block with its last byte set', Buffer.concat([Buffer.alloc(LBA_BYTES - 1), Buffer.from([1])]), null],
  ['zero block with its first byte set', Buffer.concat([Buffer.from([1]), Buffer.alloc(LBA_BYTES - 1)]), null],
  ['zero block with byte 4095 - 8 set', (() => { const b = Buffer.alloc(LBA_BYTES); b[LBA_BYTES - 9] = 1; return b; })(), null],
  ['length not a multiple of 8', Buffer.alloc(12), null],
  ['shorter than a word', Buffer.alloc(4), null],
];

for (const [name, block, expected] of patternTable) {
  test(`detectPattern: ${name}`, (t) => {
    t.deepEqual(detectPattern(block), expected);
    if (expected !== null) t.true(expandPattern(expected, block.length).equals(block), 'expanding the detected word gives the block back');
  });
}

test('detectPattern / expandPattern round trip for every word and length (property)', (t) => {
  const seed = testSeed(t);
  fc.assert(
    fc.property(fc.constantFrom(1, 2, 4, 8), fc.uint8Array({ minLength: 8, maxLength: 8 }), fc.integer({ min: 1, max: 1024 }), (wordBytes, bytes, words) => {
      const block = Buffer.alloc(words * 8, Buffer.from(bytes).subarray(0, wordBytes));
      const pattern = detectPattern(block);
      if (pattern === null) return false;
      return expandPattern(pattern, block.length).equals(block) && pattern.high >= 0 && pattern.low >= 0;
    }),
    { seed, numRuns: 500 },
  );
  t.pass();
});

test('detectPattern is sound: whatever it accepts expands back to the same bytes; one changed byte is rejected (property)', (t) => {
  const seed = testSeed(t, 1);
  fc.assert(
    fc.property(fc.constantFrom<1 | 2 | 4 | 8>(1, 2, 4, 8), fc.nat(), fc.nat({ max: LBA_BYTES - 1 }), (wordBytes, id, position) => {
      const exact = patternBlock(wordBytes, id);
      const exactPattern = detectPattern(exact);
      if (exactPattern === null || !expandPattern(exactPattern, LBA_BYTES).equals(exact)) return false;
      return detectPattern(nearPatternBlock(wordBytes, id, position)) === null;
    }),
    { seed, numRuns: 1000 },
  );
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 8, maxLength: 256 }).filter((a) => a.length % 8 === 0), (bytes) => {
      const block = Buffer.from(bytes);
      const pattern = detectPattern(block);
      return pattern === null || expandPattern(pattern, block.length).equals(block);
    }),
    { seed, numRuns: 1000 },
  );
  t.pass();
});

// ---- Codecs ---------------------------------------------------------------------------------

const CODECS: Array<[string, Codec]> = [
  ['lz4', Codec.Lz4],
  ['zstd', Codec.Zstd],
  ['none', Codec.Raw],
];

test('codecFor maps the option names to the stored codec ids', (t) => {
  t.is(codecFor('lz4'), Codec.Lz4);
  t.is(codecFor('zstd'), Codec.Zstd);
  t.is(codecFor('none'), Codec.Raw);
});

/** Blocks from fully compressible to incompressible, with every mix in between. */
const blockArbitrary = fc.oneof(
  fc.uint8Array({ minLength: 1, maxLength: LBA_BYTES }).map((a) => Buffer.from(a)),
  fc.nat().map((id) => textBlock(id)),
  fc.nat().map((id) => randomBlock(id)),
  fc.tuple(fc.nat(), fc.nat(), fc.nat({ max: LBA_BYTES })).map(([a, b, cut]) => Buffer.concat([textBlock(a).subarray(0, cut), randomBlock(b).subarray(cut)])),
  fc.tuple(fc.nat(), fc.integer({ min: 1, max: 64 })).map(([id, run]) => {
    // Runs of repeated bytes: highly compressible but not a pattern.
    const block = randomBlock(id);
    for (let at = 0; at < LBA_BYTES; at += run * 2) block.fill(block[at]!, at, Math.min(LBA_BYTES, at + run));
    return block;
  }),
);

for (const [name, codec] of CODECS) {
  test(`${name}: decompressBlock(compressBlock(b)) === b, and compression is kept only when it saves ${MIN_SAVING_BYTES} bytes (property)`, (t) => {
    const seed = testSeed(t, codec);
    fc.assert(
      fc.property(blockArbitrary, (block) => {
        const copy = Buffer.from(block);
        const { stored, codec: used } = compressBlock(block, codec);
        if (used !== Codec.Raw && used !== codec) return false;
        if (used !== Codec.Raw && stored.length + MIN_SAVING_BYTES > block.length) return false;
        if (used === Codec.Raw && !stored.equals(block)) return false;
        const back = decompressBlock(Buffer.from(stored), used, block.length);
        return back.equals(copy) && block.equals(copy);
      }),
      { seed, numRuns: 400 },
    );
    t.pass();
  });

  test(`${name}: incompressible blocks are stored raw, byte for byte`, (t) => {
    for (let id = 0; id < 50; id++) {
      const block = randomBlock(id);
      const { stored, codec: used } = compressBlock(block, codec);
      t.is(used, Codec.Raw, `random block ${id} is stored raw`);
      t.is(stored.length, LBA_BYTES);
      t.true(stored.equals(block));
    }
  });
}

test('lz4 and zstd store text-like blocks compressed, at the size the codec library gives', (t) => {
  for (let id = 0; id < 50; id++) {
    const block = textBlock(id);
    const lz4 = compressBlock(block, Codec.Lz4);
    t.is(lz4.codec, Codec.Lz4);
    t.is(lz4.stored.length, lz4Compress(block).length, 'lz4 stores exactly what lz4-napi produces');
    t.true(lz4.stored.length < 2 * 1024, `text block ${id} compresses to ${lz4.stored.length} bytes with lz4`);
    const zstd = compressBlock(block, Codec.Zstd);
    t.is(zstd.codec, Codec.Zstd);
    t.true(zstd.stored.length < lz4.stored.length, 'zstd compresses text further than lz4');
  }
});

test('a block whose compression saves less than the threshold is stored raw', (t) => {
  // Half text, half random: LZ4 saves something, but find a cut where it saves less than the threshold.
  let found = 0;
  for (let cut = 0; cut <= LBA_BYTES && found < 5; cut += 16) {
    const block = Buffer.concat([textBlock(cut).subarray(0, cut), randomBlock(cut).subarray(cut)]);
    const saving = LBA_BYTES - lz4Compress(block).length;
    if (saving <= 0 || saving >= MIN_SAVING_BYTES) continue;
    found += 1;
    const { codec, stored } = compressBlock(block, Codec.Lz4);
    t.is(codec, Codec.Raw, `saving ${saving} bytes is below ${MIN_SAVING_BYTES}: stored raw`);
    t.true(stored.equals(block));
  }
  t.true(found > 0, 'the table found blocks with a small saving');
});

test('decompressBlock reports damaged or wrong-sized chunks as CORRUPT, never as data', (t) => {
  for (const codec of [Codec.Lz4, Codec.Zstd]) {
    const block = textBlock(7);
    const { stored } = compressBlock(block, codec);
    const wrongLength = t.throws(() => decompressBlock(stored, codec, LBA_BYTES - 512));
    t.true(wrongLength instanceof StorageError && wrongLength.code === 'CORRUPT', `codec ${codec}: wrong length is CORRUPT`);
    const garbage = t.throws(() => decompressBlock(randomBlock(3).subarray(0, 1000), codec, LBA_BYTES));
    t.true(garbage instanceof StorageError && garbage.code === 'CORRUPT', `codec ${codec}: garbage is CORRUPT (${(garbage as Error).message})`);
  }
});

// ---- The native sample ----------------------------------------------------------------------

test('hashAndSample (the addon) gives the hash of hashInto and the verdict of looksIncompressible, on every kind of block (property)', (t) => {
  if (hashAndSample === null || hashInto === null) {
    t.log('the addon is not built here: the write path uses the JavaScript sample');
    t.pass();
    return;
  }
  const fioLike = (seed: number): Buffer => {
    // fio's refilled buffers: 64-bit words from a shift generator (few distinct bytes at a fixed stride).
    const out = Buffer.alloc(LBA_BYTES);
    let x = (BigInt(seed) * 0x9e3779b97f4a7c15n + 1n) & 0xffff_ffff_ffff_ffffn;
    for (let at = 0; at < LBA_BYTES; at += 8) {
      x ^= (x << 13n) & 0xffff_ffff_ffff_ffffn;
      x ^= x >> 7n;
      x ^= (x << 17n) & 0xffff_ffff_ffff_ffffn;
      out.writeBigUInt64LE(x, at);
    }
    return out;
  };
  const kinds: Array<(seed: number) => Buffer> = [
    randomBlock,
    textBlock,
    fioLike,
    (seed) => nearPatternBlock(8, seed, seed % LBA_BYTES),
    (seed) => patternBlock(4, seed),
    (seed) => Buffer.concat([lz4Compress(Buffer.concat([textBlock(seed), textBlock(seed + 1), textBlock(seed + 2)])), randomBlock(seed)]).subarray(0, LBA_BYTES),
  ];
  const verdicts = new Set<boolean>();
  fc.assert(
    fc.property(fc.integer({ min: 0, max: kinds.length - 1 }), fc.integer({ min: 0, max: 1_000_000 }), fc.integer({ min: 0, max: 0xffff_ffff }), fc.integer({ min: 0, max: 0xffff_ffff }), (kind, seed, seedHigh, seedLow) => {
      const block = kinds[kind]!(seed);
      const expected = Buffer.alloc(16);
      const low = hashInto!(block, seedHigh, seedLow, expected, 8);
      const out = Buffer.alloc(16);
      const both = hashAndSample!(block, seedHigh, seedLow, out, 8);
      verdicts.add(both >= 2 ** 32);
      return both >>> 0 === low && out.equals(expected) && both >= 2 ** 32 === looksIncompressible(block);
    }),
    { seed: testSeed(t, 7), numRuns: 2000 },
  );
  t.deepEqual([...verdicts].sort(), [false, true], 'both verdicts were seen');
  t.throws(() => hashAndSample!(Buffer.alloc(512), 0, 0, Buffer.alloc(8), 0), { instanceOf: TypeError });
  t.throws(() => hashAndSample!(randomBlock(1), 0, 0, Buffer.alloc(8), 1), { instanceOf: RangeError });
});
