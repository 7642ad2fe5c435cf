/**
 * Snapshots and clones as copy-on-write map layers.
 *
 * A volume's map is a chain of layers: writes go to the top layer, reads take the first entry
 * found walking down. Taking a snapshot freezes the top layer (the snapshot now names it) and puts
 * a new empty layer above it for the volume: O(1) in time and space, whatever the volume's size.
 * A clone is a new volume whose empty top layer sits on a snapshot's frozen layer. A frozen layer
 * never changes what it resolves to, so a snapshot's content never changes.
 *
 * Space: every layer entry naming a chunk holds one reference, so a chunk is freed exactly when
 * the last layer entry naming it goes away.
 * - Deleting a snapshot merges its layer into the one layer above it: an entry the upper layer
 *   does not override moves up (no refcount change), an overridden one is released. A snapshot
 *   with two layers above it (a clone depends on it) cannot be deleted.
 * - Restoring a snapshot releases the volume's top layer and starts a new empty one on the
 *   snapshot's layer. Deleting a volume releases its top layer and its snapshots' layers.
 *
 * Every change to the catalog (volumes, snapshots, layer parents) is made in memory in one
 * synchronous step and then committed with sync: true. Map entries change through `MapTable`, so
 * they are journalled like any write; operations that drop a layer, or that scan the stored map
 * pages, checkpoint first (every dirty page written back), so LevelDB holds every page and a
 * dropped layer's pages are deleted in the same batch that drops it from the catalog. Delete,
 * restore and shrink run as exclusive steps of the I/O scheduler: no write is applied meanwhile.
 */
import { StorageError } from '../common/errors.js';
import { LogStream } from '../ftl/log-stream.js';
import { volumeMapRange, decodeVolumeMapKey } from '../meta/keys.js';
import { validateVolumeName, type FlashArray } from './flash-array.js';
import { EntryKind, LBAS_PER_MAP_PAGE, encodedKinds, type MapPage } from './map-page.js';
import { ChangeMode, LBA_BYTES, mapCacheId, type SnapshotRecord, type Volume } from './volume.js';

export interface SnapshotInfo extends SnapshotRecord {
  volume: string;
  /** Bytes that deleting this snapshot would free. */
  exclusiveBytes: number;
}

export interface ChangedRange {
  offsetBytes: number;
  lengthBytes: number;
}


export function findVolume(array: FlashArray, name: string): Volume {
  const volume = array.volumes.get(name);
  if (volume === undefined) throw StorageError.notFound(`volume "${name}" does not exist; list volumes with "pstorage volume list"`);
  return volume;
}

export function findSnapshot(array: FlashArray, volume: Volume, name: string): SnapshotRecord {
  const snapshot = [...array.snapshots.values()].find((candidate) => candidate.volumeId === volume.record.id && candidate.name === name);
  if (snapshot === undefined) throw StorageError.notFound(`snapshot "${volume.record.name}@${name}" does not exist; list them with "pstorage snapshot list ${volume.record.name}"`);
  return snapshot;
}

/** Splits `volume@snapshot`. */
export function parseSnapshotName(text: string): { volume: string; snapshot: string } {
  const at = text.indexOf('@');
  if (at <= 0 || at === text.length - 1) throw StorageError.invalidArgument(`"${text}" is not VOLUME@SNAPSHOT`);
  return { volume: text.slice(0, at), snapshot: text.slice(at + 1) };
}

export async function createSnapshot(array: FlashArray, volumeName: string, name: string): Promise<SnapshotRecord> {
  validateVolumeName(name);
  const volume = findVolume(array, volumeName);
  if ([...array.snapshots.values()].some((s) => s.volumeId === volume.record.id && s.name === name)) {
    throw StorageError.alreadyExists(`snapshot "${volumeName}@${name}" already exists`);
  }
  // One synchronous step: writes applied before it are in the snapshot, later ones are not.
  const frozen = volume.record.topLayerId;
  const top = array.allocateId();
  array.layers.set(top, frozen);
  volume.record.topLayerId = top;
  const snapshot: SnapshotRecord = {
    id: array.allocateId(),
    name,
    volumeId: volume.record.id,
    layerId: frozen,
    createdAt: new Date().toISOString(),
    sizeBytes: volume.record.sizeBytes,
    mappedBlocks: volume.record.mappedBlocks,
    patternBlocks: volume.record.patternBlocks,
  };
  array.snapshots.set(snapshot.id, snapshot);
  volume.recordDirty = true;
  array.catalogDirty = true;
  await array.commit(true);
  return snapshot;
}

