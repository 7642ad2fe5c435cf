/**
 * The control-plane operations, shared by the management API (a running server) and the CLI
 * (which calls them on an array it opened itself when no server runs), so both paths validate
 * input the same way and return the same JSON documents.
 *
 * Each operation takes the array and plain, untrusted input (a parsed JSON body or CLI words),
 * validates it, calls the engine (src/volume/snapshots.ts) and returns a JSON-ready document.
 * Nothing here is on the read/write path; names are validated by the engine.
 */
import type { IoStats, IoSummary } from '../server/io-stats.js';
import { StorageError } from '../common/errors.js';
import { parseSizeBytes } from '../common/size.js';
import type { BlockDevice } from '../common/block-device.js';
import { auditArray, type AuditReport } from '../volume/audit.js';
import { BlockState } from '../ftl/erase-block-table.js';
import { Analytics, type AnalyticsReport } from './analytics.js';
import type { FlashArray } from '../volume/flash-array.js';
import {
  cloneSnapshot,
  createSnapshot,
  deleteSnapshot,
  deleteVolume,
  diff,
  findSnapshot,
  findVolume,
  listSnapshots,
  parseSnapshotName,
  resizeVolume,
  restoreSnapshot,
  setVolumeAccess,
  type ChangedRange,
  type SnapshotInfo,
} from '../volume/snapshots.js';
import { LBA_BYTES, type SnapshotRecord, type Volume } from '../volume/volume.js';

export interface VolumeInfo {
  id: number;
  name: string;
  sizeBytes: number;
  logicalBytes: number;
  mappedBlocks: number;
  patternBlocks: number;
  hostBytesWritten: number;
  dedupHits: number;
  createdAt: string;
  origin: string | null;
  snapshots: string[];
  /** Identities allowed to attach it over NBD (TLS only); null: every client. */
  accessList: string[] | null;
}

export interface SnapshotDocument {
  volume: string;
  name: string;
  createdAt: string;
  sizeBytes: number;
  mappedBlocks: number;
  logicalBytes: number;
}

export interface DiffDocument {
  from: string;
  to: string;
  ranges: ChangedRange[];
  rangeCount: number;
  totalBytes: number;
}

/** A size given as a byte count (JSON number) or a string with a K/M/G/T suffix. */
export function sizeFrom(value: unknown, what = 'size'): number {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value <= 0) throw StorageError.invalidArgument(`${what} ${value} must be a positive whole number of bytes`);
    return value;
  }
  if (typeof value === 'string') {
    try {
      return parseSizeBytes(value);
    } catch (error) {
      throw StorageError.invalidArgument((error as Error).message, error);
    }
  }
  throw StorageError.invalidArgument(`${what} is missing: give a byte count or a size such as "10G"`);
}

export function stringFrom(body: unknown, key: string): string {
  const value = (body as Record<string, unknown> | undefined)?.[key];
  if (typeof value !== 'string' || value === '') throw StorageError.invalidArgument(`"${key}" is missing: give it as a non-empty string`);
  return value;
}

function booleanFrom(value: unknown): boolean {
  return value === true || value === 'true' || value === '1';
}

export function volumeInfo(array: FlashArray, volume: Volume): VolumeInfo {
  const record = volume.record;
  const snapshots = [...array.snapshots.values()].filter((snapshot) => snapshot.volumeId === record.id);
  return {
    id: record.id,
    name: record.name,
    sizeBytes: record.sizeBytes,
    logicalBytes: record.mappedBlocks * LBA_BYTES,
    mappedBlocks: record.mappedBlocks,
    patternBlocks: record.patternBlocks,
    hostBytesWritten: record.hostBytesWritten,
    dedupHits: record.dedupHits,
    createdAt: record.createdAt,
    origin: record.origin ?? null,
    snapshots: snapshots.sort((a, b) => a.id - b.id).map((snapshot) => snapshot.name),
    accessList: record.accessList === undefined ? null : [...record.accessList],
  };
}

function snapshotDocument(volume: string, record: SnapshotRecord): SnapshotDocument {
  return { volume, name: record.name, createdAt: record.createdAt, sizeBytes: record.sizeBytes, mappedBlocks: record.mappedBlocks, logicalBytes: record.mappedBlocks * LBA_BYTES };
}

export function listVolumes(array: FlashArray): VolumeInfo[] {
  return [...array.volumes.values()].sort((a, b) => a.record.name.localeCompare(b.record.name)).map((volume) => volumeInfo(array, volume));
}

export function getVolume(array: FlashArray, name: string): VolumeInfo {
  return volumeInfo(array, findVolume(array, name));
}

export async function createVolume(array: FlashArray, body: unknown): Promise<VolumeInfo> {
  const name = stringFrom(body, 'name');
  const sizeBytes = sizeFrom((body as Record<string, unknown>).size);
  return volumeInfo(array, await array.createVolume(name, sizeBytes));
}

export async function resize(array: FlashArray, name: string, body: unknown): Promise<VolumeInfo & { previousSizeBytes: number }> {
  const volume = findVolume(array, name);
  const previousSizeBytes = volume.record.sizeBytes;
  const fields = (body ?? {}) as Record<string, unknown>;
  await resizeVolume(array, name, sizeFrom(fields.size), { force: booleanFrom(fields.force) });
  return { ...volumeInfo(array, volume), previousSizeBytes };
}

