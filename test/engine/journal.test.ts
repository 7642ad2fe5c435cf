/**
 * The metadata journal (meta/journal.ts) and lazy write-back: entries decode to what was
 * journalled; a damaged value is CORRUPT; and after a crash at any point, replaying the journal
 * over whatever pages were written back restores exactly the committed state, including a crash
 * while a checkpoint's batch is in flight. The arrays here use a tiny cache and a tiny journal
 * backlog, so commits write pages back and trim the journal all the time and replay always has
 * pages newer than the trim point to apply old entries to.
 */
import test from 'ava';
import fc from 'fast-check';
import { concatReadExtents } from '../../src/common/block-device.js';
import { silentLogger } from '../../src/common/log.js';
import { MetaJournal, decodeJournalValue, type JournalVisitor } from '../../src/meta/journal.js';
import { decodeU64Key, u64Key } from '../../src/meta/keys.js';
import { MemoryMetaStore } from '../../src/meta/memory-store.js';
import type { BatchOptions, IterateRange, MetaOp, MetaStore, Sublevel } from '../../src/meta/meta-store.js';
import { MemoryNand } from '../../src/nand/memory-nand.js';
import { SeededRandom, randomSeed } from '../../src/nand/seeded-random.js';
import { auditArray } from '../../src/volume/audit.js';
import { FlashArray, type ArrayOptions } from '../../src/volume/flash-array.js';
import type { Volume } from '../../src/volume/volume.js';

const B = 4096;

type Entry =
  | { type: 'map'; layer: number; lba: number; kind: number; high: number; low: number }
  | { type: 'new'; chunk: number; block: number; offset: number; stored: number; codec: number; fingerprint: Buffer | null }
  | { type: 'refs'; chunk: number; refcount: number }
  | { type: 'move'; chunk: number; block: number; offset: number };

const id = fc.integer({ min: 0, max: 2 ** 48 - 1 });
const u32 = fc.integer({ min: 0, max: 2 ** 32 - 1 });
const entry: fc.Arbitrary<Entry> = fc.oneof(
  fc.record({ type: fc.constant('map' as const), layer: u32, lba: id, kind: fc.integer({ min: 0, max: 3 }), high: u32, low: u32 }),
  fc.record({
    type: fc.constant('new' as const),
    chunk: id,
    block: u32,
    offset: u32,
    stored: u32,
    codec: fc.integer({ min: 0, max: 2 }),
    fingerprint: fc.option(fc.uint8Array({ minLength: 1, maxLength: 32 }).map((bytes) => Buffer.from(bytes)), { nil: null }),
  }),
  fc.record({ type: fc.constant('refs' as const), chunk: id, refcount: u32 }),
  fc.record({ type: fc.constant('move' as const), chunk: id, block: u32, offset: u32 }),
);

function recorder(into: Entry[]): JournalVisitor {
  return {
    map: (layer, lba, kind, high, low) => into.push({ type: 'map', layer, lba, kind, high, low }),
    chunkNew: (chunk, block, offset, stored, codec, source, at, bytes) => into.push({ type: 'new', chunk, block, offset, stored, codec, fingerprint: bytes === 0 ? null : Buffer.from(source.subarray(at, at + bytes)) }),
    chunkRefs: (chunk, refcount) => into.push({ type: 'refs', chunk, refcount }),
    chunkMove: (chunk, block, offset) => into.push({ type: 'move', chunk, block, offset }),
  };
}

test('journal values decode to the entries journalled, in order, across captures', (t) => {
  fc.assert(
    fc.property(fc.array(fc.array(entry, { maxLength: 40 }), { minLength: 1, maxLength: 5 }), fc.integer({ min: 1, max: 1000 }), (rounds, firstSeq) => {
      const journal = new MetaJournal(firstSeq);
      let expectedSeq = firstSeq;
      for (const entries of rounds) {
        for (const e of entries) {
          if (e.type === 'map') journal.map(e.layer, e.lba, e.kind, e.high, e.low);
          else if (e.type === 'new') journal.chunkNew(e.chunk, e.block, e.offset, e.stored, e.codec, e.fingerprint);
          else if (e.type === 'refs') journal.chunkRefs(e.chunk, e.refcount);
          else journal.chunkMove(e.chunk, e.block, e.offset);
        }
        const captured = journal.capture();
        if (entries.length === 0) {
          t.deepEqual(captured, []);
          continue;
        }
        const decoded: Entry[] = [];
        for (const piece of captured) {
          t.is(piece.seq, expectedSeq++);
          decodeJournalValue(piece.value, recorder(decoded), 'test');
        }
        t.deepEqual(decoded, entries);
      }
      t.is(journal.seq, expectedSeq);
    }),
  );
});

