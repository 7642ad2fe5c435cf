/**
 * The reduction pool's ring of shared slots: with a tiny ring, two workers (so batches complete
 * out of order) and many concurrent submissions of every size, including ones larger than a
 * batch, each block's result must equal what the reduction functions give on the main thread.
 */
import test from 'ava';
import crypto from 'node:crypto';
import { Codec, compressBlock } from '../../src/reduce/codec.js';
import { sha256Fingerprint } from '../../src/reduce/fingerprint.js';
import { detectPattern } from '../../src/reduce/pattern.js';
import { ReductionPool } from '../../src/reduce/reduction-pool.js';

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

for (const codec of [Codec.Lz4, Codec.Zstd]) {
  test(`codec ${codec}: results through a 16-slot ring with 2 workers equal the direct computation`, async (t) => {
    const pool = new ReductionPool(2, codec, true, 64, 6, 16);
    t.teardown(() => pool.close());
    let seed = 0;
    const submissions = Array.from({ length: 300 }, (_, i) => Array.from({ length: 1 + ((i * 7) % 13) }, () => block(seed * 31 + i, seed++)));
    const results = await Promise.all(submissions.map((blocks) => pool.reduce(blocks)));
    results.forEach((reduced, i) => {
      t.is(reduced.length, submissions[i]!.length);
      reduced.forEach((result, j) => {
        const input = submissions[i]![j]!;
        const pattern = detectPattern(input);
        if (pattern !== null) {
          t.deepEqual(result.pattern, pattern);
          return;
        }
        t.is(result.pattern, null);
        t.true(result.fingerprint!.equals(sha256Fingerprint(input)), `fingerprint of submission ${i} block ${j}`);
        const expected = compressBlock(input, codec);
        t.is(result.reduced!.codec, expected.codec);
        t.true(result.reduced!.stored.equals(expected.stored), `stored form of submission ${i} block ${j}`);
      });
    });
  });
}
