/**
 * The data directory of the pre-engine array: a lock, a small JSON catalog of volumes, and one
 * sparse file per volume (see sparse-file-volume.ts).
 *
 * Layout: `DIR/LOCK` (an exclusive advisory lock held while the array is open, so two servers can
 * never serve one directory), `DIR/pstorage.json` (format version and the volume list, replaced
 * atomically by write-to-temp + fsync + rename), `DIR/volumes/NAME.img`.
 *
 * A missing or empty directory is initialised with one thin volume named `default`, which is also
 * the export behind the empty export name.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { tryLock } from 'fs-native-extensions';
import type { ExportCatalog, ExportEntry } from '../common/block-device.js';
import { StorageError, fromSystemError } from '../common/errors.js';
import { GiB } from '../common/size.js';
import { SparseFileVolume } from './sparse-file-volume.js';

export const DEFAULT_VOLUME_NAME = 'default';
export const DEFAULT_VOLUME_BYTES = 16 * GiB;
const FORMAT_VERSION = 1;

interface VolumeRecord {
  name: string;
  sizeBytes: number;
  createdAt: string;
}

interface CatalogFile {
  formatVersion: number;
  volumes: VolumeRecord[];
}

export class SparseFileArray implements ExportCatalog {
  private readonly volumes = new Map<string, { record: VolumeRecord; device: SparseFileVolume }>();

  private constructor(
    readonly dataDir: string,
    private readonly lockFd: number,
    private catalog: CatalogFile,
  ) {}

  /** Opens (creating if missing or empty) the data directory and every volume in it. */
  static async open(dataDir: string, options: { defaultVolumeBytes?: number } = {}): Promise<{ array: SparseFileArray; created: boolean }> {
    const lockFd = lockDataDir(dataDir);
    const catalogPath = path.join(dataDir, 'pstorage.json');
    const created = !fs.existsSync(catalogPath);
    const catalog: CatalogFile = created ? { formatVersion: FORMAT_VERSION, volumes: [] } : readCatalog(catalogPath);
    const array = new SparseFileArray(dataDir, lockFd, catalog);
    await fsp.mkdir(path.join(dataDir, 'volumes'), { recursive: true });
    for (const record of catalog.volumes) {
      const device = await SparseFileVolume.open(array.volumePath(record.name), record.sizeBytes);
      array.volumes.set(record.name, { record, device });
    }
    if (created) await array.createVolume(DEFAULT_VOLUME_NAME, options.defaultVolumeBytes ?? DEFAULT_VOLUME_BYTES);
    return { array, created };
  }

  async createVolume(name: string, sizeBytes: number): Promise<void> {
    if (this.volumes.has(name)) throw StorageError.alreadyExists(`volume ${name} already exists`);
    const device = await SparseFileVolume.create(this.volumePath(name), sizeBytes);
    const record = { name, sizeBytes, createdAt: new Date().toISOString() };
    this.volumes.set(name, { record, device });
    this.catalog.volumes.push(record);
    await this.saveCatalog();
  }

  list(): Array<{ name: string; description: string }> {
    return [...this.volumes.values()].map(({ record }) => ({ name: record.name, description: describe(record) }));
  }

  lookup(name: string): ExportEntry | undefined {
    const entry = this.volumes.get(name === '' ? DEFAULT_VOLUME_NAME : name);
    if (entry === undefined) return undefined;
    return { name: entry.record.name, description: describe(entry.record), device: entry.device };
  }

  async flush(): Promise<void> {
    await Promise.all([...this.volumes.values()].map(({ device }) => device.flush()));
  }

  async close(): Promise<void> {
    await Promise.all([...this.volumes.values()].map(({ device }) => device.close()));
    fs.closeSync(this.lockFd);
  }

  private volumePath(name: string): string {
    return path.join(this.dataDir, 'volumes', `${name}.img`);
  }

  private async saveCatalog(): Promise<void> {
    const target = path.join(this.dataDir, 'pstorage.json');
    const temporary = `${target}.tmp`;
    try {
      const handle = await fsp.open(temporary, 'w');
      await handle.writeFile(JSON.stringify(this.catalog, null, 2) + '\n');
      await handle.sync();
      await handle.close();
      await fsp.rename(temporary, target);
      const dir = await fsp.open(this.dataDir, 'r');
      await dir.sync();
      await dir.close();
    } catch (error) {
      throw fromSystemError(error, `writing ${target}`);
    }
  }
}

function describe(record: VolumeRecord): string {
  return `pstorage thin volume, ${record.sizeBytes} bytes`;
}

function lockDataDir(dataDir: string): number {
  try {
    fs.mkdirSync(dataDir, { recursive: true });
  } catch (error) {
    throw fromSystemError(error, `creating data directory ${dataDir}`);
  }
  const fd = fs.openSync(path.join(dataDir, 'LOCK'), 'a+');
  if (!tryLock(fd)) {
    fs.closeSync(fd);
    throw StorageError.busy(`data directory ${dataDir} is in use by another pstorage process; stop it or choose another --data-dir`);
  }
  return fd;
}

function readCatalog(catalogPath: string): CatalogFile {
  let parsed: CatalogFile;
  try {
    parsed = JSON.parse(fs.readFileSync(catalogPath, 'utf8')) as CatalogFile;
  } catch (error) {
    throw StorageError.corrupt(`cannot read ${catalogPath}: ${(error as Error).message}`, error);
  }
  if (parsed.formatVersion !== FORMAT_VERSION || !Array.isArray(parsed.volumes)) {
    throw StorageError.corrupt(`${catalogPath} has format version ${parsed.formatVersion}; this pstorage reads version ${FORMAT_VERSION}`);
  }
  return parsed;
}
