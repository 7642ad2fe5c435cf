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
  for (let id = 0; id < 3; id++) pages.markDirty(id, pages.create(id)); // dirty: not evictable
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
  pages.markDirty(7, page);
  const ops: Parameters<typeof pages.capture>[0] = [];
  const captured = pages.capture(ops);
  t.is(pages.dirtyCount, 0);
  await pages.load([8, 9]);
  t.true(pages.has(7), 'not evictable while its batch is in flight');
  pages.settle(captured, true);
  t.is(page.persistedVersion, page.version);
});
