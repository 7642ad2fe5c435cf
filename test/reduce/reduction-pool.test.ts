/**
 * The reduction pool's ring of shared slots: with a tiny ring, two workers (so batches complete
 * out of order) and many concurrent submissions of every size, including ones larger than a
 * batch, each block's result must equal what the reduction functions give on the main thread.
 */
import test from 'ava';
import crypto from 'node:crypto';
import { Codec, compressBlock } from '../../src/reduce/codec.js';
import { keyedFingerprint } from '../../src/reduce/fingerprint.js';
import { ReducedBlocks, reduceInline } from '../../src/reduce/reduce-block.js';
import { checksumOf } from '../../src/ftl/page-format.js';
import { detectPattern } from '../../src/reduce/pattern.js';
import { ReductionPool } from '../../src/reduce/reduction-pool.js';
import { reduceRun } from '../../src/common/native.js';

const B = 4096;

function block(kind: number, seed: number): Buffer {
  switch (kind % 4) {
    case 0:
      return crypto.randomBytes(B);
    case 1:
      return Buffer.alloc(B, seed & 0xff); // a pattern
    case 2:
      return Buffer.from(`line ${seed} of a compressible log block\n`.repeat(200).slice(0, B));
    default: {
      const half = Buffer.alloc(B);
      crypto.randomBytes(B / 2).copy(half); // compresses, but not always by 256 bytes
      return half;
    }
  }
}

const KEY = 0x0123456789abcdefn;

function submit(pool: ReductionPool, blocks: Buffer[]): Promise<ReducedBlocks> {
  return new Promise((resolve, reject) => {
    const out = new ReducedBlocks(blocks.length);
    pool.submit({ blocks, out, first: 0, done: (error) => (error === null ? resolve(out) : reject(error)) });
  });
}

for (const codec of [Codec.Lz4, Codec.Zstd]) {
  test(`codec ${codec}: results through a 16-slot ring with 2 workers equal the direct computation`, async (t) => {
    const pool = new ReductionPool(2, codec, KEY, KEY, 6, 16);
    t.teardown(() => pool.close());
    let seed = 0;
    const submissions = Array.from({ length: 300 }, (_, i) => Array.from({ length: 1 + ((i * 7) % 13) }, () => block(seed * 31 + i, seed++)));
    const results = await Promise.all(submissions.map((blocks) => submit(pool, blocks)));
    const settings = { codec, fingerprint: keyedFingerprint(KEY), recordSeed: KEY };
    results.forEach((reduced, i) => {
      const blocks = submissions[i]!;
      const expected = new ReducedBlocks(blocks.length);
      reduceInline(blocks, expected, 0, settings);
      t.is(reduced.count, blocks.length);
      for (let j = 0; j < blocks.length; j++) {
        const input = blocks[j]!;
        const pattern = detectPattern(input);
        t.is(reduced.pattern[j], pattern === null ? 0 : 1, `pattern of submission ${i} block ${j}`);
        if (pattern !== null) {
          t.deepEqual([reduced.patternHigh[j], reduced.patternLow[j]], [pattern.high, pattern.low]);
          continue;
        }
        t.true(reduced.fingerprint(j).equals(keyedFingerprint(KEY)(input)), `fingerprint of submission ${i} block ${j}`);
        const direct = compressBlock(input, codec);
        t.is(reduced.codec[j], direct.codec);
        t.true((reduced.compressed[j] ?? input).equals(direct.stored), `stored form of submission ${i} block ${j}`);
        t.is(reduced.checksum[j], checksumOf(direct.stored, KEY), `checksum of submission ${i} block ${j}`);
        t.is(reduced.checksum[j], expected.checksum[j]);
      }
    });
  });
}

test('reduceInline: blocks back to back in one buffer (one addon call per run) give the columns of blocks apart (one call each)', (t) => {
  if (reduceRun === null) t.log('the addon is not built here: both are the per-block path');
  const settings = { codec: Codec.Lz4, fingerprint: keyedFingerprint(KEY), recordSeed: KEY };
  for (let round = 0; round < 40; round++) {
    const count = 1 + ((round * 5) % 33);
    // Every kind, patterns among them, and near-patterns that differ only in their last word.
    const parts = Array.from({ length: count }, (_, i) => {
      const one = block(round * 7 + i * 3, round * 100 + i);
      if ((round + i) % 9 === 0) one.writeUInt32LE(0xdeadbeef, B - 4);
      return one;
    });
    const whole = Buffer.concat(parts);
    const together = Array.from({ length: count }, (_, i) => whole.subarray(i * B, (i + 1) * B)); // one run
    const apart = parts.map((one) => Buffer.from(one)); // no two back to back
    const first = round % 3;
    const a = new ReducedBlocks(first + count);
    const b = new ReducedBlocks(first + count);
    reduceInline(together, a, first, settings, false);
    reduceInline(apart, b, first, settings, false);
    for (const column of ['pattern', 'patternHigh', 'patternLow', 'hashLow', 'random', 'fingerprints'] as const) {
      t.deepEqual([...a[column]], [...b[column]], `round ${round}: ${column}`);
    }
  }
  const bad = new ReducedBlocks(2);
  if (reduceRun !== null) {
    t.throws(() => reduceRun!(Buffer.alloc(B), 2, 0, 0, bad.fingerprints, bad.hashLow, bad.random, bad.pattern, bad.patternHigh, bad.patternLow, 0), { instanceOf: RangeError });
    t.throws(() => reduceRun!(Buffer.alloc(2 * B), 2, 0, 0, bad.fingerprints, bad.hashLow, bad.random, bad.pattern, bad.patternHigh, bad.patternLow, 1), { instanceOf: RangeError });
  }
});
