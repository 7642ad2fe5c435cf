/**
 * Snapshots over NBD with real clients, against a real `pstorage serve`:
 * - a snapshot export is listed, read-only, refuses writes with EPERM (decided by the server, not
 *   only by libnbd), and offers `pstorage:changed:OLDER`, whose BLOCK_STATUS answers the same
 *   ranges as `pstorage diff`;
 * - nbdcopy of a snapshot while fio hammers the volume yields exactly the snapshot's content;
 * - snapshot and clone creation on a volume with 1 M mapped blocks stay within 10x of an empty
 *   volume (median of 3, figures in the test log), and deleting them leaves a clean audit;
 * - the bytes freed by deleting a clone and each snapshot equal what `snapshot list` reported as
 *   exclusive (and the clone's own data).
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { LogStream } from '../../src/ftl/log-stream.js';
import { GiB, MiB, SYSTEM_PYTHON, describeRun, mustRun, requireTools, run, seededBytes, sha256, sha256File, startServer, stopServer, tempDir, waitFor, type RunResult } from '../helpers/interop.js';
import { REPO_ROOT, type PstorageProcess } from '../helpers/pstorage-process.js';
import { apiRequest, apiSocketOf, okJson, rangesOf } from '../cli/cli-run.js';

const CLIENT = path.join(REPO_ROOT, 'test/snapshot/snapshot_client.py');
const B = 4096;

interface NbdinfoExport {
  'export-name': string;
  is_read_only: boolean;
  contexts?: string[];
}
interface VolumeJson {
  name: string;
  mappedBlocks: number;
  hostBytesWritten: number;
}
interface SnapshotJson {
  name: string;
  exclusiveBytes: number;
}
interface DiffJson {
  ranges: Array<{ offsetBytes: number; lengthBytes: number }>;
}

/** Calls the management API over the server's Unix socket; fails the test on an error status. */
async function api<T>(server: PstorageProcess, method: string, route: string, body?: unknown): Promise<T> {
  const response = await apiRequest({ socketPath: apiSocketOf(server.dataDir) }, method, route, { body });
  if (response.status >= 300) throw new Error(`${method} ${route}: ${response.status} ${JSON.stringify(response.body)}`);
  return response.body as T;
}

async function physicalBytes(server: PstorageProcess): Promise<number> {
  return (await api<{ physicalBytes: number }>(server, 'GET', '/api/v1/metrics')).physicalBytes;
}

async function nbdinfo(uri: string, list = false): Promise<NbdinfoExport[]> {
  return (JSON.parse((await mustRun('nbdinfo', ['--json', ...(list ? ['--list'] : []), uri])).stdout) as { exports: NbdinfoExport[] }).exports;
}

async function client<T>(args: string[]): Promise<T> {
  const result = await mustRun(SYSTEM_PYTHON, [CLIENT, ...args]);
  return JSON.parse(result.stdout) as T;
}

