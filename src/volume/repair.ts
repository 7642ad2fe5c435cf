/**
 * Repair (`pstorage inspect repair`): rebuilds the metadata of an array whose LevelDB is damaged,
 * from what survives in LevelDB, the catalog copy and the NAND image, and reports exactly which
 * logical blocks could not be proven and now read as EIO.
 *
 * What it owns: the data directory, offline (the NAND image's lock keeps a server out). It never
 * writes NAND: it reads every erase block, writes a new LevelDB beside the old one, and swaps
 * the directories (`meta` → `meta.damaged-TIME`, kept for inspection; `meta.repair` → `meta`).
 * A crash before the swap leaves the old directory in place; running repair again starts over.
 *
 * Per sublevel:
 *   super        format: LevelDB's, else the catalog copy's (without it nothing can be verified
 *                and repair stops). layers: see volumes. state: recomputed (next ids from NAND
 *                and the maps; the host/NAND byte counters are reset if it was lost).
 *   volumes,     LevelDB's when intact, else the catalog copy's (catalog-copy.ts). Mapped and
 *   snapshots    pattern block counts are recomputed from the maps.
 *   map          cannot be rebuilt: NAND records name their chunk, not the volume block that
 *                uses it. A map page in a damaged key range gets a `lost` entry (map-page.ts) in
 *                every block no surviving journal entry accounts for; reads of those blocks are
 *                EIO, never another block's or an older version's data.
 *   journal      replayed into the maps and chunk table. A value missing from the range the
 *                superblock says is live (or a damaged write-ahead log) means changes whose
 *                blocks cannot be located: then every block of every volume is marked lost.
 *   chunks       rebuilt for every chunk a map names: the entry where it still verifies on NAND,
 *                else from the records on NAND (every record names its chunk and is checksummed
 *                with the array's secret; copies left by GC must agree byte for byte, else the
 *                chunk is ambiguous and lost). Refcounts are recounted from the maps; chunks no
 *                map names are freed. A chunk found nowhere is lost: the blocks naming it too.
 *   erase-blocks rebuilt from the page headers (sequence, pages written) and the chunk table
 *                (valid bytes); P/E counts and bad flags live in the NAND's spare area anyway.
 *   fingerprints rebuilt: the dedup index from the chunk table's fingerprints, the Bloom filter
 *                from them (the index is advice: a stale or missing entry costs a dedup only).
 *
 * Then the repaired array is opened the normal way and audited (audit.ts); the report carries the
 * audit.
 *
 * An encrypted array (array-key.ts) is repaired with its key file, checked before anything is
 * written: its records are checksummed over ciphertext with the public seed, so the scan reads them
 * as they are; a chunk entry rebuilt from a record decrypts it (the FTL's read path) and
 * decompresses it to compute its fingerprint under the key derived from the DEK. Memory: the salvaged metadata and the maps are held in memory while repairing (about
 * 2.3 MB per GiB of mapped volume space plus 26 bytes per chunk).
 */
import fs from 'node:fs';
import path from 'node:path';
import { xxh64 } from '@node-rs/xxhash';
import { StorageError } from '../common/errors.js';
import { silentLogger, type Logger } from '../common/log.js';
import { BlockState, SUMMARIES_PER_PAGE } from '../ftl/erase-block-table.js';
import { Ftl, defaultFtlOptions } from '../ftl/ftl.js';
import { LogStream } from '../ftl/log-stream.js';
import { PAGE_HEADER_BYTES, checkPage } from '../ftl/page-format.js';
import { decodeJournalValue } from '../meta/journal.js';
import { decodeU64Key, u32Key, u64Key, volumeMapKey } from '../meta/keys.js';
import { LevelMetaStore } from '../meta/level-store.js';
import type { MetaOp, Sublevel } from '../meta/meta-store.js';
import { inLostRange } from '../meta/leveldb-files.js';
import { type Salvage, type SublevelSalvage, mayBeLost, salvageMetadata } from '../meta/salvage.js';
import { FileNand } from '../nand/file-nand.js';
import { BloomFilter } from '../reduce/bloom-filter.js';
import { Codec, decompressBlock } from '../reduce/codec.js';
import { keyedFingerprint } from '../reduce/fingerprint.js';
import type { RecordCipher } from '../ftl/record-cipher.js';
import { unlockArray } from './array-key.js';
import { auditArray, type AuditReport } from './audit.js';
import { readCatalogCopy, type FormatRecord } from './catalog-copy.js';
import { CHUNKS_PER_PAGE, CHUNK_PAGE_VALUE_BYTES, ChunkPage, pageOf } from './chunk-table.js';
import { FORMAT_KEY, FORMAT_VERSION, FlashArray, LAYERS_KEY, STATE_KEY, bloomFilterBytes, type StateRecord } from './flash-array.js';
import { EntryKind, LBAS_PER_MAP_PAGE, MAP_PAGE_VALUE_BYTES, MapPage } from './map-page.js';
import { mapCacheId } from './map-table.js';
import type { SnapshotRecord, VolumeRecord } from './volume.js';

const LBA_BYTES = 4096;
/** Operations per LevelDB batch while writing the new store. */
const WRITE_BATCH_OPS = 4096;
const ZSTD_MAGIC = 0xfd2fb528;

export interface ByteRange {
  offsetBytes: number;
  lengthBytes: number;
}

