/**
 * The dedup index's table (typed arrays, linear probing, CLOCK eviction, tombstones and rehash)
 * against a plain Map: a lookup never names a chunk the model does not map that fingerprint to;
 * while the table has room, every mapping is found; what is evicted before being written reaches
 * LevelDB through `capture`, and `prepare` brings it back; deletions reach LevelDB too.
 */
import test from 'ava';
import fc from 'fast-check';
import { MemoryMetaStore } from '../../src/meta/memory-store.js';
import { BloomFilter } from '../../src/reduce/bloom-filter.js';
import { DEDUP_SLOT_BYTES, DedupIndex, MAYBE_STORED } from '../../src/reduce/dedup-index.js';

function fingerprint(n: number): Buffer {
  // Spread keys so that many share low bits (long probe chains) and some share high bits.
  const out = Buffer.alloc(8);
  out.writeUInt32BE((n * 2654435761) >>> 0, 0);
  out.writeUInt32BE((n % 7) * 1024 + (n % 3), 4);
  return out;
}


const ops = fc.array(
  fc.oneof(
    { weight: 6, arbitrary: fc.record({ op: fc.constant('insert' as const), key: fc.integer({ min: 0, max: 3000 }), chunk: fc.integer({ min: 1, max: 1e9 }) }) },
    { weight: 3, arbitrary: fc.record({ op: fc.constant('remove' as const), key: fc.integer({ min: 0, max: 3000 }) }) },
    { weight: 1, arbitrary: fc.constant({ op: 'commit' as const }) },
  ),
  { maxLength: 4000 },
);

test('the table agrees with a Map through inserts, removals, evictions and write-back', async (t) => {
  await fc.assert(
    fc.asyncProperty(ops, async (sequence) => {
      const store = new MemoryMetaStore();
      // 1024 slots: 768 entries before eviction, so long runs evict and rehash.
      const index = new DedupIndex(store, new BloomFilter(64 * 1024), 2048 * DEDUP_SLOT_BYTES - 1);
      const model = new Map<number, number>();
      for (const step of sequence) {
        if (step.op === 'insert') {
          index.insertAt(fingerprint(step.key), 0, step.chunk);
          model.set(step.key, step.chunk);
        } else if (step.op === 'remove') {
          const chunk = model.get(step.key);
          if (chunk === undefined) continue;
          index.removeAt(fingerprint(step.key), 0, chunk);
          model.delete(step.key);
        } else {
          const batch: Parameters<typeof index.capture>[0] = [];
          index.capture(batch);
          await store.batch(batch, { sync: true });
        }
        if (index.size > index.capacity) throw new Error(`${index.size} entries in a table for ${index.capacity}`);
      }
      // Everything evicted unwritten goes to LevelDB; then every mapping is found again.
      const batch: Parameters<typeof index.capture>[0] = [];
      index.capture(batch);
      await store.batch(batch, { sync: true });
      for (let key = 0; key <= 3000; key++) {
        let found = index.lookupAt(fingerprint(key), 0);
        if (found === MAYBE_STORED) {
          await index.prepare([fingerprint(key)]);
          found = index.lookupAt(fingerprint(key), 0);
        }
        t.is(found, model.get(key), `key ${key}`);
      }
    }),
    { numRuns: 30 },
  );
});

test('an index that fits in memory answers without LevelDB and writes nothing until a checkpoint', (t) => {
  const store = new MemoryMetaStore();
  const index = new DedupIndex(store, new BloomFilter(64 * 1024), 1 << 20);
  for (let key = 0; key < 10_000; key++) index.insertAt(fingerprint(key), 0, key + 1);
  for (let key = 0; key < 10_000; key++) t.is(index.lookupAt(fingerprint(key), 0), key + 1);
  t.is(index.lookupAt(fingerprint(20_000), 0), undefined, 'a fingerprint never added is a Bloom-filter miss');
  const quiet: Parameters<typeof index.capture>[0] = [];
  index.capture(quiet);
  t.is(quiet.filter((op) => op.key.length === 8).length, 0, 'nothing to write while everything fits');
  const all: Parameters<typeof index.capture>[0] = [];
  index.capture(all, true);
  t.is(all.filter((op) => op.key.length === 8).length, 10_000, 'a checkpoint writes every entry');
  t.true(index.memoryBytes <= 1 << 20);
});