export async function cloneSnapshot(array: FlashArray, source: string, name: string): Promise<Volume> {
  validateVolumeName(name);
  const parsed = parseSnapshotName(source);
  const snapshot = findSnapshot(array, findVolume(array, parsed.volume), parsed.snapshot);
  if (array.volumes.has(name)) throw StorageError.alreadyExists(`volume "${name}" already exists`);
  // A clone holds the same data as its source, so it starts with the source's access list: cloning
  // must not publish what only some clients could read.
  const accessList = findVolume(array, parsed.volume).record.accessList;
  const extra = { origin: source, mappedBlocks: snapshot.mappedBlocks, patternBlocks: snapshot.patternBlocks, ...(accessList === undefined ? {} : { accessList: [...accessList] }) };
  return array.addVolume(name, snapshot.sizeBytes, snapshot.layerId, extra);
}

/** At most this many identities on one access list, each at most this long. */
export const MAX_ACCESS_IDENTITIES = 1024;
export const MAX_IDENTITY_BYTES = 255;

/**
 * Sets (or with null clears) the identities allowed to attach a volume and its snapshots over NBD
 * (see VolumeRecord.accessList), and commits. New connections see the change at once; connections
 * already attached keep their export until they close.
 */
export async function setVolumeAccess(array: FlashArray, name: string, identities: readonly string[] | null): Promise<Volume> {
  const volume = findVolume(array, name);
  if (identities !== null) validateIdentities(identities);
  await array.scheduler.runExclusive(async () => {
    if (identities === null) delete volume.record.accessList;
    else volume.record.accessList = [...new Set(identities)];
    volume.recordDirty = true;
    await array.commit(true);
  });
  return volume;
}

/** An identity is a certificate common name or a PSK username: printable, no commas. */
function validateIdentities(identities: readonly string[]): void {
  if (identities.length === 0) throw StorageError.invalidArgument('an access list needs at least one identity; to let every client in, clear the list instead');
  if (identities.length > MAX_ACCESS_IDENTITIES) throw StorageError.invalidArgument(`an access list holds at most ${MAX_ACCESS_IDENTITIES} identities`);
  for (const identity of identities) {
    if (typeof identity !== 'string' || identity === '' || Buffer.byteLength(identity) > MAX_IDENTITY_BYTES || /[,\x00-\x1f\x7f]/.test(identity) || identity.trim() !== identity) {
      throw StorageError.invalidArgument(`invalid identity ${JSON.stringify(identity)}: give a client certificate's common name or a PSK username (1-${MAX_IDENTITY_BYTES} bytes, no commas, control characters or surrounding spaces)`);
    }
  }
}

/** Layers whose parent is `layerId`. */
function childrenOf(array: FlashArray, layerId: number): number[] {
  return [...array.layers].filter(([, parent]) => parent === layerId).map(([id]) => id);
}

/** Names of the volumes (clones included) whose chains pass through `layerId`. */
function dependents(array: FlashArray, layerId: number, except: Volume | null): string[] {
  return [...array.volumes.values()].filter((volume) => volume !== except && volume.chain().includes(layerId)).map((volume) => volume.record.name);
}

export async function deleteSnapshot(array: FlashArray, volumeName: string, name: string): Promise<void> {
  const volume = findVolume(array, volumeName);
  const snapshot = findSnapshot(array, volume, name);
  const children = childrenOf(array, snapshot.layerId);
  // Clones (other volumes) reading through this layer keep it. The volume's own layers may be
  // several children of it: after a restore to this snapshot, the volume's new top and the layer of
  // a snapshot taken after this one both build on it.
  const clones = dependents(array, snapshot.layerId, volume);
  if (clones.length > 0) throw StorageError.busy(`snapshot "${volumeName}@${name}" has clones (${clones.join(', ')}); delete them first`);
  await array.scheduler.runExclusive(async () => {
    await array.checkpoint();
    // Layers above: a copy of its entries into each but the last, then a merge into the last.
    // None (the volume was restored to an older snapshot since): nothing reads through this layer
    // any more, so its entries are simply released.
    for (const child of children.slice(0, -1)) await copyLayerInto(array, snapshot.layerId, child);
    if (children.length > 0) await mergeLayerInto(array, snapshot.layerId, children.at(-1)!);
    else await releaseLayer(array, snapshot.layerId);
    array.forgetSnapshot(snapshot);
    await array.checkpoint();
  });
}

