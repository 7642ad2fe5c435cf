/**
 * The volume maps of every layer: map pages behind one bounded page cache, and the only place a
 * map entry changes, so that every change is journalled (meta/journal.ts) before its page can be
 * written back.
 *
 * Cache ids: `mapCacheId(layer, pageIndex)` = layer * 2^32 + pageIndex; LevelDB keys: u32 layer +
 * u64 page index ('map' sublevel).
 */
import type { MetaJournal } from '../meta/journal.js';
import { volumeMapKey } from '../meta/keys.js';
import type { MetaStore } from '../meta/meta-store.js';
import { EntryKind, LBAS_PER_MAP_PAGE, MapPage } from './map-page.js';
import { PageCache } from './page-cache.js';

export function mapCacheId(layerId: number, mapPageIndex: number): number {
  return layerId * 0x100000000 + mapPageIndex;
}

export function layerOfCacheId(id: number): number {
  return Math.floor(id / 0x100000000);
}

export function pageIndexOfCacheId(id: number): number {
  return id % 0x100000000;
}

export class MapTable {
  readonly cache: PageCache<MapPage>;

  constructor(
    store: MetaStore,
    budgetBytes: number,
    private readonly journal: MetaJournal,
  ) {
    this.cache = new PageCache(store, 'map', (id) => volumeMapKey(layerOfCacheId(id), pageIndexOfCacheId(id)), (_id, bytes) => MapPage.decode(bytes), budgetBytes);
  }

  /** The loaded page of `layerId` holding `lba` (marks it recently used), or undefined. */
  pageOf(layerId: number, lba: number): MapPage | undefined {
    return this.cache.get(mapCacheId(layerId, Math.floor(lba / LBAS_PER_MAP_PAGE)));
  }

  /** Sets the entry of `lba` in `layerId`, whose map page `page` is (loaded). */
  set(page: MapPage, layerId: number, lba: number, kind: EntryKind, high: number, low: number): void {
    this.journal.map(layerId, lba, kind, high, low);
    page.set(lba % LBAS_PER_MAP_PAGE, kind, high, low);
    this.cache.markDirty(mapCacheId(layerId, Math.floor(lba / LBAS_PER_MAP_PAGE)), page, this.journal.seq);
  }

  setChunk(page: MapPage, layerId: number, lba: number, chunkId: number): void {
    this.set(page, layerId, lba, EntryKind.Chunk, Math.floor(chunkId / 0x100000000), chunkId >>> 0);
  }

  /** Replay of a journalled change (no new journal entry): the page must be loaded. */
  replay(layerId: number, lba: number, kind: EntryKind, high: number, low: number, seq: number): void {
    const id = mapCacheId(layerId, Math.floor(lba / LBAS_PER_MAP_PAGE));
    const page = this.cache.peek(id)!;
    page.set(lba % LBAS_PER_MAP_PAGE, kind, high, low);
    this.cache.markDirty(id, page, seq);
  }
}