export interface RepairReport {
  ok: boolean;
  dataDir: string;
  /** Where the damaged metadata directory was moved to. */
  damagedCopy: string;
  salvage: { files: number; bytes: number; versions: number; damagedBlocks: string[]; logDamage: string[]; manifestDamage: string[]; suspectKeys: number };
  /** Sublevels in which damage was found. */
  damagedSublevels: Sublevel[];
  rebuilt: string[];
  lost: {
    /** Every volume and snapshot with blocks that now read as EIO, and exactly which. */
    exports: Array<{ name: string; ranges: ByteRange[]; lostBytes: number }>;
    /** Chunks the maps name that no intact record on NAND holds. */
    chunks: number;
    /** True when the host and NAND byte counters had to be reset. */
    counters: boolean;
  };
  notes: string[];
  audit: Pick<AuditReport, 'ok' | 'problems' | 'mappedBlocks' | 'liveChunks' | 'checkedRecords'>;
  durationMs: number;
}

/** One intact record found on NAND. */
interface FoundRecord {
  chunkId: number;
  block: number;
  offsetBytes: number;
  storedBytes: number;
  sequence: number;
  hash: bigint;
}

interface NandScan {
  byChunk: Map<number, FoundRecord[]>;
  byAddress: Map<number, FoundRecord>;
  /** Per block: sequence of its pages (0: erased) and pages written in that use. */
  sequence: Uint32Array;
  pagesWritten: Uint32Array;
  problems: string[];
  maxChunkId: number;
}

interface Catalog {
  format: FormatRecord;
  layers: Map<number, number>;
  volumes: VolumeRecord[];
  snapshots: SnapshotRecord[];
  nextVolumeId: number;
}

/** The array's secrets (array-key.ts `unlockArray`): a plain array's from its format record, an encrypted one's from its key file. */
type ArrayKeys = { fingerprintKey: bigint; recordSeed: bigint; cipher: RecordCipher | null };

/** The work of one repair: the salvage, the rebuilt structures and what the report says. */
class Repair {
  readonly maps = new Map<number, MapPage>();
  readonly chunkPages = new Map<number, ChunkPage>();
  readonly lostChunkPages = new Set<number>();
  readonly rebuilt: string[] = [];
  readonly notes: string[] = [];
  lostChunks = 0;
  everythingLost = false;
  maxJournalSeq = 0;

  constructor(
    readonly salvage: Salvage,
    readonly catalog: Catalog,
    readonly state: StateRecord | null,
    readonly keys: ArrayKeys,
  ) {}

  sub(name: Sublevel): SublevelSalvage {
    return this.salvage.sublevels.get(name)!;
  }
}

/**
 * Repairs the array in `dataDir` (no server may be running). An encrypted array needs its key file:
 * its record checksums are over ciphertext (the scan needs no key), but a chunk rebuilt from NAND
 * gets its fingerprint from the decrypted block, under the key derived from the DEK, and the audit
 * opens the array.
 */
export async function repairArray(dataDir: string, logger: Logger = silentLogger, keyFileBytes?: Buffer): Promise<RepairReport> {
  const started = process.hrtime.bigint();
  const metaDir = path.join(dataDir, 'meta');
  if (!fs.existsSync(path.join(metaDir, 'CURRENT'))) throw StorageError.notFound(`no pstorage metadata in ${metaDir}: check the data directory path`);
  const nand = await FileNand.open(path.join(dataDir, 'nand')); // takes the image's lock: no server runs
  let repair: Repair;
  let scan: NandScan;
  try {
    const salvage = salvageMetadata(metaDir);
    logger.info('metadata salvaged', { versions: salvage.versions, damagedBlocks: salvage.damagedBlocks.length, logDamage: salvage.logDamaged.length });
    const catalog = catalogFrom(salvage, dataDir);
    checkGeometry(catalog.format, nand);
    // A missing or wrong key file stops here, before anything is written.
    repair = new Repair(salvage, catalog, stateFrom(salvage), unlockForRepair(catalog.format, keyFileBytes, dataDir));
    scan = await scanNand(nand, repair.keys.recordSeed);
    logger.info('NAND scanned', { records: scan.byAddress.size, problems: scan.problems.length });
    rebuildMaps(repair, scan);
    await rebuildChunks(repair, scan, nand);
    const ops = buildStore(repair, scan, nand);
    await writeStore(path.join(dataDir, 'meta.repair'), ops);
    logger.info('new metadata written', { ops: ops.length });
  } finally {
    await nand.close();
  }
  const damagedCopy = swapDirectories(dataDir);
  const audit = await verify(dataDir, keyFileBytes);
  logger.info('repaired array audited', { ok: audit.ok, auditMs: audit.durationMs });
  return report(repair, dataDir, damagedCopy, audit, Number(process.hrtime.bigint() - started) / 1e6);
}

// ---- Catalog and superblock -----------------------------------------------------------------