test('probe runs stay short while unique fingerprints turn the full table over many times', (t) => {
  // Slot order is hash order: a CLOCK hand sweeping slots in order emptied one stretch of the
  // table at a time while new entries landed everywhere, and the stretch ahead of it filled until
  // runs of occupied slots grew without bound (20,000 slots at 1.5 M entries; ms per lookup).
  const index = new DedupIndex(new MemoryMetaStore(), new BloomFilter(64 * 1024), 65_536 * DEDUP_SLOT_BYTES);
  const key = Buffer.alloc(8);
  let state = 12345;
  const random32 = () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0);
  const longest: number[] = [];
  for (let i = 1; i <= 12 * index.capacity; i++) {
    key.writeUInt32BE(random32(), 0);
    key.writeUInt32BE(random32(), 4);
    index.lookupAt(key, 0);
    index.insertAt(key, 0, i);
    if (i % 2048 === 0) index.capture([]);
    if (i % index.capacity === 0) longest.push(index.longestRun());
  }
  t.log(`longest run of occupied slots after each turnover: ${longest.join(', ')} (65,536 slots)`);
  t.true(Math.max(...longest) < 1000, `runs stay short: ${longest.join(', ')}`);
});

test('a checkpoint can write the table in slices: each bounded, together everything, nothing twice', async (t) => {
  const store = new MemoryMetaStore();
  const index = new DedupIndex(store, new BloomFilter(64 * 1024), 1 << 20);
  for (let key = 0; key < 10_000; key++) index.insertAt(fingerprint(key), 0, key + 1);
  const written = new Set<string>();
  let slices = 0;
  t.is(index.unwrittenEntries, 10_000);
  for (let from: number | undefined = 0, done = false; !done; from = undefined) {
    const ops: Parameters<typeof index.capture>[0] = [];
    done = index.captureUnwritten(ops, 1000, 16_000, from);
    t.true(ops.length <= 1000, `slice of ${ops.length}`);
    if (ops.length === 0) continue;
    slices += 1;
    for (const op of ops) written.add(Buffer.from(op.key).toString('hex'));
    await store.batch(ops, { sync: false });
  }
  // A slice walks at most 16,000 of the 65,536 slots.
  t.true(slices >= 10 && slices <= 14, `${slices} slices`);
  t.is(written.size, 10_000, 'every entry once');
  t.is(index.unwrittenEntries, 0);
  t.true(index.captureUnwritten([], 1000, 1000, 0), 'with nothing unwritten, the walk is done at once');
  const rest: Parameters<typeof index.capture>[0] = [];
  index.capture(rest, true);
  t.is(rest.filter((op) => op.key.length === 8).length, 0, 'the checkpoint commit finds nothing left to write');
  t.is(rest.length, 1, 'but the Bloom filter segment the slices changed');
  t.is(index.bloom.captureSome([], 1), 0);
  await store.batch(rest, { sync: false });
  // A fresh index over the same store finds every entry through the Bloom filter and LevelDB.
  const bloom = new BloomFilter(64 * 1024);
  await bloom.load(store);
  const reopened = new DedupIndex(store, bloom, 1 << 20);
  for (const key of [0, 4321, 9999]) {
    t.is(reopened.lookupAt(fingerprint(key), 0), MAYBE_STORED);
    await reopened.prepare([fingerprint(key)]);
    t.is(reopened.lookupAt(fingerprint(key), 0), key + 1);
  }
});