test('a capture\'s buffer takes new entries only after it is recycled, never while its batch may be pending', (t) => {
  const journal = new MetaJournal(1);
  const fill = (from: number) => {
    for (let i = 0; i < 5000; i++) journal.chunkRefs(from + i, i + 1);
  };
  const bytesOf = (pieces: Array<{ value: Buffer }>) => Buffer.concat(pieces.map((piece) => piece.value));
  const refsIn = (pieces: Array<{ value: Buffer }>) => {
    const decoded: Entry[] = [];
    for (const piece of pieces) decodeJournalValue(piece.value, recorder(decoded), 'test');
    return decoded.map((e) => (e.type === 'refs' ? e.chunk : -1));
  };
  fill(0);
  const a = journal.capture();
  fill(10_000);
  const b = journal.capture();
  const bBytes = bytesOf(b);
  journal.recycle(a); // a's batch is written: its buffer takes the entries after the next capture
  fill(20_000);
  const c = journal.capture();
  fill(30_000);
  const d = journal.capture();
  t.is(d[0]!.value.buffer, a[0]!.value.buffer, 'the recycled buffer was reused');
  t.deepEqual(refsIn(c), Array.from({ length: 5000 }, (_, i) => 20_000 + i));
  t.deepEqual(refsIn(d), Array.from({ length: 5000 }, (_, i) => 30_000 + i));
  // b was never recycled (as a failed batch's pieces, kept for the retry): never written over.
  fill(40_000);
  const e = journal.capture();
  t.true(bytesOf(b).equals(bBytes), 'a capture not recycled is never written over');
  for (const later of [c, d, e]) t.not(later[0]!.value.buffer, b[0]!.value.buffer);
  t.deepEqual(refsIn(b), Array.from({ length: 5000 }, (_, i) => 10_000 + i));
  t.deepEqual(refsIn(e), Array.from({ length: 5000 }, (_, i) => 40_000 + i));
});

test('a large capture is cut into pieces of about 64 KiB at entry boundaries, with consecutive seqs', (t) => {
  fc.assert(
    fc.property(fc.array(entry, { minLength: 3000, maxLength: 12000 }), fc.integer({ min: 1, max: 1000 }), (entries, firstSeq) => {
      const journal = new MetaJournal(firstSeq);
      for (const e of entries) {
        if (e.type === 'map') journal.map(e.layer, e.lba, e.kind, e.high, e.low);
        else if (e.type === 'new') journal.chunkNew(e.chunk, e.block, e.offset, e.stored, e.codec, e.fingerprint);
        else if (e.type === 'refs') journal.chunkRefs(e.chunk, e.refcount);
        else journal.chunkMove(e.chunk, e.block, e.offset);
      }
      const totalBytes = journal.pendingBytes;
      const pieces = journal.capture();
      t.true(pieces.length >= Math.floor(totalBytes / (64 * 1024 + 277)), `${pieces.length} pieces for ${totalBytes} bytes`);
      const decoded: Entry[] = [];
      pieces.forEach((piece, index) => {
        t.is(piece.seq, firstSeq + index);
        t.true(piece.value.length <= 64 * 1024 + 277, `piece of ${piece.value.length} bytes`);
        if (index < pieces.length - 1) t.true(piece.value.length >= 64 * 1024, `inner piece of ${piece.value.length} bytes`);
        decodeJournalValue(piece.value, recorder(decoded), 'test');
      });
      t.deepEqual(decoded, entries);
      t.is(journal.seq, firstSeq + pieces.length);
      t.is(journal.pendingBytes, 0);
    }),
    { numRuns: 20 },
  );
});

