/**
 * The catalog copy: the superblock's format record (NAND geometry and the array's secret) and the
 * volume catalog (volumes, snapshots, map-layer parents), kept in a small file beside LevelDB,
 * `DATA_DIR/catalog.json`, for `pstorage inspect repair` alone.
 *
 * Why: those records are tiny and sort next to each other in LevelDB ('snapshots', 'super',
 * 'volumes'), so one damaged 4 KiB table block loses all of them at once. Without the format
 * record no record checksum or fingerprint can be computed (they are keyed by the array's secret)
 * and nothing on NAND can be verified; without the catalog no volume can be found. Everything
 * else in LevelDB can be rebuilt from NAND or is reported lost block by block; these cannot.
 *
 * When it is written: at every open (so arrays made before it existed get one), and by every
 * commit that changes the catalog, before that commit's LevelDB batch. So after a crash the copy
 * is the catalog of the last commit or of the one being made (an operation in flight, whose
 * caller never saw it complete), never an older one: a snapshot taken just before a crash cannot
 * leave the copy naming a volume's previous top layer, which would read the snapshot's content as
 * the volume's. The file is replaced atomically (temporary file, fsync, rename, fsync of the
 * directory). Catalog changes are rare (volume and snapshot operations), so the fsyncs cost
 * nothing on the data path.
 *
 * Repair uses the copy only for what LevelDB lost; the counters in its volume records
 * (mapped blocks and so on) are recomputed from the maps, never trusted.
 *
 * Format (JSON): { copyVersion: 1, writtenAt, format: FormatRecord, nextVolumeId,
 * layers: [[id, parent]...], volumes: [VolumeRecord...], snapshots: [SnapshotRecord...] }.
 */
import fs from 'node:fs';
import path from 'node:path';
import { replaceFileDurably } from '../common/durable-file.js';
import { StorageError, fromSystemError } from '../common/errors.js';
import type { EncryptionRecord } from './array-key.js';
import type { NandGeometry } from '../nand/nand-device.js';
import type { SnapshotRecord, VolumeRecord } from './volume.js';

export const CATALOG_COPY_NAME = 'catalog.json';
const COPY_VERSION = 1;

/** The superblock's format record ('super' sublevel, key "format"). */
export interface FormatRecord {
  formatVersion: number;
  geometry: NandGeometry;
  createdAt: string;
  /** The fingerprint key, hex (see reduce/fingerprint.ts); empty for an encrypted array (derived from its DEK). */
  fingerprintKey: string;
  /** The wrapped data-encryption key of an encrypted array (array-key.ts); absent for a plain one. */
  encryption?: EncryptionRecord;
  /** In the catalog copy only, while a key rotation is in flight (key-rotation.ts): the record before it. */
  previousEncryption?: EncryptionRecord;
}

export interface CatalogCopy {
  copyVersion: number;
  writtenAt: string;
  format: FormatRecord;
  nextVolumeId: number;
  layers: Array<[number, number]>;
  volumes: VolumeRecord[];
  snapshots: SnapshotRecord[];
}

export function encodeCatalogCopy(copy: Omit<CatalogCopy, 'copyVersion' | 'writtenAt'>): Buffer {
  return Buffer.from(JSON.stringify({ copyVersion: COPY_VERSION, writtenAt: new Date().toISOString(), ...copy }));
}

export function decodeCatalogCopy(bytes: Buffer, where: string): CatalogCopy {
  let copy: CatalogCopy;
  try {
    copy = JSON.parse(bytes.toString('utf8')) as CatalogCopy;
  } catch (error) {
    throw StorageError.corrupt(`${where} is not valid JSON`, error);
  }
  const wellFormed =
    copy?.copyVersion === COPY_VERSION &&
    typeof copy.format?.fingerprintKey === 'string' &&
    Number.isSafeInteger(copy.nextVolumeId) &&
    Array.isArray(copy.layers) &&
    Array.isArray(copy.volumes) &&
    Array.isArray(copy.snapshots);
  if (!wellFormed) throw StorageError.corrupt(`${where} is not a pstorage catalog copy of version ${COPY_VERSION}`);
  return copy;
}

/** Replaces the copy in `dataDir` atomically and durably. */
export function writeCatalogCopy(dataDir: string, copy: Omit<CatalogCopy, 'copyVersion' | 'writtenAt'>): void {
  replaceFileDurably(dataDir, CATALOG_COPY_NAME, encodeCatalogCopy(copy), `the catalog copy ${path.join(dataDir, CATALOG_COPY_NAME)}`);
}

/** The copy in `dataDir`, or null when there is none. A damaged copy is CORRUPT. */
export function readCatalogCopy(dataDir: string): CatalogCopy | null {
  const file = path.join(dataDir, CATALOG_COPY_NAME);
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw fromSystemError(error, `reading the catalog copy ${file}`);
  }
  return decodeCatalogCopy(bytes, file);
}
