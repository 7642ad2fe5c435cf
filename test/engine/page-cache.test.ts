import crypto from 'node:crypto';
import test from 'ava';
import { concatReadExtents } from '../../src/common/block-device.js';
import { silentLogger } from '../../src/common/log.js';
import { MemoryNand } from '../../src/nand/memory-nand.js';
import { FlashArray } from '../../src/volume/flash-array.js';
import { MemoryMetaStore } from '../../src/meta/memory-store.js';
import { u64Key } from '../../src/meta/keys.js';
import { ChunkPage } from '../../src/volume/chunk-table.js';
import { PageCache } from '../../src/volume/page-cache.js';

const B = 4096;

function cache(budgetPages: number) {
  const page = ChunkPage.decode(undefined);
  return new PageCache(new MemoryMetaStore(), 'chunks', (id) => u64Key(id), (_id, bytes) => ChunkPage.decode(bytes), budgetPages * page.sizeBytes);
}

test('a page created in a cache full of dirty pages is not evicted by its own insert', (t) => {
  const pages = cache(2);
  for (let id = 0; id < 3; id++) pages.markDirty(id, pages.create(id), 1); // dirty: not evictable
  const created = pages.create(3);
  t.is(pages.get(3), created);
});

test('clean, unpinned pages are evicted oldest first to stay within the budget', async (t) => {
  const pages = cache(4);
  await pages.load([0, 1, 2, 3]);
  const unpin = pages.pin([0]);
  await pages.load([4, 5]);
  t.true(pages.has(0), 'pinned pages stay');
  t.false(pages.has(1));
  t.false(pages.has(2));
  t.true(pages.has(4) && pages.has(5));
  unpin();
  t.true(pages.cachedBytes <= 4 * ChunkPage.decode(undefined).sizeBytes);
});

test('a captured page stays until its batch settles, then is clean', async (t) => {
  const pages = cache(1);
  const page = pages.create(7);
  pages.markDirty(7, page, 1);
  const ops: Parameters<typeof pages.captureWriteback>[0] = [];
  const captured = pages.captureWriteback(ops, { beforeSeq: Infinity, extraPages: 0, maxPages: Infinity });
  t.is(pages.dirtyCount, 0);
  await pages.load([8, 9]);
  t.true(pages.has(7), 'not evictable while its batch is in flight');
  pages.settle(captured, true);
  t.is(page.persistedVersion, page.version);
});

test('write-back takes dirty pages oldest first change first, and the trim point follows', (t) => {
  const pages = cache(16);
  for (const [id, seq] of [[1, 5], [2, 6], [3, 6], [4, 9]] as const) pages.markDirty(id, pages.create(id), seq);
  pages.markDirty(1, pages.get(1)!, 12); // a later change keeps the first seq
  t.is(pages.minDirtySeq(), 5);
  const ops: Parameters<typeof pages.captureWriteback>[0] = [];
  const older = pages.captureWriteback(ops, { beforeSeq: 7, extraPages: 0, maxPages: 100 });
  t.deepEqual(older.map((captured) => captured.id), [1, 2, 3], 'every page first changed before seq 7');
  t.is(pages.minDirtySeq(), 9);
  const extra = pages.captureWriteback(ops, { beforeSeq: 0, extraPages: 1, maxPages: 100 });
  t.deepEqual(extra.map((captured) => captured.id), [4], 'then the oldest others, as many as asked');
  t.is(pages.minDirtySeq(), undefined);
  pages.settle(older, true);
  pages.settle(extra, false);
  t.is(pages.minDirtySeq(), 9, 'a failed batch leaves its pages dirty since their old seq');
  pages.markDirty(2, pages.get(2)!, 20);
  t.is(pages.minDirtySeq(), 9);
  const capped = pages.captureWriteback(ops, { beforeSeq: Infinity, extraPages: 0, maxPages: 1 });
  t.deepEqual(capped.map((captured) => captured.id), [4], 'at most maxPages, oldest first');
});

test('a read that needs more chunk-table pages than the cache holds keeps what it loaded pinned, and completes', async (t) => {
  // A chunk-table page holds 256 chunks: lba i gets chunk 1 + 256 i (fillers take the ids
  // between), so the 16 blocks read at the end sit on 16 pages, and the cache holds about 4.
  const geometry = { pageBytes: 4096, pagesPerEraseBlock: 16, eraseBlockCount: 512, enduranceCycles: 100_000 };
  const options = { cacheBytes: 64 * 1024, reductionWorkers: 0, compression: 'none' as const, dedup: false };
  let nand = new MemoryNand(geometry);
  let meta = new MemoryMetaStore();
  let array = await FlashArray.assemble('memory', meta, nand, silentLogger, options, true);
  const volume = await array.createVolume('v', 8192 * B);
  const blocks = Array.from({ length: 16 }, () => crypto.randomBytes(B));
  for (let lba = 0; lba < blocks.length; lba++) {
    await volume.write(lba * B, blocks[lba]!, { fua: false });
    await volume.write((1000 + lba * 255) * B, crypto.randomBytes(255 * B), { fua: false });
  }
  await array.checkpoint();
  array.abandon();
  nand = nand.crash();
  meta = meta.crash();
  // Reopened: nothing cached. The first read caches the pages of blocks 0-3; the read of all 16
  // then finds those cached and the other 12 missing, and loading those evicts the first four.
  array = await FlashArray.assemble('memory', meta, nand, silentLogger, options, false);
  const reopened = array.lookup('v')!.device;
  t.true(array.chunks.cache.budget < 8 * ChunkPage.decode(undefined).sizeBytes, 'the cache holds fewer pages than the read needs');
  t.deepEqual(concatReadExtents(await reopened.read(0, 4 * B), 4 * B), Buffer.concat(blocks.slice(0, 4)));
  t.deepEqual(concatReadExtents(await reopened.read(0, 16 * B), 16 * B), Buffer.concat(blocks));
  array.abandon();
});