/** Moves `lower`'s entries up into `upper` where `upper` has none; releases the rest; drops `lower`. */
async function mergeLayerInto(array: FlashArray, lower: number, upper: number): Promise<void> {
  await fillLayerFrom(array, lower, upper, 'move');
  array.layers.delete(lower);
}

/** Copies `lower`'s entries into `upper` where `upper` has none (a reference more per chunk), and makes `upper` a child of `lower`'s parent. */
async function copyLayerInto(array: FlashArray, lower: number, upper: number): Promise<void> {
  await fillLayerFrom(array, lower, upper, 'copy');
}

/**
 * Gives `upper` every entry of `lower` it lacks, page by page, and makes `upper` a child of
 * `lower`'s parent. 'copy' takes a reference more on each chunk it copies and leaves `lower` as it
 * is; 'move' empties `lower` (an entry `upper` already has is released instead of moved).
 */
async function fillLayerFrom(array: FlashArray, lower: number, upper: number, mode: 'copy' | 'move'): Promise<void> {
  for (const pageIndex of await layerPageIndexes(array, lower)) {
    const ids = [mapCacheId(lower, pageIndex), mapCacheId(upper, pageIndex)];
    await withPages(array, ids, (from) => from.chunkIdsIn(), ([from, to]) => {
      for (let slot = 0; slot < LBAS_PER_MAP_PAGE; slot++) {
        const kind = from!.kind(slot);
        if (kind === EntryKind.Absent) continue;
        const lba = pageIndex * LBAS_PER_MAP_PAGE + slot;
        if (to!.kind(slot) === EntryKind.Absent) {
          if (mode === 'copy' && kind === EntryKind.Chunk) array.chunks.incref(from!.chunkId(slot));
          array.maps.set(to!, upper, lba, kind, from!.high[slot]!, from!.low[slot]!);
        } else if (mode === 'move' && kind === EntryKind.Chunk) {
          array.releaseChunk(from!.chunkId(slot));
        }
        if (mode === 'move') array.maps.set(from!, lower, lba, EntryKind.Absent, 0, 0);
      }
    });
  }
  array.layers.set(upper, array.layers.get(lower) ?? 0);
  array.catalogDirty = true;
}

/** Releases every entry of a layer and drops it. */
async function releaseLayer(array: FlashArray, layerId: number): Promise<void> {
  for (const pageIndex of await layerPageIndexes(array, layerId)) {
    await withPages(array, [mapCacheId(layerId, pageIndex)], (page) => page.chunkIdsIn(), ([page]) => clearPage(array, layerId, pageIndex, page!));
  }
  array.layers.delete(layerId);
  array.catalogDirty = true;
}

/**
 * Loads map pages and the chunk-table pages of the chunks the first map page names, then runs
 * `change` in one synchronous step with all of them pinned (it changes entries through
 * `array.maps`, which journals them).
 */
async function withPages(array: FlashArray, ids: number[], chunksOf: (first: MapPage) => number[], change: (pages: MapPage[]) => void): Promise<void> {
  const unpinMap = await array.maps.cache.loadPinned(ids);
  try {
    const unpinChunks = await array.chunks.cache.loadPinned(array.chunks.pageIdsOf(chunksOf(array.maps.cache.peek(ids[0]!)!)));
    try {
      array.withEvictionsHeld(() => change(ids.map((id) => array.maps.cache.get(id)!)));
    } finally {
      unpinChunks();
    }
  } finally {
    unpinMap();
  }
}

