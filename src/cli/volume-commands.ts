/**
 * `pstorage volume|snapshot|clone|diff`: each goes through the running server's management API,
 * or runs the same operation (src/mgmt/operations.ts) on the data directory when no server runs.
 * Human tables by default, `--json` for scripts.
 */
import { formatBytes } from '../common/size.js';
import * as ops from '../mgmt/operations.js';
import type { SnapshotInfo } from '../volume/snapshots.js';
import { request } from './api-client.js';
import { printJson, table } from './output.js';

const enc = encodeURIComponent;

export interface Output {
  json: boolean;
}

/** `2024-05-01T10:20:30.123Z` → `2024-05-01 10:20:30` (UTC). */
function shortTime(iso: string): string {
  return iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function volumeLine(info: ops.VolumeInfo): string {
  return `${info.name}: ${formatBytes(info.sizeBytes)} (${info.sizeBytes} bytes), ${formatBytes(info.logicalBytes)} mapped${info.origin ? `, cloned from ${info.origin}` : ''}`;
}

export async function volumeCreate(dataDir: string, name: string, sizeBytes: number, output: Output): Promise<void> {
  const body = { name, size: sizeBytes };
  const info = await request(dataDir, 'POST', '/api/v1/volumes', body, (array) => ops.createVolume(array, body));
  if (output.json) return printJson(info);
  process.stdout.write(`created volume ${volumeLine(info)}\n`);
}

export async function volumeList(dataDir: string, output: Output): Promise<void> {
  const volumes = await request(dataDir, 'GET', '/api/v1/volumes', undefined, async (array) => ops.listVolumes(array));
  if (output.json) return printJson(volumes);
  if (volumes.length === 0) {
    process.stdout.write('no volumes; create one with "pstorage volume create NAME --size 10G"\n');
    return;
  }
  const rows = volumes.map((v) => [v.name, formatBytes(v.sizeBytes), formatBytes(v.logicalBytes), v.snapshots.length, v.origin ?? '-', accessText(v), shortTime(v.createdAt)]);
  process.stdout.write(table(['NAME', 'SIZE', 'MAPPED', 'SNAPSHOTS', 'ORIGIN', 'ACCESS', 'CREATED'], rows));
}

/** `everyone`, or the identities allowed (TLS clients only). */
function accessText(info: ops.VolumeInfo): string {
  return info.accessList === null ? 'everyone' : info.accessList.join(',');
}

export async function volumeShow(dataDir: string, name: string, output: Output): Promise<void> {
  const info = await request(dataDir, 'GET', `/api/v1/volumes/${enc(name)}`, undefined, async (array) => ops.getVolume(array, name));
  if (output.json) return printJson(info);
  const rows: Array<[string, string]> = [
    ['name', info.name],
    ['size', `${formatBytes(info.sizeBytes)} (${info.sizeBytes} bytes)`],
    ['mapped', formatBytes(info.logicalBytes)],
    ['snapshots', info.snapshots.length === 0 ? '-' : info.snapshots.join(', ')],
    ['origin', info.origin ?? '-'],
    ['access', info.accessList === null ? 'every client' : `TLS clients ${info.accessList.join(', ')} only`],
    ['created', shortTime(info.createdAt)],
  ];
  process.stdout.write(rows.map(([key, value]) => `${`${key}:`.padEnd(11)}${value}\n`).join(''));
}

/** `volume access NAME --allow a,b` sets the list, `--clear` removes it; neither shows it. */
export async function volumeAccess(dataDir: string, name: string, change: { allow?: string[]; clear: boolean }, output: Output): Promise<void> {
  let info: ops.VolumeInfo;
  if (change.clear) {
    info = await request(dataDir, 'DELETE', `/api/v1/volumes/${enc(name)}/access`, undefined, (array) => ops.clearAccess(array, name));
  } else if (change.allow !== undefined) {
    const body = { identities: change.allow };
    info = await request(dataDir, 'PUT', `/api/v1/volumes/${enc(name)}/access`, body, (array) => ops.access(array, name, body));
  } else {
    info = await request(dataDir, 'GET', `/api/v1/volumes/${enc(name)}`, undefined, async (array) => ops.getVolume(array, name));
  }
  if (output.json) return printJson({ name: info.name, accessList: info.accessList });
  if (info.accessList === null) {
    process.stdout.write(`volume ${info.name}: every client may attach it (no access list); restrict it with "pstorage volume access ${info.name} --allow NAME,..."\n`);
  } else {
    process.stdout.write(`volume ${info.name} and its snapshots: only TLS clients ${info.accessList.join(', ')} may attach them (certificate common name or PSK username); others are told it does not exist\n`);
  }
}

export async function volumeDelete(dataDir: string, name: string, force: boolean, output: Output): Promise<void> {
  const result = await request(dataDir, 'DELETE', `/api/v1/volumes/${enc(name)}${force ? '?force=true' : ''}`, undefined, (array) => ops.removeVolume(array, name, force));
  if (output.json) return printJson(result);
  const also = result.snapshotsDeleted.length > 0 ? ` and its snapshot(s) ${result.snapshotsDeleted.join(', ')}` : '';
  process.stdout.write(`deleted volume ${result.deleted}${also}\n`);
}

export async function volumeResize(dataDir: string, name: string, sizeBytes: number, force: boolean, output: Output): Promise<void> {
  const body = { size: sizeBytes, force };
  const info = await request(dataDir, 'PATCH', `/api/v1/volumes/${enc(name)}`, body, (array) => ops.resize(array, name, body));
  if (output.json) return printJson(info);
  process.stdout.write(`resized volume ${name} from ${formatBytes(info.previousSizeBytes)} to ${formatBytes(info.sizeBytes)} (${info.sizeBytes} bytes)\n`);
}

export async function snapshotCreate(dataDir: string, volume: string, name: string, output: Output): Promise<void> {
  const body = { name };
  const snapshot = await request(dataDir, 'POST', `/api/v1/volumes/${enc(volume)}/snapshots`, body, (array) => ops.snapshot(array, volume, body));
  if (output.json) return printJson(snapshot);
  process.stdout.write(`created snapshot ${volume}@${name} (${formatBytes(snapshot.logicalBytes)} mapped); export it read-only over NBD as "${volume}@${name}"\n`);
}

export async function snapshotList(dataDir: string, volume: string | undefined, output: Output): Promise<void> {
  const route = volume === undefined ? '/api/v1/snapshots' : `/api/v1/volumes/${enc(volume)}/snapshots`;
  const snapshots = await request<SnapshotInfo[]>(dataDir, 'GET', route, undefined, (array) => ops.snapshots(array, volume));
  if (output.json) return printJson(snapshots);
  if (snapshots.length === 0) {
    process.stdout.write(`no snapshots${volume === undefined ? '' : ` of ${volume}`}; take one with "pstorage snapshot create ${volume ?? 'VOLUME'} NAME"\n`);
    return;
  }
  const rows = snapshots.map((s) => [s.volume, s.name, shortTime(s.createdAt), formatBytes(s.sizeBytes), formatBytes(s.mappedBlocks * 4096), formatBytes(s.exclusiveBytes)]);
  process.stdout.write(table(['VOLUME', 'SNAPSHOT', 'CREATED', 'SIZE', 'MAPPED', 'EXCLUSIVE'], rows));
  const exclusive = snapshots.reduce((total, s) => total + s.exclusiveBytes, 0);
  process.stdout.write(`${snapshots.length} snapshot(s); EXCLUSIVE is what deleting one would free (${formatBytes(exclusive)} in all)\n`);
}

export async function snapshotDelete(dataDir: string, volume: string, name: string, output: Output): Promise<void> {
  const result = await request(dataDir, 'DELETE', `/api/v1/volumes/${enc(volume)}/snapshots/${enc(name)}`, undefined, (array) => ops.removeSnapshot(array, volume, name));
  if (output.json) return printJson(result);
  process.stdout.write(`deleted snapshot ${result.deleted}\n`);
}

export async function snapshotRestore(dataDir: string, volume: string, name: string, output: Output): Promise<void> {
  const info = await request(dataDir, 'POST', `/api/v1/volumes/${enc(volume)}/snapshots/${enc(name)}/restore`, undefined, (array) => ops.restore(array, volume, name));
  if (output.json) return printJson(info);
  process.stdout.write(`restored volume ${volume} to snapshot ${info.restoredFrom}: ${formatBytes(info.sizeBytes)}, ${formatBytes(info.logicalBytes)} mapped\n`);
}

export async function cloneCreate(dataDir: string, source: string, name: string, output: Output): Promise<void> {
  const body = { source, name };
  const info = await request(dataDir, 'POST', '/api/v1/clones', body, (array) => ops.clone(array, body));
  if (output.json) return printJson(info);
  process.stdout.write(`created clone ${volumeLine(info)}\n`);
}

export async function diffCommand(dataDir: string, from: string, to: string, output: Output): Promise<void> {
  const route = `/api/v1/diff?from=${enc(from)}&to=${enc(to)}`;
  const result = await request(dataDir, 'GET', route, undefined, (array) => ops.changes(array, from, to));
  if (output.json) return printJson(result);
  if (result.ranges.length > 0) {
    const rows = result.ranges.map((r) => [r.offsetBytes, r.lengthBytes, r.offsetBytes + r.lengthBytes, formatBytes(r.lengthBytes)]);
    process.stdout.write(table(['OFFSET', 'LENGTH', 'END', 'SIZE'], rows));
  }
  process.stdout.write(`${result.rangeCount} changed range(s) from ${from} to ${to}, ${formatBytes(result.totalBytes)} (${result.totalBytes} bytes) in total\n`);
}