test('a damaged journal value is CORRUPT, never a wrong entry', (t) => {
  const journal = new MetaJournal(1);
  journal.map(7, 123456, 1, 0, 42);
  journal.chunkNew(9, 3, 4096, 4096, 0, Buffer.alloc(8, 1));
  const [{ value }] = journal.capture();
  const none: JournalVisitor = { map() {}, chunkNew() {}, chunkRefs() {}, chunkMove() {} };
  for (const cut of [1, 19, 21, value.length - 1]) {
    t.throws(() => decodeJournalValue(value.subarray(0, cut), none, 'cut'), { code: 'CORRUPT' }, `cut at ${cut}`);
  }
  const badType = Buffer.from(value);
  badType[0] = 9;
  t.throws(() => decodeJournalValue(badType, none, 'bad type'), { code: 'CORRUPT' });
});

/** A metadata store that can hold the next batch (never applied) to crash while it is in flight. */
class HoldingStore implements MetaStore {
  private holdNext = false;
  private holdWhere: ((ops: MetaOp[]) => boolean) | null = null;
  held = false;
  constructor(public inner: MemoryMetaStore) {}
  holdNextBatch(): void {
    this.holdNext = true;
  }
  /** Holds the first batch `where` picks; the batches before it go through. */
  holdBatchWhere(where: (ops: MetaOp[]) => boolean): void {
    this.holdWhere = where;
  }
  get(sublevel: Sublevel, key: Uint8Array) {
    return this.inner.get(sublevel, key);
  }
  getMany(sublevel: Sublevel, keys: Uint8Array[]) {
    return this.inner.getMany(sublevel, keys);
  }
  iterate(sublevel: Sublevel, range?: IterateRange) {
    return this.inner.iterate(sublevel, range);
  }
  batch(ops: MetaOp[], options: BatchOptions): Promise<void> {
    if (this.holdNext || this.holdWhere?.(ops) === true) {
      this.holdNext = false;
      this.holdWhere = null;
      this.held = true;
      return new Promise(() => {}); // the power goes before it is written
    }
    return this.inner.batch(ops, options);
  }
  get writeError() {
    return this.inner.writeError;
  }
  reopen() {
    return this.inner.reopen();
  }
  close() {
    return this.inner.close();
  }
}

const GEOMETRY = { pageBytes: 4096, pagesPerEraseBlock: 16, eraseBlockCount: 320, enduranceCycles: 100000 };
/** Three map pages' worth of blocks, so write-back and replay touch several of each kind. */
const REGION_BLOCKS = 2500;
const OPTIONS: ArrayOptions = {
  cacheBytes: 256 * 1024,
  reductionWorkers: 0,
  ftl: { gcBatchBlocks: 2 },
  metadata: { journalBacklogBytes: 6000, writebackPages: 2, dirtyPageShare: 0.5, commitIntervalMs: 3_600_000 },
};

interface Rig {
  nand: MemoryNand;
  store: HoldingStore;
  array: FlashArray;
  volume: Volume;
  options: ArrayOptions;
}

async function openRig(nand: MemoryNand, store: HoldingStore, create: boolean, options = OPTIONS): Promise<Rig> {
  const array = await FlashArray.assemble('memory', store, nand, silentLogger, options, create);
  const volume = create ? await array.createVolume('v', REGION_BLOCKS * B) : (array.lookup('v')!.device as Volume);
  return { nand, store, array, volume, options };
}

function blockContent(random: SeededRandom, kind: number): Buffer {
  const out = Buffer.alloc(B);
  if (kind === 0) for (let i = 0; i < B; i += 4) out.writeUInt32LE(random.nextInt(2 ** 32), i);
  else if (kind === 1) out.fill(random.nextInt(3) + 1); // one of a few patterns
  else out.write(`text ${random.nextInt(20)} `.repeat(400), 'latin1'); // compressible, often shared
  return out;
}

/** Per block, the contents a crash may leave: the flushed one and everything acknowledged since. */
class Versions {
  readonly allowed: Buffer[][] = Array.from({ length: REGION_BLOCKS }, () => [Buffer.alloc(B)]);
  push(lba: number, content: Buffer): void {
    this.allowed[lba]!.push(content);
  }
  flushed(): void {
    for (let lba = 0; lba < REGION_BLOCKS; lba++) this.allowed[lba] = [this.allowed[lba]!.at(-1)!];
  }
  async check(rig: Rig, what: string): Promise<void> {
    for (let lba = 0; lba < REGION_BLOCKS; lba++) {
      const actual = concatReadExtents(await rig.volume.read(lba * B, B), B);
      const index = this.allowed[lba]!.findIndex((version) => version.equals(actual));
      if (index < 0) throw new Error(`${what}: lba ${lba} holds none of its ${this.allowed[lba]!.length} allowed contents`);
      this.allowed[lba] = [actual];
    }
  }
}