function catalogFrom(salvage: Salvage, dataDir: string): Catalog {
  const superLevel = salvage.sublevels.get('super')!;
  const copy = readCatalogCopy(dataDir);
  const formatValue = superLevel.values.get(FORMAT_KEY.toString('hex'))?.value;
  const format = formatValue !== undefined ? (JSON.parse(formatValue.toString()) as FormatRecord) : copy?.format;
  if (format === undefined) {
    throw StorageError.corrupt(`the format record (the array's secret, which every NAND record is checked with) is lost and ${path.join(dataDir, 'catalog.json')} does not exist: nothing can be verified, so nothing can be repaired`);
  }
  if (format.formatVersion !== FORMAT_VERSION) throw StorageError.notSupported(`format version ${format.formatVersion}; this pstorage repairs version ${FORMAT_VERSION}`);
  const lostCatalog =
    salvage.logDamaged.length > 0 ||
    salvage.sublevels.get('volumes')!.lost.length > 0 ||
    salvage.sublevels.get('snapshots')!.lost.length > 0 ||
    (superLevel.values.get(LAYERS_KEY.toString('hex')) === undefined && mayBeLost(superLevel, LAYERS_KEY));
  if (lostCatalog) {
    if (copy === null) {
      // Without the layer parents a volume's snapshots and origin cannot be found, and reading
      // its top layer alone would serve their blocks as zeros.
      throw StorageError.corrupt(`volume, snapshot or layer records are damaged and ${path.join(dataDir, 'catalog.json')} does not exist (it is written by every open since pstorage learned repair): the volumes cannot be found`);
    }
    return { format, layers: new Map(copy.layers), volumes: copy.volumes, snapshots: copy.snapshots, nextVolumeId: copy.nextVolumeId };
  }
  const layersValue = superLevel.values.get(LAYERS_KEY.toString('hex'))?.value;
  const layers = new Map<number, number>(layersValue === undefined ? [] : (JSON.parse(layersValue.toString()) as Array<[number, number]>));
  const volumes = [...salvage.sublevels.get('volumes')!.values.values()].map(({ value }) => JSON.parse(value.toString()) as VolumeRecord);
  const snapshots = [...salvage.sublevels.get('snapshots')!.values.values()].map(({ value }) => JSON.parse(value.toString()) as SnapshotRecord);
  for (const volume of volumes) if (!layers.has(volume.topLayerId)) layers.set(volume.topLayerId, 0);
  return { format, layers, volumes, snapshots, nextVolumeId: copy?.nextVolumeId ?? 1 };
}

/**
 * `unlockArray` of the salvaged format record. If that record came from the catalog copy in the
 * middle of a key rotation (key-rotation.ts), the copy holds the old record beside the new one, and
 * either key file opens it.
 */
function unlockForRepair(format: FormatRecord, keyFileBytes: Buffer | undefined, dataDir: string): ArrayKeys {
  try {
    return unlockArray(format, keyFileBytes, dataDir);
  } catch (error) {
    if (format.previousEncryption === undefined || keyFileBytes === undefined) throw error;
    try {
      return unlockArray({ ...format, encryption: format.previousEncryption }, keyFileBytes, dataDir);
    } catch {
      throw error;
    }
  }
}

function stateFrom(salvage: Salvage): StateRecord | null {
  const value = salvage.sublevels.get('super')!.values.get(STATE_KEY.toString('hex'))?.value;
  return value === undefined ? null : (JSON.parse(value.toString()) as StateRecord);
}

function checkGeometry(format: FormatRecord, nand: FileNand): void {
  const a = format.geometry;
  const b = nand.geometry;
  if (a.pageBytes !== b.pageBytes || a.pagesPerEraseBlock !== b.pagesPerEraseBlock || a.eraseBlockCount !== b.eraseBlockCount) {
    throw StorageError.corrupt(`the format record's NAND geometry (${JSON.stringify(a)}) is not the image's (${JSON.stringify(b)})`);
  }
}

// ---- NAND -----------------------------------------------------------------------------------

/** Every intact record of every erase block, from the page headers and record headers alone. */
async function scanNand(nand: FileNand, key: bigint): Promise<NandScan> {
  const { eraseBlockCount, pagesPerEraseBlock, pageBytes } = nand.geometry;
  const ftl = new Ftl(nand, defaultFtlOptions(eraseBlockCount), silentLogger, 1, key);
  const scan: NandScan = { byChunk: new Map(), byAddress: new Map(), sequence: new Uint32Array(eraseBlockCount), pagesWritten: new Uint32Array(eraseBlockCount), problems: [], maxChunkId: 0 };
  for (let block = 0; block < eraseBlockCount; block++) {
    // Most blocks of a young array are erased: one page says so.
    const first = checkPage(nand.readPagesSync(block, 0, 1), 0);
    if (!first.ok) {
      if (first.reason !== 'erased') scan.problems.push(`erase block ${block} page 0: ${first.reason}`);
      continue;
    }
    const sequence = first.header.sequence;
    const pages = nand.readPagesSync(block, 0, pagesPerEraseBlock);
    let written = 0;
    while (written < pagesPerEraseBlock) {
      const check = checkPage(pages.subarray(written * pageBytes, (written + 1) * pageBytes), written);
      if (!check.ok || check.header.sequence !== sequence) break;
      written += 1;
    }
    scan.sequence[block] = sequence;
    scan.pagesWritten[block] = written;
    ftl.table.sequence[block] = sequence;
    ftl.table.writtenBytes[block] = written * ftl.payloadBytesPerPage;
    const parsed = await ftl.parseBlock(block);
    scan.problems.push(...parsed.problems);
    for (const record of parsed.records) {
      const found: FoundRecord = { chunkId: record.chunkId, block, offsetBytes: record.offsetBytes, storedBytes: record.payload.length, sequence, hash: xxh64(record.payload, 0n) };
      scan.byAddress.set(addressKey(block, record.offsetBytes), found);
      const copies = scan.byChunk.get(record.chunkId);
      if (copies === undefined) scan.byChunk.set(record.chunkId, [found]);
      else copies.push(found);
      scan.maxChunkId = Math.max(scan.maxChunkId, record.chunkId);
    }
  }
  return scan;
}

