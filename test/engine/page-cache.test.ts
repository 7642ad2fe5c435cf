import test from 'ava';
import { MemoryMetaStore } from '../../src/meta/memory-store.js';
import { u64Key } from '../../src/meta/keys.js';
import { ChunkPage } from '../../src/volume/chunk-table.js';
import { PageCache } from '../../src/volume/page-cache.js';

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