test('the Bloom filter never answers "not stored" for a fingerprint LevelDB holds: after a crash, or at another size, it is rebuilt first', async (t) => {
  const store = new MemoryMetaStore();
  const written = new DedupIndex(store, new BloomFilter(64 * 1024), 4096 * DEDUP_SLOT_BYTES);
  t.true(await written.bloom.load(store) === false, 'a new store has no record: not trusted');
  t.true(await written.bloom.rebuild(store, () => false));
  for (let key = 0; key < 3000; key++) written.insertAt(fingerprint(key), 0, key + 1);
  const ops: Parameters<typeof written.capture>[0] = [];
  written.capture(ops, true);
  t.true(written.bloom.captureRecord(ops), 'complete, every segment captured: the record goes with them');
  await store.batch(ops, { sync: true });
  const stored = (index: DedupIndex) => {
    let surelyNot = 0;
    for (let key = 0; key < 3000; key++) if (index.lookupAt(fingerprint(key), 0) === undefined) surelyNot += 1;
    return surelyNot;
  };
  const unknown = (index: DedupIndex) => {
    let surelyNot = 0;
    for (let key = 100_000; key < 101_000; key++) if (index.lookupAt(fingerprint(key), 0) === undefined) surelyNot += 1;
    return surelyNot;
  };

  // Same size, after a clean close: trusted at once; loading consumes the record.
  const same = new DedupIndex(store, new BloomFilter(64 * 1024), 4096 * DEDUP_SLOT_BYTES);
  t.true(await same.bloom.load(store));
  t.is(stored(same), 0);
  t.true(unknown(same) > 900, 'and it still says "not stored" for what is not');

  // Opened again without a clean close (a crash): the segments may lack bits, so not trusted.
  const afterCrash = new DedupIndex(store, new BloomFilter(64 * 1024), 4096 * DEDUP_SLOT_BYTES);
  t.false(await afterCrash.bloom.load(store));
  t.is(unknown(afterCrash), 0, 'untrusted: "maybe" for everything');

  // Another size (another --cache-mb): its bits sit elsewhere; "maybe" until rebuilt from LevelDB.
  const other = new DedupIndex(store, new BloomFilter(256 * 1024), 4096 * DEDUP_SLOT_BYTES);
  t.false(await other.bloom.load(store));
  t.is(stored(other), 0, 'no false "not stored" before the rebuild');
  t.false(other.bloom.complete);
  t.true(await other.bloom.rebuild(store, () => false));
  t.true(other.bloom.complete);
  t.is(stored(other), 0, 'nor after it');
  t.true(unknown(other) > 900, 'and "not stored" again for what is not');
  const stopped = new BloomFilter(256 * 1024);
  t.false(await stopped.load(store));
  t.false(await stopped.rebuild(store, () => true), 'a rebuild told to stop says so');
  t.false(stopped.complete);
});

test('the count of unwritten entries follows inserts, removals, evictions and rehashes, so a checkpoint that stops at it writes every live entry', async (t) => {
  await fc.assert(
    fc.asyncProperty(fc.array(fc.tuple(fc.nat(3), fc.nat(3000)), { minLength: 200, maxLength: 3000 }), async (steps) => {
      const store = new MemoryMetaStore();
      // 1024 slots: evictions and rehashes happen often.
      const index = new DedupIndex(store, new BloomFilter(64 * 1024), 1024 * 16);
      const live = new Map<number, number>();
      let nextChunk = 1;
      for (const [kind, key] of steps) {
        if (kind === 0 || kind === 1) {
          index.insertAt(fingerprint(key), 0, nextChunk);
          live.set(key, nextChunk++);
        } else if (kind === 2 && live.has(key)) {
          index.removeAt(fingerprint(key), 0, live.get(key)!);
          live.delete(key);
        } else {
          const ops: Parameters<typeof index.capture>[0] = [];
          index.capture(ops);
          await store.batch(ops, { sync: false });
        }
      }
      const ops: Parameters<typeof index.capture>[0] = [];
      index.capture(ops, true);
      await store.batch(ops, { sync: false });
      if (index.unwrittenEntries !== 0) return false;
      for (const [key, chunk] of live) {
        const stored = await store.get('fingerprints', fingerprint(key));
        if (stored === undefined || stored.readBigUInt64BE(0) !== BigInt(chunk)) return false;
      }
      return true;
    }),
    { numRuns: 60 },
  );
  t.pass();
});