function clearPage(array: FlashArray, layerId: number, pageIndex: number, page: MapPage): void {
  for (let slot = 0; slot < LBAS_PER_MAP_PAGE; slot++) {
    if (page.kind(slot) === EntryKind.Chunk) array.releaseChunk(page.chunkId(slot));
    if (page.kind(slot) !== EntryKind.Absent) array.maps.set(page, layerId, pageIndex * LBAS_PER_MAP_PAGE + slot, EntryKind.Absent, 0, 0);
  }
}

export async function restoreSnapshot(array: FlashArray, volumeName: string, name: string): Promise<void> {
  const volume = findVolume(array, volumeName);
  const snapshot = findSnapshot(array, volume, name);
  await array.scheduler.runExclusive(async () => {
    await array.checkpoint();
    const oldTop = volume.record.topLayerId;
    const top = array.allocateId();
    array.layers.set(top, snapshot.layerId);
    Object.assign(volume.record, { topLayerId: top, sizeBytes: snapshot.sizeBytes, mappedBlocks: snapshot.mappedBlocks, patternBlocks: snapshot.patternBlocks });
    volume.recordDirty = true;
    array.catalogDirty = true;
    await releaseLayer(array, oldTop);
    await array.checkpoint();
  });
}

export async function deleteVolume(array: FlashArray, name: string, options: { force: boolean }): Promise<void> {
  const volume = findVolume(array, name);
  const snapshots = [...array.snapshots.values()].filter((snapshot) => snapshot.volumeId === volume.record.id);
  for (const snapshot of snapshots) {
    const clones = dependents(array, snapshot.layerId, volume);
    if (clones.length > 0) throw StorageError.busy(`clones (${clones.join(', ')}) depend on snapshot "${name}@${snapshot.name}"; delete them first`);
  }
  if (snapshots.length > 0 && !options.force) {
    throw StorageError.busy(`volume "${name}" has ${snapshots.length} snapshot(s) (${snapshots.map((s) => s.name).join(', ')}); delete them first, or pass --force to delete them too`);
  }
  await array.scheduler.runExclusive(async () => {
    await array.checkpoint();
    // The volume owns its top layer and its snapshots' layers, on its current chain or not (a
    // restore leaves newer snapshots off the chain); layers below them belong to an origin.
    const own = new Set([volume.record.topLayerId, ...snapshots.map((snapshot) => snapshot.layerId)]);
    for (const layerId of own) await releaseLayer(array, layerId);
    for (const snapshot of snapshots) array.forgetSnapshot(snapshot);
    array.forgetVolume(volume);
    await array.checkpoint();
  });
}

export async function resizeVolume(array: FlashArray, name: string, sizeBytes: number, options: { force: boolean }): Promise<void> {
  const volume = findVolume(array, name);
  if (sizeBytes <= 0 || sizeBytes % 512 !== 0) throw StorageError.invalidArgument(`size ${sizeBytes} must be a positive multiple of 512 bytes`);
  const old = volume.record.sizeBytes;
  if (sizeBytes < old && !options.force) {
    throw StorageError.invalidArgument(`shrinking "${name}" from ${old} to ${sizeBytes} bytes discards data past the new end; pass --force to do it`);
  }
  await array.scheduler.runExclusive(async () => {
    if (sizeBytes < old) {
      // Drop what lies past the new end (whole blocks from the first one fully past it).
      const first = Math.ceil(sizeBytes / LBA_BYTES);
      const last = Math.ceil(old / LBA_BYTES) - 1;
      if (last >= first) await volume.unmapRange(first, last, ChangeMode.Unmap);
    }
    volume.record.sizeBytes = sizeBytes;
    volume.recordDirty = true;
    await array.commit(true);
  });
}