function addressKey(block: number, offsetBytes: number): number {
  return block * 0x1_0000_0000 + offsetBytes;
}

// ---- Maps and journal -----------------------------------------------------------------------

/** Largest size of any volume or snapshot whose chain passes through each layer. */
function layerExtents(catalog: Catalog): Map<number, number> {
  const extents = new Map<number, number>();
  const note = (top: number, sizeBytes: number) => {
    for (const layer of chainOf(catalog, top)) extents.set(layer, Math.max(extents.get(layer) ?? 0, sizeBytes));
  };
  for (const volume of catalog.volumes) note(volume.topLayerId, volume.sizeBytes);
  for (const snapshot of catalog.snapshots) note(snapshot.layerId, snapshot.sizeBytes);
  return extents;
}

function chainOf(catalog: Catalog, top: number): number[] {
  const chain: number[] = [];
  for (let layer = top; layer !== 0 && chain.length < 100_000; layer = catalog.layers.get(layer) ?? 0) chain.push(layer);
  return chain;
}

/**
 * The map pages that survive; `lost` entries where a page may have been lost; the journal
 * replayed over them (and over the chunk pages).
 */
function rebuildMaps(repair: Repair, scan: NandScan): void {
  const { catalog } = repair;
  const extents = layerExtents(catalog);
  const mapLevel = repair.sub('map');
  let orphanPages = 0;
  for (const { key, value } of mapLevel.values.values()) {
    const layerId = key.readUInt32BE(0);
    const pageIndex = Number(key.readBigUInt64BE(4));
    if (!extents.has(layerId) || value.length !== MAP_PAGE_VALUE_BYTES) {
      orphanPages += 1;
      continue;
    }
    repair.maps.set(mapCacheId(layerId, pageIndex), MapPage.decode(value));
  }
  if (orphanPages > 0) repair.notes.push(`${orphanPages} map page(s) of layers no volume or snapshot uses were dropped`);
  for (const { key, value } of repair.sub('chunks').values.values()) {
    if (value.length === CHUNK_PAGE_VALUE_BYTES) repair.chunkPages.set(decodeU64Key(key), ChunkPage.decode(value));
  }
  markLostChunkPages(repair, scan);
  const journalComplete = checkJournal(repair);
  if (!journalComplete || repair.salvage.logDamaged.length > 0) {
    repair.everythingLost = true;
    for (const [layerId, sizeBytes] of extents) for (let pageIndex = 0; pageIndex * LBAS_PER_MAP_PAGE * LBA_BYTES < sizeBytes; pageIndex++) markPageLost(repair, layerId, pageIndex, sizeBytes, true);
    return;
  }
  let lostPages = 0;
  for (const [layerId, sizeBytes] of extents) {
    const pageCount = Math.ceil(sizeBytes / (LBAS_PER_MAP_PAGE * LBA_BYTES));
    for (const range of mapLevel.lost) {
      for (let pageIndex = firstPageIn(layerId, pageCount, range); pageIndex < pageCount && inLostRange(volumeMapKey(layerId, pageIndex), range); pageIndex++) {
        if (repair.maps.has(mapCacheId(layerId, pageIndex))) continue; // a newer version survived
        markPageLost(repair, layerId, pageIndex, sizeBytes, false);
        lostPages += 1;
      }
    }
  }
  if (lostPages > 0) repair.notes.push(`${lostPages} map page(s) were in damaged table blocks`);
  replayJournal(repair, extents);
}