test('a rehash in place drops the tombstones and keeps every entry, its chunk and its flags', async (t) => {
  // Keys spread over the table (the shared `fingerprint` piles them into three home slots).
  const key8 = (n: number): Buffer => {
    const out = Buffer.alloc(8);
    out.writeUInt32BE(Math.imul(n, 0x9e3779b1) >>> 0, 0);
    out.writeUInt32BE(Math.imul(n ^ 0x5bd1e995, 0x85ebca6b) >>> 0, 4);
    return out;
  };
  const store = new MemoryMetaStore();
  // 1024 slots, 768 entries before it makes room.
  const index = new DedupIndex(store, new BloomFilter(64 * 1024), 1024 * 16);
  for (let key = 0; key < 700; key++) index.insertAt(key8(key), 0, key + 1);
  // And a cluster at the table's last slot that wraps round to its first: the rehash meets entries
  // not yet moved on its way there and must move them on.
  const wrapKey = (n: number): Buffer => {
    const out = Buffer.alloc(8);
    out.writeUInt32BE(0x7000_0000 + n, 0);
    out.writeUInt32BE(0xffff_ffff, 4); // home: the last slot
    return out;
  };
  for (let n = 0; n < 24; n++) index.insertAt(wrapKey(n), 0, 50_000 + n);
  // Half of them written (a checkpoint), so the written flag has both values.
  const written: Parameters<typeof index.capture>[0] = [];
  index.captureUnwritten(written, 350, 1024, 0);
  await store.batch(written, { sync: false });
  const unwrittenBefore = index.unwrittenEntries;
  // Freed chunks leave tombstones: 600 of the 700 entries go.
  for (let key = 0; key < 600; key++) index.removeAt(key8(key), 0, key + 1);
  const removals: Parameters<typeof index.capture>[0] = [];
  index.capture(removals);
  await store.batch(removals, { sync: false });
  const unwrittenAfterRemovals = index.unwrittenEntries;
  t.true(unwrittenAfterRemovals < unwrittenBefore);
  // New entries until the table makes room: tombstones fill it, so it rehashes rather than evicts.
  const inner = index as unknown as { rehash(): void };
  const rehash = inner.rehash.bind(index);
  let rehashes = 0;
  inner.rehash = () => {
    rehashes += 1;
    rehash();
  };
  let added = 0;
  while (rehashes === 0 && added < 260) index.insertAt(key8(10_000 + added), 0, 10_000 + ++added);
  for (let key = 600; key < 700; key++) t.is(index.lookupAt(key8(key), 0), key + 1, `entry ${key} after the rehash`);
  for (let n = 0; n < 24; n++) t.is(index.lookupAt(wrapKey(n), 0), 50_000 + n, `wrapped entry ${n} after the rehash`);
  for (let key = 10_000; key < 10_000 + added; key++) t.is(index.lookupAt(key8(key), 0), key + 1, `entry ${key}`);
  for (let key = 0; key < 600; key++) t.not(index.lookupAt(key8(key), 0), key + 1, `removed entry ${key} stays removed`);
  t.is(index.unwrittenEntries, unwrittenAfterRemovals + added, 'the written flags survive the rehash');
  t.log(`${rehashes} rehash after ${added} new entries`);
  t.is(rehashes, 1, 'the table rehashed (rather than evicting)');
});

test('a rehash keeps every entry wherever the clusters lie, wrapped round the end included', async (t) => {
  // Homes drawn from a few slots at the table's end and start, and anywhere: clusters that wrap
  // and run into each other, so the rehash meets entries not yet moved and must move them on.
  const home = fc.oneof(fc.integer({ min: 1016, max: 1023 }), fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 1023 }));
  await fc.assert(
    fc.asyncProperty(fc.array(fc.tuple(home, fc.boolean()), { minLength: 1, maxLength: 700 }), async (entries) => {
      const store = new MemoryMetaStore();
      const index = new DedupIndex(store, new BloomFilter(64 * 1024), 1024 * 16);
      const keyOf = (i: number, slot: number): Buffer => {
        const out = Buffer.alloc(8);
        out.writeUInt32BE(i + 1, 0);
        out.writeUInt32BE(((i << 10) | slot) >>> 0, 4);
        return out;
      };
      entries.forEach(([slot], i) => index.insertAt(keyOf(i, slot), 0, i + 1));
      // Some written (so both flag values move), then some freed (tombstones).
      const written: Parameters<typeof index.capture>[0] = [];
      index.captureUnwritten(written, entries.length >> 1, 1024, 0);
      await store.batch(written, { sync: false });
      entries.forEach(([slot, freed], i) => freed && index.removeAt(keyOf(i, slot), 0, i + 1));
      const size = index.size;
      const unwritten = index.unwrittenEntries;
      (index as unknown as { rehash(): void }).rehash();
      if (index.size !== size || index.unwrittenEntries !== unwritten) return false;
      return entries.every(([slot, freed], i) => freed || index.lookupAt(keyOf(i, slot), 0) === i + 1);
    }),
    { numRuns: 200 },
  );
  t.pass();
});