async function crashAndReopen(rig: Rig, keepUnsynced?: 'all'): Promise<Rig> {
  rig.array.abandon();
  const nand = rig.nand.crash();
  const store = new HoldingStore(rig.store.inner.crash(keepUnsynced === undefined ? {} : { keepUnsynced }));
  return openRig(nand, store, false, rig.options);
}

test('replay after crashes restores exactly the committed state while pages are written back all the time', async (t) => {
  const seed = Number(process.env.PSTORAGE_SEED ?? randomSeed());
  t.log(`seed ${seed} (replay with PSTORAGE_SEED=${seed})`);
  const random = new SeededRandom(seed);
  let rig = await openRig(new MemoryNand(GEOMETRY), new HoldingStore(new MemoryMetaStore()), true);
  const versions = new Versions();
  let replayedValues = 0;
  let trims = 0;
  try {
    for (let round = 0; round < 12; round++) {
      const writes = 40 + random.nextInt(200);
      for (let i = 0; i < writes; i++) {
        const lba = random.nextInt(REGION_BLOCKS - 8);
        const count = 1 + random.nextInt(8);
        const data = Buffer.concat(Array.from({ length: count }, () => blockContent(random, random.nextInt(3))));
        await rig.volume.write(lba * B, data, { fua: false });
        for (let k = 0; k < count; k++) versions.push(lba + k, data.subarray(k * B, (k + 1) * B));
        if (random.nextInt(25) === 0) {
          await rig.volume.flush();
          versions.flushed();
        }
      }
      const journal = rig.array.stats().journal as { trimSeq: number; nextSeq: number };
      if (journal.trimSeq > 1) trims += 1;
      rig = await crashAndReopen(rig);
      replayedValues += rig.array.recovery.journalValues;
      await versions.check(rig, `seed ${seed}, crash ${round}`);
      const report = await auditArray(rig.array);
      t.deepEqual(report.problems, [], `audit after crash ${round} (seed ${seed})`);
    }
  } finally {
    rig.array.abandon();
  }
  t.log(`journal values replayed: ${replayedValues}; rounds that had trimmed the journal: ${trims}`);
  t.true(replayedValues > 0, `some crashes must leave journal values to replay (seed ${seed})`);
  t.true(trims > 0, `write-back must trim the journal (seed ${seed})`);
});

test('a crash while a checkpoint batch is in flight keeps the flushed state, and the journal is replayed', async (t) => {
  const seed = Number(process.env.PSTORAGE_SEED ?? randomSeed());
  t.log(`seed ${seed}`);
  const random = new SeededRandom(seed);
  let rig = await openRig(new MemoryNand(GEOMETRY), new HoldingStore(new MemoryMetaStore()), true);
  const versions = new Versions();
  try {
    for (let i = 0; i < 300; i++) {
      const lba = random.nextInt(REGION_BLOCKS);
      const data = blockContent(random, random.nextInt(3));
      await rig.volume.write(lba * B, data, { fua: false });
      versions.push(lba, data);
    }
    await rig.volume.flush();
    versions.flushed();
    t.true((rig.array.stats().journal as { keptBytes: number }).keptBytes > 0, 'the flush left journal values (pages are still dirty)');
    // Writes after the flush, then a checkpoint whose one batch never reaches the store.
    for (let i = 0; i < 50; i++) {
      const lba = random.nextInt(REGION_BLOCKS);
      const data = blockContent(random, 0);
      await rig.volume.write(lba * B, data, { fua: false });
      versions.push(lba, data);
    }
    rig.store.holdNextBatch();
    void rig.array.checkpoint();
    for (let i = 0; i < 1000 && !rig.store.held; i++) await new Promise((resolve) => setImmediate(resolve));
    t.true(rig.store.held, 'the checkpoint reached its batch');
    rig = await crashAndReopen(rig);
    t.true(rig.array.recovery.journalValues > 0, 'the journal was replayed');
    await versions.check(rig, `seed ${seed}`);
    t.deepEqual((await auditArray(rig.array)).problems, []);
    // A completed checkpoint empties the journal: the next open replays nothing.
    await rig.array.checkpoint();
    rig = await crashAndReopen(rig);
    t.is(rig.array.recovery.journalValues, 0);
    await versions.check(rig, `seed ${seed}, after a checkpoint`);
  } finally {
    rig.array.abandon();
  }
});

