/**
 * qemu-img and qemu-io (qemu's NBD client) against a real pstorage process:
 * - `qemu-img convert -n` an image with data and zero runs into the export, `qemu-img compare`
 *   (identical, and a one-byte change is noticed);
 * - `qemu-img map --output=json` (BLOCK_STATUS base:allocation) shows data where qemu-io wrote,
 *   holes ("data": false, "zero": true) after TRIM and after WRITE_ZEROES of written ranges, and
 *   provisioned zeroes ("data": true, "zero": true) after WRITE_ZEROES with NO_HOLE.
 *
 * qemu looks at a 64 MiB window of the export through a raw driver with `size`, so compare and
 * map do not walk all 16 GiB.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { MiB, describeRun, mustRun, requireTools, run, seededBytes, startServer, stopServer, tempDir } from '../helpers/interop.js';
import type { PstorageProcess } from '../helpers/pstorage-process.js';

const WINDOW_BYTES = 64 * MiB;

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

/** A qemu block-driver spec for the first `sizeBytes` of the export (offset 0). */
function windowSpec(server: PstorageProcess, sizeBytes = WINDOW_BYTES): string {
  return `json:${JSON.stringify({
    driver: 'raw',
    size: sizeBytes,
    file: { driver: 'nbd', server: { type: 'unix', path: server.socketPath }, export: 'default' },
  })}`;
}

async function qemuMap(server: PstorageProcess): Promise<MapEntry[]> {
  const result = await mustRun('qemu-img', ['map', '--output=json', windowSpec(server)]);
  return JSON.parse(result.stdout) as MapEntry[];
}

/** The map flags covering [start, start+length), asserting one entry covers it all. */
function mapAt(entries: MapEntry[], start: number, length: number): { data: boolean; zero: boolean } | string {
  const entry = entries.find((e) => e.start <= start && start + length <= e.start + e.length);
  return entry === undefined ? `no single map entry covers ${start}+${length}: ${JSON.stringify(entries)}` : { data: entry.data, zero: entry.zero };
}

async function qemuIo(server: PstorageProcess, ...commands: string[]): Promise<void> {
  const args = ['-f', 'raw'];
  for (const command of commands) args.push('-c', command);
  const result = await mustRun('qemu-io', [...args, server.unixUri()]);
  // qemu-io reports a failed command on stdout but still exits 0.
  if (/fail|error|Pattern verification/i.test(result.stdout + result.stderr)) throw new Error(describeRun(result));
}

test('qemu-img convert -n then compare', async (t) => {
  requireTools(['qemu-img']);
  const dir = tempDir(t);
  const server = await startServer(t);
  // 64 MiB: 20 MiB of data, a 20 MiB zero run, 4 MiB of data, then zeroes (sparse).
  const image = path.join(dir, 'image.raw');
  const fd = fs.openSync(image, 'w');
  fs.writeSync(fd, seededBytes(20 * MiB, 1), 0, 20 * MiB, 0);
  fs.writeSync(fd, seededBytes(4 * MiB + 123, 2), 0, 4 * MiB + 123, 40 * MiB);
  fs.ftruncateSync(fd, WINDOW_BYTES);
  fs.closeSync(fd);

  await mustRun('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image, server.unixUri()], { timeoutMs: 120_000 });
  const compared = await mustRun('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, windowSpec(server)]);
  t.regex(compared.stdout, /Images are identical/);

  const entries = await qemuMap(server);
  t.deepEqual(mapAt(entries, 0, 20 * MiB), { data: true, zero: false }, 'copied data is mapped as data');
  t.deepEqual(mapAt(entries, 20 * MiB, 20 * MiB), { data: false, zero: true }, 'the zero run is a hole');

  // A changed byte must be noticed: compare exits 1 and names the offset.
  const handle = fs.openSync(image, 'r+');
  fs.writeSync(handle, Buffer.from([0x5a]), 0, 1, 30 * MiB + 7);
  fs.closeSync(handle);
  const differs = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, windowSpec(server)]);
  t.is(differs.code, 1, describeRun(differs));
  t.regex(differs.stdout, new RegExp(`Content mismatch at offset ${30 * MiB}!`));
  await stopServer(t, server);
});

test('qemu-img map shows holes after TRIM and WRITE_ZEROES, not after NO_HOLE zeroing', async (t) => {
  requireTools(['qemu-img', 'qemu-io']);
  const server = await startServer(t);
  await qemuIo(server, 'write -P 0xab 0 4M', 'write -P 0xcd 4M 4M', 'write -P 0xef 8M 4M', 'flush');
  let entries = await qemuMap(server);
  t.deepEqual(mapAt(entries, 0, 12 * MiB), { data: true, zero: false }, 'written range is data');
  t.deepEqual(mapAt(entries, 12 * MiB, 52 * MiB), { data: false, zero: true }, 'the rest is a hole');

  await qemuIo(server, 'write -P 0x12 12M 4M');
  // `write -z -u` may unmap (WRITE_ZEROES without NO_HOLE); plain `write -z` sends NO_HOLE, which
  // must leave the range provisioned: it reads as zeroes but is not a hole.
  await qemuIo(server, 'discard 0 4M', 'write -z -u 4M 4M', 'write -z 12M 4M', 'flush');
  entries = await qemuMap(server);
  t.deepEqual(mapAt(entries, 0, 4 * MiB), { data: false, zero: true }, 'hole after TRIM (discard)');
  t.deepEqual(mapAt(entries, 4 * MiB, 4 * MiB), { data: false, zero: true }, 'hole after WRITE_ZEROES (write -z -u)');
  t.deepEqual(mapAt(entries, 8 * MiB, 4 * MiB), { data: true, zero: false }, 'untouched data stays data');
  t.deepEqual(mapAt(entries, 12 * MiB, 4 * MiB), { data: true, zero: true }, 'WRITE_ZEROES with NO_HOLE (write -z): zero, not a hole');
  // And the contents agree: zeroes where zeroed, the pattern where not.
  await qemuIo(server, 'read -P 0 4M 4M', 'read -P 0xef 8M 4M', 'read -P 0 12M 4M');
  await stopServer(t, server);
});