async function qemuWrite(uri: string, commands: string[]): Promise<RunResult> {
  return mustRun('qemu-io', ['-f', 'raw', uri, ...[...commands, 'flush'].flatMap((command) => ['-c', command])]);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function timedMs(work: () => Promise<unknown>): Promise<number> {
  const started = process.hrtime.bigint();
  await work();
  return Number(process.hrtime.bigint() - started) / 1e6;
}

test('snapshot export: listed, read-only, EPERM on write, pstorage:changed context = pstorage diff', async (t) => {
  requireTools(['nbdinfo', 'qemu-io']);
  const server = await startServer(t);
  await api(server, 'POST', '/api/v1/volumes', { name: 'v', size: '64M' });
  await qemuWrite(server.unixUri('v'), ['write -P 0x41 0 64k', 'write -P 0x42 10M 1M']);
  await api(server, 'POST', '/api/v1/volumes/v/snapshots', { name: 's1' });
  // Between s1 and s2: an unaligned write over blocks 3-4, 1 MiB at 20 MiB, an overwrite at 10 MiB, a trim.
  await qemuWrite(server.unixUri('v'), ['write -P 0x51 12300 5000', 'write -P 0x52 20M 1M', 'write -P 0x53 10M 4k', 'discard 40k 8k']);
  await api(server, 'POST', '/api/v1/volumes/v/snapshots', { name: 's2' });
  // After s2: must not show up in s1..s2.
  await qemuWrite(server.unixUri('v'), ['write -P 0x61 30M 64k']);

  const listed = await nbdinfo(server.unixUri(''), true);
  t.deepEqual(listed.map((e) => e['export-name']).sort(), ['default', 'v', 'v@s1', 'v@s2'], 'nbdinfo --list shows the snapshots');
  const [s2] = await nbdinfo(server.unixUri('v@s2'));
  t.true(s2!.is_read_only, 'v@s2 is read-only');
  t.deepEqual(s2!.contexts, ['base:allocation', 'pstorage:changed:s1'], 'v@s2 offers the changed-since-s1 context');
  const [s1] = await nbdinfo(server.unixUri('v@s1'));
  t.deepEqual(s1!.contexts, ['base:allocation'], 'v@s1 has no older snapshot');
  const [volume] = await nbdinfo(server.unixUri('v'));
  t.false(volume!.is_read_only);

  const probe = await client<Record<string, unknown>>(['readonly', server.unixUri('v@s1')]);
  t.deepEqual(probe, { is_read_only: true, size: 64 * MiB, strict_errno: 'EPERM', server_errno: 'EPERM', read_after: B }, 'a write to v@s1 fails with EPERM, from the server too (strict mode off)');
  const qemuOnSnapshot = await run('qemu-io', ['-f', 'raw', server.unixUri('v@s1'), '-c', 'write -P 0x99 0 4k']);
  t.not(qemuOnSnapshot.code, 0, `qemu-io cannot write to the snapshot\n${describeRun(qemuOnSnapshot)}`);

  const expected = [
    ...rangesOf([3, 4]), // 12300 .. 17300
    ...rangesOf([10, 11]), // trim of 40k..48k
    ...rangesOf([2560]), // 10 MiB, 4 KiB
    { offsetBytes: 20 * MiB, lengthBytes: MiB },
  ].sort((a, b) => a.offsetBytes - b.offsetBytes);
  const changed = await client<{ agreed: boolean; ranges: DiffJson['ranges'] }>(['changed', server.unixUri('v@s2'), 'pstorage:changed:s1']);
  t.true(changed.agreed, 'the server agreed to pstorage:changed:s1');
  const diff = await okJson<DiffJson>(server.dataDir, ['diff', 'v@s1', 'v@s2']);
  t.deepEqual(diff.ranges, expected, 'pstorage diff reports exactly the blocks written between s1 and s2');
  t.deepEqual(changed.ranges, diff.ranges, 'BLOCK_STATUS on pstorage:changed:s1 = pstorage diff');
  await stopServer(t, server);
});

test('nbdcopy of a snapshot while fio writes the volume = the snapshot content', async (t) => {
  requireTools(['nbdcopy', 'fio']);
  const dir = tempDir(t);
  const server = await startServer(t);
  const sizeBytes = 128 * MiB;
  await api(server, 'POST', '/api/v1/volumes', { name: 'v', size: sizeBytes });
  const seed = Date.now() >>> 0;
  t.log(`data seed ${seed}`);
  const data = seededBytes(sizeBytes, seed);
  const source = path.join(dir, 'source.img');
  fs.writeFileSync(source, data);
  await mustRun('nbdcopy', ['--flush', source, server.unixUri('v')], { timeoutMs: 120_000 });
  await api(server, 'POST', '/api/v1/volumes/v/snapshots', { name: 'snap' });

  // Heavy writes: two fio jobs of random 64 KiB writes with fresh data, until we stop them.
  const fio = spawn('fio', ['--name=hammer', '--ioengine=nbd', `--uri=${server.unixUri('v')}`, '--rw=randwrite', '--bs=64k', '--iodepth=8', '--numjobs=2', `--size=${sizeBytes}`, '--time_based', '--runtime=300', '--refill_buffers', '--randrepeat=0', '--output=/dev/null'], { stdio: 'ignore' });
  const fioExit = new Promise<number | null>((resolve) => fio.once('exit', (code) => resolve(code)));
  t.teardown(() => void fio.kill('SIGKILL'));
  const written = async () => (await api<VolumeJson>(server, 'GET', '/api/v1/volumes/v')).hostBytesWritten;
  const base = await written();
  let latest = base;
  const poll = setInterval(() => void written().then((value) => (latest = value)), 100);
  try {
    await waitFor(() => latest > base + 8 * MiB, 60_000, () => 'fio did not start writing to the volume within 60 s');
  } finally {
    clearInterval(poll);
  }

  const before = await written();
  const output = path.join(dir, 'snapshot.img');
  const copy = await mustRun('nbdcopy', ['--connections', '2', server.unixUri('v@snap'), output], { timeoutMs: 120_000 });
  const after = await written();
  fio.kill('SIGTERM');
  await fioExit;
  t.log(`nbdcopy of v@snap took ${copy.elapsedMs} ms while fio wrote ${((after - before) / MiB).toFixed(1)} MiB to v`);
  t.true(after - before > MiB, 'the volume took writes while the snapshot was copied');
  t.is(await sha256File(output), sha256(data), 'the copy is exactly what the volume held when the snapshot was taken');
  const diff = await okJson<DiffJson>(server.dataDir, ['diff', 'v@snap', 'v']);
  t.true(diff.ranges.length > 0, 'and the volume itself has moved on');
  await stopServer(t, server);
});

test('snapshot and clone creation: 1 M mapped blocks within 10x of an empty volume; audit clean after deletes', async (t) => {
  requireTools(['fio', 'nbdcopy']);
  const dir = tempDir(t);
  const server = await startServer(t);
  const sizeBytes = 4 * GiB;
  await api(server, 'POST', '/api/v1/volumes', { name: 'empty', size: sizeBytes });
  await api(server, 'POST', '/api/v1/volumes', { name: 'big', size: sizeBytes });
  // Fill all 4 GiB (pattern blocks: map entries that cost no NAND, the fastest way to 1 M mapped
  // blocks here), then 64 MiB of unique random data over the start (real chunks).
  const fill = await mustRun('fio', ['--name=fill', '--ioengine=nbd', `--uri=${server.unixUri('big')}`, '--rw=write', '--bs=4M', `--size=${sizeBytes}`, '--iodepth=8', '--buffer_pattern=0x5a5a5a5b', '--end_fsync=1', '--output=/dev/null'], { timeoutMs: 300_000 });
  const random = path.join(dir, 'random.img');
  fs.writeFileSync(random, seededBytes(64 * MiB, 7));
  await mustRun('nbdcopy', ['--flush', random, server.unixUri('big')], { timeoutMs: 120_000 });
  const big = await api<VolumeJson>(server, 'GET', '/api/v1/volumes/big');
  t.log(`filled big: ${big.mappedBlocks} mapped blocks (${64 * MiB / B} unique chunks, the rest pattern entries) in ${fill.elapsedMs} ms`);
  t.true(big.mappedBlocks >= 1024 * 1024, `big has ${big.mappedBlocks} mapped blocks`);

  // Interleaved, so both see the same machine load; times are as a client sees them (HTTP included).
  const times = { snapshotEmpty: [] as number[], snapshotBig: [] as number[], cloneEmpty: [] as number[], cloneBig: [] as number[] };
  for (let i = 1; i <= 3; i++) {
    times.snapshotEmpty.push(await timedMs(() => api(server, 'POST', '/api/v1/volumes/empty/snapshots', { name: `s${i}` })));
    times.snapshotBig.push(await timedMs(() => api(server, 'POST', '/api/v1/volumes/big/snapshots', { name: `s${i}` })));
    times.cloneEmpty.push(await timedMs(() => api(server, 'POST', '/api/v1/clones', { source: `empty@s${i}`, name: `empty-c${i}` })));
    times.cloneBig.push(await timedMs(() => api(server, 'POST', '/api/v1/clones', { source: `big@s${i}`, name: `big-c${i}` })));
  }
  const fmt = (values: number[]) => `median ${median(values).toFixed(1)} ms (${values.map((v) => v.toFixed(1)).join(', ')})`;
  t.log(`snapshot create: empty ${fmt(times.snapshotEmpty)}; 1 M mapped blocks ${fmt(times.snapshotBig)}`);
  t.log(`clone create:    empty ${fmt(times.cloneEmpty)}; 1 M mapped blocks ${fmt(times.cloneBig)}`);
  // Both are one synced metadata batch; a floor of 10 ms keeps fsync jitter on an idle-fast disk
  // from deciding the test, while a copy of the map (1024 map pages) would still blow through it.
  const floorMs = 10;
  t.true(median(times.snapshotBig) <= 10 * Math.max(floorMs, median(times.snapshotEmpty)), 'snapshot creation is O(1)');
  t.true(median(times.cloneBig) <= 10 * Math.max(floorMs, median(times.cloneEmpty)), 'clone creation is O(1)');
  const clone = await api<VolumeJson>(server, 'GET', '/api/v1/volumes/big-c2');
  t.is(clone.mappedBlocks, big.mappedBlocks, 'a clone starts with its snapshot\'s mapped blocks');

  // Delete clones, then snapshots; the array must audit clean and hold exactly big's data again.
  const physicalBefore = await physicalBytes(server);
  for (let i = 1; i <= 3; i++) {
    await api(server, 'DELETE', `/api/v1/volumes/empty-c${i}`);
    await api(server, 'DELETE', `/api/v1/volumes/big-c${i}`);
  }
  for (let i = 1; i <= 3; i++) {
    await api(server, 'DELETE', `/api/v1/volumes/empty/snapshots/s${i}`);
    await api(server, 'DELETE', `/api/v1/volumes/big/snapshots/s${i}`);
  }
  t.is(await physicalBytes(server), physicalBefore, 'untouched clones and snapshots of unchanged volumes free nothing');
  t.like(await api(server, 'GET', '/api/v1/volumes/big'), { mappedBlocks: big.mappedBlocks });
  const audit = await api<{ ok: boolean; problems: string[]; mappedBlocks: number }>(server, 'POST', '/api/v1/audit');
  t.deepEqual(audit.problems, []);
  t.true(audit.ok);
  await stopServer(t, server);
});

test('space: deleting a clone frees its own data; deleting a snapshot frees what snapshot list called exclusive', async (t) => {
  requireTools(['nbdcopy']);
  const dir = tempDir(t);
  const server = await startServer(t);
  await api(server, 'POST', '/api/v1/volumes', { name: 'v', size: '64M' });
  const copyIn = async (seed: number, bytes: number, exportName: string) => {
    const file = path.join(dir, `data-${seed}.img`);
    fs.writeFileSync(file, seededBytes(bytes, seed));
    await mustRun('nbdcopy', ['--flush', file, server.unixUri(exportName)], { timeoutMs: 60_000 });
  };
  await copyIn(1, 32 * MiB, 'v'); // a: 32 MiB
  await api(server, 'POST', '/api/v1/volumes/v/snapshots', { name: 'a' });
  await copyIn(2, 16 * MiB, 'v'); // overwrites a's first 16 MiB
  await api(server, 'POST', '/api/v1/volumes/v/snapshots', { name: 'b' });
  await copyIn(3, 8 * MiB, 'v'); // overwrites b's first 8 MiB
  await api(server, 'POST', '/api/v1/clones', { source: 'v@b', name: 'c' });
  await copyIn(4, 4 * MiB, 'c'); // the clone's own 4 MiB

  // Random data neither compresses nor dedups: each of the clone's 1024 blocks is one raw chunk.
  const cloneBytes = (4 * MiB / B) * LogStream.recordBytes(B);
  let before = await physicalBytes(server);
  await okJson(server.dataDir, ['volume', 'delete', 'c']);
  let freed = before - (await physicalBytes(server));
  t.log(`clone c: freed ${freed} bytes (its own 4 MiB of data: ${cloneBytes})`);
  t.is(freed, cloneBytes);

  // a's first 16 MiB were overwritten by b; then (a merged into b) b's first 8 MiB by the volume.
  const expectedExclusive: Record<string, number> = { a: (16 * MiB / B) * LogStream.recordBytes(B), b: (8 * MiB / B) * LogStream.recordBytes(B) };
  const report: string[] = [];
  for (const name of ['a', 'b']) {
    const listed = await okJson<SnapshotJson[]>(server.dataDir, ['snapshot', 'list', 'v']);
    const exclusive = listed.find((s) => s.name === name)!.exclusiveBytes;
    before = await physicalBytes(server);
    await okJson(server.dataDir, ['snapshot', 'delete', 'v', name]);
    freed = before - (await physicalBytes(server));
    report.push(`v@${name}: exclusive ${exclusive}, freed ${freed} (physical ${before} -> ${before - freed})`);
    t.is(freed, exclusive, `deleting v@${name} frees what snapshot list reported`);
    t.is(exclusive, expectedExclusive[name]!, `v@${name} exclusive bytes`);
  }
  t.log(report.join('\n'));
  const audit = await okJson<{ ok: boolean; problems: string[] }>(server.dataDir, ['inspect', 'audit']);
  t.deepEqual(audit.problems, []);
  const remaining = await physicalBytes(server);
  t.is(remaining, (32 * MiB / B) * LogStream.recordBytes(B), 'what is left is exactly the volume\'s 32 MiB');
  await stopServer(t, server);
});