/**
 * `PUT /api/v1/volumes/{name}/access` with `{ "identities": ["alice", "bob"] }` (an array, or one
 * comma-separated string); `null` identities (DELETE) clear the list.
 */
export async function access(array: FlashArray, name: string, body: unknown): Promise<VolumeInfo> {
  return volumeInfo(array, await setVolumeAccess(array, name, identitiesFrom(body)));
}

export async function clearAccess(array: FlashArray, name: string): Promise<VolumeInfo> {
  return volumeInfo(array, await setVolumeAccess(array, name, null));
}

function identitiesFrom(body: unknown): string[] {
  const value = (body as Record<string, unknown> | undefined)?.identities;
  if (typeof value === 'string') return value.split(',').map((identity) => identity.trim()).filter((identity) => identity !== '');
  if (Array.isArray(value) && value.every((identity) => typeof identity === 'string')) return value as string[];
  throw StorageError.invalidArgument('"identities" is missing: give an array of client identities (certificate common names or PSK usernames), such as ["alice", "bob"]');
}

export async function removeVolume(array: FlashArray, name: string, force: unknown): Promise<{ deleted: string; snapshotsDeleted: string[] }> {
  const info = getVolume(array, name);
  await deleteVolume(array, name, { force: booleanFrom(force) });
  return { deleted: name, snapshotsDeleted: info.snapshots };
}

export async function snapshots(array: FlashArray, volume?: string): Promise<SnapshotInfo[]> {
  return listSnapshots(array, volume);
}

export async function snapshot(array: FlashArray, volume: string, body: unknown): Promise<SnapshotDocument> {
  return snapshotDocument(volume, await createSnapshot(array, volume, stringFrom(body, 'name')));
}

export async function removeSnapshot(array: FlashArray, volume: string, name: string): Promise<{ deleted: string }> {
  await deleteSnapshot(array, volume, name);
  return { deleted: `${volume}@${name}` };
}

export async function restore(array: FlashArray, volume: string, name: string): Promise<VolumeInfo & { restoredFrom: string }> {
  await restoreSnapshot(array, volume, name);
  return { ...getVolume(array, volume), restoredFrom: `${volume}@${name}` };
}

export async function clone(array: FlashArray, body: unknown): Promise<VolumeInfo> {
  const source = stringFrom(body, 'source');
  const name = stringFrom(body, 'name');
  return volumeInfo(array, await cloneSnapshot(array, source, name));
}

export async function changes(array: FlashArray, from: string | null, to: string | null): Promise<DiffDocument> {
  if (from === null || to === null) throw StorageError.invalidArgument('give both "from" (VOLUME@OLDER) and "to" (VOLUME@NEWER, or VOLUME for its current state)');
  const ranges = await diff(array, from, to);
  return { from, to, ranges, rangeCount: ranges.length, totalBytes: ranges.reduce((total, range) => total + range.lengthBytes, 0) };
}

/**
 * The `pstorage stats` document (or one part of it). With the NBD server's statistics, each volume
 * also carries `io`: its reads and writes since the server started (requests, bytes, and latency
 * p50/p99/p99.9 inside the server, from a request's arrival to its reply).
 */
export function metrics(array: FlashArray, part?: 'reduction' | 'flash', io: IoStats | null = null): Record<string, unknown> {
  const stats = array.stats();
  if (part !== undefined) return stats[part] as Record<string, unknown>;
  if (io !== null) {
    for (const volume of stats.volumes as Array<{ name: string; io?: Record<string, IoSummary> }>) {
      const counters = io.find(volume.name);
      volume.io = { read: counters?.summary('read') ?? NO_REQUESTS, write: counters?.summary('write') ?? NO_REQUESTS };
    }
  }
  return stats;
}

const NO_REQUESTS: IoSummary = { requests: 0, bytes: 0, p50Ms: null, p99Ms: null, p999Ms: null };

/** `GET /api/v1/analytics`: from the running sampler, or (no server) from the stored history. */
export async function analytics(array: FlashArray, sampler: Analytics | null, history: string | null = null): Promise<AnalyticsReport> {
  return (sampler ?? (await Analytics.open(array))).report({ history: booleanFrom(history) });
}

export interface EraseBlocksDocument {
  eraseBlocks: number;
  enduranceCycles: number;
  eraseCounts: number[];
  /** Indexes of retired and retiring erase blocks. */
  retired: number[];
}

/** `GET /api/v1/flash/erase-blocks`: per-erase-block P/E counts, for the wear heat map. */
export function eraseBlocks(array: FlashArray): EraseBlocksDocument {
  const table = array.ftl.table;
  const retired: number[] = [];
  for (let block = 0; block < table.blockCount; block++) if (table.state[block] === BlockState.Retiring || table.state[block] === BlockState.Bad) retired.push(block);
  return { eraseBlocks: table.blockCount, enduranceCycles: array.nand.geometry.enduranceCycles, eraseCounts: Array.from(table.eraseCount), retired };
}

export function audit(array: FlashArray): Promise<AuditReport> {
  return auditArray(array);
}

/** The device behind `VOLUME` or `VOLUME@SNAPSHOT` (a read-only view), with clear errors. */
export function deviceFor(array: FlashArray, name: string): BlockDevice {
  if (!name.includes('@')) return findVolume(array, name);
  const parsed = parseSnapshotName(name);
  return array.snapshotView(findSnapshot(array, findVolume(array, parsed.volume), parsed.snapshot));
}