test('journal pieces written ahead of a commit that never lands are not replayed, and are rewritten later', async (t) => {
  // A large cache and no commits but the ones the test makes: one capture of ~150 KB of journal.
  const options: ArrayOptions = { ...OPTIONS, dedup: false, cacheBytes: 64 * 1024 * 1024, metadata: { journalCommitBytes: 1 << 30, dirtyPageShare: 1, commitIntervalMs: 3_600_000 } };
  const random = new SeededRandom(11);
  // Room enough that no GC (which commits) runs.
  let rig = await openRig(new MemoryNand({ ...GEOMETRY, eraseBlockCount: 2048 }), new HoldingStore(new MemoryMetaStore()), true, options);
  const versions = new Versions();
  const writeRound = async (blocks: number) => {
    for (let i = 0; i < blocks; i++) {
      const lba = random.nextInt(REGION_BLOCKS);
      const data = blockContent(random, 0);
      await rig.volume.write(lba * B, data, { fua: false });
      versions.push(lba, data);
    }
  };
  const isCommitBatch = (ops: MetaOp[]) => ops.some((op) => op.sublevel === 'super');
  try {
    await writeRound(2500);
    await rig.volume.flush();
    versions.flushed();
    const committed = rig.array.stats().journal as { nextSeq: number };
    await writeRound(3500);
    const pendingBytes = (rig.array.stats().journal as { pendingBytes: number }).pendingBytes;
    t.true(pendingBytes > 2 * 64 * 1024, `journal pending: ${pendingBytes} bytes`);
    // The pieces ahead go through; the commit's own batch never reaches the store.
    rig.store.holdBatchWhere(isCommitBatch);
    void rig.array.commit(true);
    for (let i = 0; i < 1000 && !rig.store.held; i++) await new Promise((resolve) => setImmediate(resolve));
    t.true(rig.store.held, 'the commit reached its batch');
    const ahead: number[] = [];
    for await (const [key] of rig.store.inner.iterate('journal', { gte: u64Key(committed.nextSeq) })) ahead.push(decodeU64Key(key));
    t.true(ahead.length >= 2, `pieces written ahead: ${ahead.join(', ')}`);
    // Every unsynced batch survives (the pieces), the commit's does not: the flushed state, exactly.
    rig = await crashAndReopen(rig, 'all');
    t.is((rig.array.stats().journal as { nextSeq: number }).nextSeq, committed.nextSeq);
    await versions.check(rig, 'after a crash with pieces written ahead');
    t.deepEqual((await auditArray(rig.array)).problems, []);
    // New writes reuse those seqs, the stale pieces are overwritten, and a later crash replays the new ones.
    await writeRound(2500);
    await rig.volume.flush();
    versions.flushed();
    rig = await crashAndReopen(rig);
    t.true(rig.array.recovery.journalValues >= 2, `replayed ${rig.array.recovery.journalValues} values`);
    await versions.check(rig, 'after a crash following new commits');
    t.deepEqual((await auditArray(rig.array)).problems, []);
  } finally {
    rig.array.abandon();
  }
});

test('the journal kept for replay stays within its backlog however much is written', async (t) => {
  const random = new SeededRandom(7);
  const rig = await openRig(new MemoryNand(GEOMETRY), new HoldingStore(new MemoryMetaStore()), true);
  let maxKept = 0;
  try {
    for (let i = 0; i < 1500; i++) {
      await rig.volume.write(random.nextInt(REGION_BLOCKS) * B, blockContent(random, 0), { fua: false });
      if (i % 10 === 9) await rig.array.commit(true);
      maxKept = Math.max(maxKept, (rig.array.stats().journal as { keptBytes: number }).keptBytes);
    }
  } finally {
    rig.array.abandon();
  }
  t.log(`largest journal kept: ${maxKept} bytes (backlog ${OPTIONS.metadata!.journalBacklogBytes})`);
  // One commit's value (10 writes, about 60 bytes each) beyond the backlog at most, with room for
  // the write-back limit of 2 pages a commit to catch up.
  t.true(maxKept <= 3 * OPTIONS.metadata!.journalBacklogBytes!, `kept ${maxKept}`);
});