/** Byte ranges written between snapshot `from` and snapshot (or volume) `to` of one volume. */
export async function diff(array: FlashArray, from: string, to: string): Promise<ChangedRange[]> {
  const older = parseSnapshotName(from);
  const volume = findVolume(array, older.volume);
  const olderSnapshot = findSnapshot(array, volume, older.snapshot);
  let newerLayer = volume.record.topLayerId;
  let sizeBytes = volume.record.sizeBytes;
  if (to.includes('@')) {
    const newer = parseSnapshotName(to);
    if (newer.volume !== older.volume) throw StorageError.invalidArgument('both snapshots must belong to the same volume');
    const newerSnapshot = findSnapshot(array, volume, newer.snapshot);
    newerLayer = newerSnapshot.layerId;
    sizeBytes = newerSnapshot.sizeBytes;
  } else if (to !== older.volume) {
    throw StorageError.invalidArgument('the second argument must be a snapshot of the same volume, or the volume itself');
  }
  await array.checkpoint();
  const changed = new Set<number>();
  for (const layerId of array.layersBetween(olderSnapshot.layerId, newerLayer)) {
    for await (const [key, value] of array.meta.iterate('map', volumeMapRange(layerId))) {
      const pageIndex = decodeVolumeMapKey(key).mapPageIndex;
      const kinds = encodedKinds(value);
      for (let slot = 0; slot < LBAS_PER_MAP_PAGE; slot++) if (kinds[slot] !== EntryKind.Absent) changed.add(pageIndex * LBAS_PER_MAP_PAGE + slot);
    }
  }
  return toRanges([...changed].sort((a, b) => a - b), sizeBytes);
}

function toRanges(lbas: number[], sizeBytes: number): ChangedRange[] {
  const ranges: ChangedRange[] = [];
  for (const lba of lbas) {
    const offsetBytes = lba * LBA_BYTES;
    if (offsetBytes >= sizeBytes) break;
    const lengthBytes = Math.min(LBA_BYTES, sizeBytes - offsetBytes);
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last.offsetBytes + last.lengthBytes === offsetBytes) last.lengthBytes += lengthBytes;
    else ranges.push({ offsetBytes, lengthBytes });
  }
  return ranges;
}

export async function listSnapshots(array: FlashArray, volumeName?: string): Promise<SnapshotInfo[]> {
  const volume = volumeName === undefined ? undefined : findVolume(array, volumeName);
  const snapshots = [...array.snapshots.values()].filter((snapshot) => volume === undefined || snapshot.volumeId === volume.record.id);
  await array.checkpoint();
  const out: SnapshotInfo[] = [];
  for (const snapshot of snapshots) {
    out.push({ ...snapshot, volume: array.volumeById(snapshot.volumeId)?.record.name ?? '?', exclusiveBytes: await exclusiveBytes(array, snapshot) });
  }
  return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id - b.id);
}

/** Record bytes of chunks only this snapshot's layer references, hidden by every layer above. */
async function exclusiveBytes(array: FlashArray, snapshot: SnapshotRecord): Promise<number> {
  const children = childrenOf(array, snapshot.layerId);
  let total = 0;
  for (const pageIndex of await layerPageIndexes(array, snapshot.layerId)) {
    const ids = [snapshot.layerId, ...children].map((layerId) => mapCacheId(layerId, pageIndex));
    await loadPages(array, ids);
    const [page, ...above] = ids.map((id) => array.maps.cache.get(id)!);
    const chunkIds: number[] = [];
    for (let slot = 0; slot < LBAS_PER_MAP_PAGE; slot++) {
      if (page!.kind(slot) === EntryKind.Chunk && above.every((upper) => upper.kind(slot) !== EntryKind.Absent)) chunkIds.push(page!.chunkId(slot));
    }
    await array.chunks.load(chunkIds);
    for (const chunkId of chunkIds) {
      const entry = array.chunks.isLoaded(chunkId) ? array.chunks.get(chunkId) : undefined;
      if (entry !== undefined && entry.refcount === 1) total += LogStream.recordBytes(entry.storedBytes);
    }
  }
  return total;
}

/** Page indexes a layer has in the store or in the cache. */
async function layerPageIndexes(array: FlashArray, layerId: number): Promise<number[]> {
  const indexes: number[] = [];
  for await (const [key] of array.meta.iterate('map', volumeMapRange(layerId))) indexes.push(decodeVolumeMapKey(key).mapPageIndex);
  for (const [id, page] of array.maps.cache.cachedEntries()) {
    if (Math.floor(id / 0x100000000) === layerId && page.mappedCount > 0) indexes.push(id % 0x100000000);
  }
  return [...new Set(indexes)];
}

async function loadPages(array: FlashArray, ids: number[]): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    await array.maps.cache.load(ids);
    if (ids.every((id) => array.maps.cache.has(id))) return;
  }
  throw StorageError.io('map pages could not be loaded (cache thrashing): raise --cache-mb');
}