/** The first page index of a layer whose key is past the range's lower bound (binary search). */
function firstPageIn(layerId: number, pageCount: number, range: { gt?: Buffer }): number {
  if (range.gt === undefined) return 0;
  let low = 0;
  let high = pageCount;
  while (low < high) {
    const middle = Math.floor((low + high) / 2);
    if (Buffer.compare(volumeMapKey(layerId, middle), range.gt) <= 0) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** Every block of a map page (within the layer's extent) becomes `lost`. */
function markPageLost(repair: Repair, layerId: number, pageIndex: number, sizeBytes: number, overwrite: boolean): void {
  const id = mapCacheId(layerId, pageIndex);
  const page = overwrite ? new MapPage() : (repair.maps.get(id) ?? new MapPage());
  const slots = Math.min(LBAS_PER_MAP_PAGE, Math.ceil(sizeBytes / LBA_BYTES) - pageIndex * LBAS_PER_MAP_PAGE);
  for (let slot = 0; slot < slots; slot++) page.set(slot, EntryKind.Lost, 0, 0);
  repair.maps.set(id, page);
}

/** Chunk pages in a damaged key range that did not survive: rebuilt from NAND alone. */
function markLostChunkPages(repair: Repair, scan: NandScan): void {
  const chunkLevel = repair.sub('chunks');
  if (chunkLevel.lost.length === 0) return;
  const lastPage = pageOf(Math.max(scan.maxChunkId, repair.state?.nextChunkId ?? 0));
  for (let pageIndex = 0; pageIndex <= lastPage; pageIndex++) {
    if (!repair.chunkPages.has(pageIndex) && mayBeLost(chunkLevel, u64Key(pageIndex))) repair.lostChunkPages.add(pageIndex);
  }
  if (repair.lostChunkPages.size > 0) repair.notes.push(`${repair.lostChunkPages.size} chunk-table page(s) were in damaged table blocks`);
}

/**
 * True when every journal value the superblock says is live survived (without the superblock:
 * when none of the journal's keys is in a damaged range and the values found are contiguous).
 */
function checkJournal(repair: Repair): boolean {
  const journal = repair.sub('journal');
  const seqs = [...journal.values.values()].map(({ key }) => decodeU64Key(key)).sort((a, b) => a - b);
  repair.maxJournalSeq = seqs.length > 0 ? seqs[seqs.length - 1]! : 0;
  const state = repair.state;
  const from = state?.journalTrimSeq ?? seqs[0] ?? 1;
  const to = state?.journalNextSeq ?? repair.maxJournalSeq + 1;
  if (state === null && journal.lost.length > 0) {
    repair.notes.push('the journal had damaged blocks and the superblock state is lost: the live journal range cannot be known');
    return false;
  }
  const present = new Set(seqs);
  for (let seq = from; seq < to; seq++) {
    if (!present.has(seq)) {
      repair.notes.push(`journal value ${seq} (of the live range ${from}..${to - 1}) is lost: the changes it held cannot be located`);
      return false;
    }
  }
  return true;
}

/** Applies the live journal values to the surviving pages, as `FlashArray.replayJournal` does. */
function replayJournal(repair: Repair, extents: Map<number, number>): void {
  const journal = repair.sub('journal');
  const from = repair.state?.journalTrimSeq ?? 0;
  // Past the committed next seq: pieces written ahead of a commit that never landed (flash-array.ts).
  const to = repair.state?.journalNextSeq ?? Infinity;
  const values = [...journal.values.values()].map(({ key, value }) => ({ seq: decodeU64Key(key), value })).filter(({ seq }) => seq >= from && seq < to);
  values.sort((a, b) => a.seq - b.seq);
  for (const { seq, value } of values) {
    decodeJournalValue(value, {
      map: (layerId, lba, kind, high, low) => {
        if (!extents.has(layerId)) return;
        const id = mapCacheId(layerId, Math.floor(lba / LBAS_PER_MAP_PAGE));
        let page = repair.maps.get(id);
        if (page === undefined) repair.maps.set(id, (page = new MapPage()));
        page.set(lba % LBAS_PER_MAP_PAGE, kind as EntryKind, high, low);
      },
      chunkNew: (chunkId, block, offsetBytes, storedBytes, codec, source, fingerprintAt, fingerprintBytes) =>
        chunkPageFor(repair, chunkId)?.setEntry(chunkId % CHUNKS_PER_PAGE, block, offsetBytes, storedBytes, 1, codec as Codec, fingerprintBytes === 0 ? null : source, fingerprintAt, fingerprintBytes),
      chunkRefs: (chunkId, refcount) => chunkPageFor(repair, chunkId)?.setRefcount(chunkId % CHUNKS_PER_PAGE, refcount),
      chunkMove: (chunkId, block, offsetBytes) => {
        const page = chunkPageFor(repair, chunkId);
        if (page === undefined) return;
        page.block[chunkId % CHUNKS_PER_PAGE] = block;
        page.offset[chunkId % CHUNKS_PER_PAGE] = offsetBytes;
      },
    }, `journal value ${seq}`);
  }
  if (values.length > 0) repair.rebuilt.push(`journal: ${values.length} value(s) replayed into the maps and chunk table`);
}

/** The chunk page to replay into, or undefined for a lost one (rebuilt from NAND instead). */
function chunkPageFor(repair: Repair, chunkId: number): ChunkPage | undefined {
  const pageIndex = pageOf(chunkId);
  if (repair.lostChunkPages.has(pageIndex)) return undefined;
  let page = repair.chunkPages.get(pageIndex);
  if (page === undefined) repair.chunkPages.set(pageIndex, (page = new ChunkPage()));
  return page;
}

// ---- Chunks ---------------------------------------------------------------------------------

/** Map references per chunk id. */
function countReferences(repair: Repair): Map<number, number> {
  const references = new Map<number, number>();
  for (const page of repair.maps.values()) {
    for (let slot = 0; slot < LBAS_PER_MAP_PAGE; slot++) {
      if (page.kinds[slot] !== EntryKind.Chunk) continue;
      const chunkId = page.chunkId(slot);
      references.set(chunkId, (references.get(chunkId) ?? 0) + 1);
    }
  }
  return references;
}

/**
 * Gives every referenced chunk an entry that verifies on NAND (or declares it lost, and its
 * blocks with it), sets refcounts to the references, and frees what nothing references.
 */
async function rebuildChunks(repair: Repair, scan: NandScan, nand: FileNand): Promise<void> {
  const references = countReferences(repair);
  const lost = new Set<number>();
  const fromNand: FoundRecord[] = [];
  for (const chunkId of references.keys()) {
    if (entryVerifies(repair, scan, chunkId)) continue;
    const copies = scan.byChunk.get(chunkId) ?? [];
    if (copies.length === 0 || copies.some((copy) => copy.hash !== copies[0]!.hash || copy.storedBytes !== copies[0]!.storedBytes)) {
      lost.add(chunkId);
      continue;
    }
    fromNand.push(copies.reduce((best, copy) => (copy.sequence > best.sequence ? copy : best)));
  }
  await placeFromNand(repair, nand, fromNand, lost);
  let freed = 0;
  for (const [pageIndex, page] of repair.chunkPages) {
    for (let slot = 0; slot < CHUNKS_PER_PAGE; slot++) {
      const chunkId = pageIndex * CHUNKS_PER_PAGE + slot;
      const count = lost.has(chunkId) ? 0 : (references.get(chunkId) ?? 0);
      if (page.refcount[slot] !== 0 && count === 0) freed += 1;
      if (page.refcount[slot] !== count) page.setRefcount(slot, count);
    }
  }
  if (lost.size > 0) markChunksLost(repair, lost);
  repair.lostChunks = lost.size;
  repair.rebuilt.push(`chunk table: ${references.size - lost.size} referenced chunk(s) verified on NAND (${fromNand.length} rebuilt from NAND records), refcounts recounted, ${freed} unreferenced chunk(s) freed`);
}

/** True when the chunk's entry survived and its record is on NAND where the entry says. */
function entryVerifies(repair: Repair, scan: NandScan, chunkId: number): boolean {
  const page = repair.chunkPages.get(pageOf(chunkId));
  const slot = chunkId % CHUNKS_PER_PAGE;
  if (page === undefined || page.refcount[slot] === 0) return false;
  const found = scan.byAddress.get(addressKey(page.block[slot]!, page.offset[slot]!));
  return found !== undefined && found.chunkId === chunkId && found.storedBytes === page.stored[slot];
}

/** Entries for chunks found only on NAND: codec from the stored bytes, fingerprint recomputed. */
async function placeFromNand(repair: Repair, nand: FileNand, records: FoundRecord[], lost: Set<number>): Promise<void> {
  if (records.length === 0) return;
  const { fingerprintKey, recordSeed, cipher } = repair.keys;
  const fingerprint = keyedFingerprint(fingerprintKey);
  // With the cipher, the FTL hands back each payload decrypted (still compressed).
  const ftl = new Ftl(nand, defaultFtlOptions(nand.geometry.eraseBlockCount), silentLogger, 1, recordSeed, cipher);
  for (const record of records) {
    const [payload] = await ftl.readRecords([{ address: { block: record.block, offsetBytes: record.offsetBytes }, chunkId: record.chunkId, storedBytes: record.storedBytes }]);
    const codec = record.storedBytes === LBA_BYTES ? Codec.Raw : payload!.readUInt32LE(0) === ZSTD_MAGIC ? Codec.Zstd : Codec.Lz4;
    let block: Buffer;
    try {
      block = decompressBlock(payload!, codec, LBA_BYTES);
    } catch {
      lost.add(record.chunkId);
      continue;
    }
    const pageIndex = pageOf(record.chunkId);
    let page = repair.chunkPages.get(pageIndex);
    if (page === undefined) repair.chunkPages.set(pageIndex, (page = new ChunkPage()));
    page.setEntry(record.chunkId % CHUNKS_PER_PAGE, record.block, record.offsetBytes, record.storedBytes, 1, codec, fingerprint(block));
  }
}

/** Every map entry naming a lost chunk becomes `lost`. */
function markChunksLost(repair: Repair, lost: Set<number>): void {
  for (const page of repair.maps.values()) {
    for (let slot = 0; slot < LBAS_PER_MAP_PAGE; slot++) {
      if (page.kinds[slot] === EntryKind.Chunk && lost.has(page.chunkId(slot))) page.set(slot, EntryKind.Lost, 0, 0);
    }
  }
}

// ---- The new store --------------------------------------------------------------------------

/** Every operation of the repaired LevelDB. */
function buildStore(repair: Repair, scan: NandScan, nand: FileNand): MetaOp[] {
  const ops: MetaOp[] = [];
  const put = (sublevel: Sublevel, key: Buffer, value: Buffer) => ops.push({ type: 'put', sublevel, key, value });
  const { catalog } = repair;
  for (const [id, page] of repair.maps) {
    const value = page.encode();
    if (value !== null) put('map', volumeMapKey(Math.floor(id / 0x1_0000_0000), id % 0x1_0000_0000), value);
  }
  const bloom = new BloomFilter(bloomFilterBytes(nand));
  let liveChunks = 0;
  let liveStoredBytes = 0;
  let fingerprints = 0;
  const validBytes = new Float64Array(nand.geometry.eraseBlockCount);
  for (const [pageIndex, page] of repair.chunkPages) {
    const value = page.encode();
    if (value === null) continue;
    put('chunks', u64Key(pageIndex), value);
    for (let slot = 0; slot < CHUNKS_PER_PAGE; slot++) {
      if (page.refcount[slot] === 0) continue;
      liveChunks += 1;
      liveStoredBytes += page.stored[slot]!;
      validBytes[page.block[slot]!] += LogStream.recordBytes(page.stored[slot]!);
      const fingerprint = page.fingerprint(slot);
      if (fingerprint === null) continue;
      put('fingerprints', fingerprint, u64Key(pageIndex * CHUNKS_PER_PAGE + slot));
      bloom.add(fingerprint);
      fingerprints += 1;
    }
  }
  bloom.capture(ops, true);
  bloom.captureRecord(ops); // complete: the server may trust it (unless its budget wants another size)
  repair.rebuilt.push(`dedup index: ${fingerprints} fingerprint(s) from the chunk table, and its Bloom filter`);
  putSummaries(put, scan, nand, validBytes);
  repair.rebuilt.push(`erase-block summaries: ${nand.geometry.eraseBlockCount} block(s) from page headers and the chunk table`);
  const counts = countMapped(repair);
  for (const volume of catalog.volumes) put('volumes', u32Key(volume.id), Buffer.from(JSON.stringify({ ...volume, ...counts.get(`v${volume.id}`) })));
  for (const snapshot of catalog.snapshots) put('snapshots', u32Key(snapshot.id), Buffer.from(JSON.stringify({ ...snapshot, ...counts.get(`s${snapshot.id}`) })));
  put('super', FORMAT_KEY, Buffer.from(JSON.stringify(catalog.format)));
  put('super', LAYERS_KEY, Buffer.from(JSON.stringify([...catalog.layers])));
  put('super', STATE_KEY, Buffer.from(JSON.stringify(stateRecord(repair, scan, { liveChunks, liveStoredBytes }))));
  return ops;
}

function putSummaries(put: (sublevel: Sublevel, key: Buffer, value: Buffer) => void, scan: NandScan, nand: FileNand, validBytes: Float64Array): void {
  const { eraseBlockCount } = nand.geometry;
  const payloadBytes = nand.geometry.pageBytes - PAGE_HEADER_BYTES;
  for (let first = 0; first < eraseBlockCount; first += SUMMARIES_PER_PAGE) {
    const count = Math.min(SUMMARIES_PER_PAGE, eraseBlockCount - first);
    const value = Buffer.alloc(count * 13);
    for (let i = 0; i < count; i++) {
      const block = first + i;
      const written = scan.pagesWritten[block]!;
      // A block with pages of its current use is full (recovery seals open blocks anyway); a
      // retired one the FTL finds bad in the spare area and relocates whatever it still holds.
      value[i] = written > 0 || validBytes[block]! > 0 ? BlockState.Full : BlockState.Free;
      value.writeUInt32LE(scan.sequence[block]!, count + i * 4);
      value.writeUInt32LE(validBytes[block]!, count * 5 + i * 4);
      value.writeUInt32LE(written * payloadBytes, count * 9 + i * 4);
    }
    put('erase-blocks', u32Key(first / SUMMARIES_PER_PAGE), value);
  }
}

/** Mapped and pattern block counts of every volume ("v" + id) and snapshot ("s" + id). */
function countMapped(repair: Repair): Map<string, { mappedBlocks: number; patternBlocks: number }> {
  const counts = new Map<string, { mappedBlocks: number; patternBlocks: number }>();
  for (const volume of repair.catalog.volumes) counts.set(`v${volume.id}`, countChain(repair, volume.topLayerId, volume.sizeBytes, null));
  for (const snapshot of repair.catalog.snapshots) counts.set(`s${snapshot.id}`, countChain(repair, snapshot.layerId, snapshot.sizeBytes, null));
  return counts;
}

/** Resolves a chain block by block; `onLost` hears every block that resolves to `lost`. */
function countChain(repair: Repair, top: number, sizeBytes: number, onLost: ((lba: number) => void) | null): { mappedBlocks: number; patternBlocks: number } {
  const chain = chainOf(repair.catalog, top);
  const blocks = Math.ceil(sizeBytes / LBA_BYTES);
  let mappedBlocks = 0;
  let patternBlocks = 0;
  for (let pageIndex = 0; pageIndex * LBAS_PER_MAP_PAGE < blocks; pageIndex++) {
    const pages = chain.map((layer) => repair.maps.get(mapCacheId(layer, pageIndex))).filter((page): page is MapPage => page !== undefined);
    if (pages.length === 0) continue;
    for (let slot = 0; slot < LBAS_PER_MAP_PAGE && pageIndex * LBAS_PER_MAP_PAGE + slot < blocks; slot++) {
      const kind = pages.find((page) => page.kinds[slot] !== EntryKind.Absent)?.kinds[slot] ?? EntryKind.Absent;
      if (kind === EntryKind.Chunk || kind === EntryKind.Pattern || kind === EntryKind.Lost) mappedBlocks += 1;
      if (kind === EntryKind.Pattern) patternBlocks += 1;
      if (kind === EntryKind.Lost) onLost?.(pageIndex * LBAS_PER_MAP_PAGE + slot);
    }
  }
  return { mappedBlocks, patternBlocks };
}

function stateRecord(repair: Repair, scan: NandScan, live: { liveChunks: number; liveStoredBytes: number }): StateRecord {
  const { catalog, state } = repair;
  let maxChunkId = scan.maxChunkId;
  for (const [pageIndex, page] of repair.chunkPages) if (page.liveCount > 0) maxChunkId = Math.max(maxChunkId, pageIndex * CHUNKS_PER_PAGE + CHUNKS_PER_PAGE - 1);
  let maxId = catalog.nextVolumeId - 1;
  for (const [layer, parent] of catalog.layers) maxId = Math.max(maxId, layer, parent);
  for (const record of [...catalog.volumes, ...catalog.snapshots]) maxId = Math.max(maxId, record.id);
  let maxSequence = 0;
  for (const sequence of scan.sequence) maxSequence = Math.max(maxSequence, sequence);
  const journalSeq = Math.max(state?.journalNextSeq ?? 1, repair.maxJournalSeq + 1);
  const dedupHits = state?.reduction?.dedupHits ?? catalog.volumes.reduce((sum, volume) => sum + (volume.dedupHits ?? 0), 0);
  return {
    nextChunkId: Math.max(state?.nextChunkId ?? 1, maxChunkId + 1),
    nextSequence: Math.max(state?.nextSequence ?? 1, maxSequence + 1),
    nextVolumeId: Math.max(state?.nextVolumeId ?? 1, maxId + 1),
    journalTrimSeq: journalSeq,
    journalNextSeq: journalSeq,
    counters: state?.counters ?? { hostBytesWritten: 0, nandBytesWrittenBefore: 0 },
    reduction: { dedupHits, ...live },
  };
}

async function writeStore(directory: string, ops: MetaOp[]): Promise<void> {
  fs.rmSync(directory, { recursive: true, force: true });
  const store = await LevelMetaStore.open(directory);
  try {
    for (let at = 0; at < ops.length; at += WRITE_BATCH_OPS) await store.batch(ops.slice(at, at + WRITE_BATCH_OPS), { sync: false });
    await store.batch([], { sync: true });
  } finally {
    await store.close();
  }
}

/** meta → meta.damaged-TIME, meta.repair → meta; returns where the damaged store went. */
function swapDirectories(dataDir: string): string {
  const damaged = path.join(dataDir, `meta.damaged-${new Date().toISOString().replace(/[:.]/g, '-')}`);
  fs.renameSync(path.join(dataDir, 'meta'), damaged);
  fs.renameSync(path.join(dataDir, 'meta.repair'), path.join(dataDir, 'meta'));
  const directory = fs.openSync(dataDir, 'r');
  try {
    fs.fsyncSync(directory);
  } finally {
    fs.closeSync(directory);
  }
  return damaged;
}

/** Opens the repaired array the normal way and audits it. */
async function verify(dataDir: string, keyFileBytes: Buffer | undefined): Promise<AuditReport> {
  const { array } = await FlashArray.open(dataDir, silentLogger, { createIfMissing: false, reductionWorkers: 0, keyFileBytes });
  try {
    return await auditArray(array);
  } finally {
    await array.close();
  }
}

// ---- Report ---------------------------------------------------------------------------------

function report(repair: Repair, dataDir: string, damagedCopy: string, audit: AuditReport, durationMs: number): RepairReport {
  const { salvage, catalog } = repair;
  const exports: RepairReport['lost']['exports'] = [];
  const add = (name: string, top: number, sizeBytes: number) => {
    const lbas: number[] = [];
    countChain(repair, top, sizeBytes, (lba) => lbas.push(lba));
    if (lbas.length > 0) exports.push({ name, ranges: rangesOf(lbas), lostBytes: lbas.length * LBA_BYTES });
  };
  for (const volume of catalog.volumes) add(volume.name, volume.topLayerId, volume.sizeBytes);
  for (const snapshot of catalog.snapshots) {
    const volume = catalog.volumes.find((candidate) => candidate.id === snapshot.volumeId);
    add(`${volume?.name ?? `volume ${snapshot.volumeId}`}@${snapshot.name}`, snapshot.layerId, snapshot.sizeBytes);
  }
  const damagedSublevels = [...salvage.sublevels].filter(([, sub]) => sub.lost.length > 0).map(([name]) => name);
  const notes = [...repair.notes];
  if (repair.everythingLost) notes.push('every block of every volume and snapshot was marked lost: restore from a backup');
  return {
    ok: audit.ok,
    dataDir,
    damagedCopy,
    salvage: { files: salvage.files.tables + salvage.files.logs, bytes: salvage.files.bytes, versions: salvage.versions, damagedBlocks: salvage.damagedBlocks, logDamage: salvage.logDamaged, manifestDamage: salvage.manifestDamage, suspectKeys: salvage.suspectKeys },
    damagedSublevels,
    rebuilt: repair.rebuilt,
    lost: { exports, chunks: repair.lostChunks, counters: repair.state === null },
    notes,
    audit: { ok: audit.ok, problems: audit.problems, mappedBlocks: audit.mappedBlocks, liveChunks: audit.liveChunks, checkedRecords: audit.checkedRecords },
    durationMs: Math.round(durationMs),
  };
}

/** Sorted logical blocks → merged byte ranges. */
function rangesOf(lbas: number[]): ByteRange[] {
  const ranges: ByteRange[] = [];
  for (const lba of lbas) {
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last.offsetBytes + last.lengthBytes === lba * LBA_BYTES) last.lengthBytes += LBA_BYTES;
    else ranges.push({ offsetBytes: lba * LBA_BYTES, lengthBytes: LBA_BYTES });
  }
  return ranges;
}
