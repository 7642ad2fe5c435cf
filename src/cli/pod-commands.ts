/**
 * `pstorage pod create|status|list|delete` and `volume create --pod`: ActiveCluster pods, through
 * the running server's management API (a pod lives in a running array: its link, its peer and
 * its mediator are live connections, so there is no offline form).
 */
import { StorageError } from '../common/errors.js';
import { formatBytes } from '../common/size.js';
import { request } from './api-client.js';
import { printJson, table } from './output.js';
import type { Output } from './volume-commands.js';
import type { ReplicateResult } from '../replication/async-replication.js';

const enc = encodeURIComponent;

function needsServer(): never {
  throw StorageError.notSupported('pods need the running array: start it with "pstorage serve --replication-listen HOST:PORT --replication-secret-file FILE" and run this command again');
}

type PodDocument = Record<string, unknown> & { name: string; state: string; reason: string; role: string; link: string; peer: string; volumes: string[]; changedBytes: number };

export async function podCreate(dataDir: string, name: string, peer: string, mediator: string, output: Output): Promise<void> {
  const status = await request<PodDocument>(dataDir, 'POST', '/api/v1/pods', { name, peer, mediator }, needsServer);
  if (output.json) return printJson(status);
  process.stdout.write(`created pod ${name} with the array at ${peer} (mediator ${mediator}): ${status.state}\nadd volumes with "pstorage volume create NAME --size 10G --pod ${name}"\n`);
}

export async function podStatus(dataDir: string, name: string, output: Output): Promise<void> {
  const status = await request<PodDocument>(dataDir, 'GET', `/api/v1/pods/${enc(name)}`, undefined, needsServer);
  if (output.json) return printJson(status);
  const rows: Array<[string, string]> = [
    ['pod', status.name],
    ['state', status.reason ? `${status.state} (${status.reason})` : status.state],
    ['role', status.role],
    ['link', `${status.link} (peer ${status.peer})`],
    ['volumes', status.volumes.length === 0 ? '-' : status.volumes.join(', ')],
    ['changed', formatBytes(status.changedBytes)],
  ];
  process.stdout.write(rows.map(([key, value]) => `${`${key}:`.padEnd(9)}${value}\n`).join(''));
}

export async function podList(dataDir: string, output: Output): Promise<void> {
  const list = await request<PodDocument[]>(dataDir, 'GET', '/api/v1/pods', undefined, needsServer);
  if (output.json) return printJson(list);
  if (list.length === 0) {
    process.stdout.write('no pods; create one with "pstorage pod create POD --peer HOST:PORT --mediator http://HOST:2379"\n');
    return;
  }
  process.stdout.write(table(['POD', 'STATE', 'ROLE', 'LINK', 'PEER', 'VOLUMES', 'CHANGED'], list.map((pod) => [pod.name, pod.state, pod.role, pod.link, pod.peer, pod.volumes.join(',') || '-', formatBytes(pod.changedBytes)])));
}

export async function podDelete(dataDir: string, name: string, output: Output): Promise<void> {
  const result = await request<{ deleted: string; peerToo: boolean; volumesKeptAsLocal: string[] }>(dataDir, 'DELETE', `/api/v1/pods/${enc(name)}`, undefined, needsServer);
  if (output.json) return printJson(result);
  const kept = result.volumesKeptAsLocal.length > 0 ? `; volumes ${result.volumesKeptAsLocal.join(', ')} stay as ordinary volumes` : '';
  process.stdout.write(`deleted pod ${name}${result.peerToo ? ' on both arrays' : ' on this array only (the peer was unreachable: delete it there too)'}${kept}\n`);
}

export async function podVolumeCreate(dataDir: string, pod: string, name: string, sizeBytes: number, output: Output): Promise<void> {
  const info = await request<{ name: string; sizeBytes: number; pod: string }>(dataDir, 'POST', `/api/v1/pods/${enc(pod)}/volumes`, { name, size: sizeBytes }, needsServer);
  if (output.json) return printJson(info);
  process.stdout.write(`created volume ${name}: ${formatBytes(sizeBytes)} (${sizeBytes} bytes) in pod ${pod}, on both arrays\n`);
}

/** `30s`, `5m`, `1h` → milliseconds; a message saying what is accepted otherwise. */
export function parseIntervalMs(text: string): number {
  const match = /^(\d+)(s|m|h)$/.exec(text.trim());
  if (match === null || Number(match[1]) === 0) throw StorageError.invalidArgument(`--every "${text}": give a whole number with s, m or h, e.g. 30s, 5m, 1h`);
  return Number(match[1]) * { s: 1000, m: 60_000, h: 3_600_000 }[match[2] as 's' | 'm' | 'h'];
}


/** One run, or (with an interval) a run every interval until interrupted; each run is one line. */
export async function replicateCommand(dataDir: string, volume: string, to: string, everyMs: number | null, output: Output): Promise<void> {
  for (;;) {
    const startedMs = Date.now();
    const run = await request<ReplicateResult>(dataDir, 'POST', `/api/v1/volumes/${enc(volume)}/replicate`, { to }, needsServer);
    if (output.json) printJson(run);
    else process.stdout.write(`replicated ${volume} to ${to} as snapshot ${run.snapshot} (${run.base === null ? 'full copy' : `changes since ${run.base}`}): ${formatBytes(run.changedBytes)} changed, ${formatBytes(run.sentBytes)} sent, ${(run.durationMs / 1000).toFixed(1)} s\n`);
    if (everyMs === null) return;
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, startedMs + everyMs - Date.now())));
  }
}
