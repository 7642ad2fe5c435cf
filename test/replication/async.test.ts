/**
 * Asynchronous replication (`pstorage replicate`): the first run copies the volume, the next one
 * only what changed since the snapshot the target confirmed, and the target keeps each copy as a
 * snapshot of the same name, byte-identical to the source's.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { tempDir } from '../helpers/interop.js';
import { pstorage } from '../cli/cli-run.js';
import { cli, exportDigest, podIo, startArray } from './cluster-harness.js';

const MiB = 1024 * 1024;

interface Run {
  snapshot: string;
  base: string | null;
  changedBytes: number;
  sentBytes: number;
}

test('replicate: a full first copy, then only the changes, kept as snapshots identical on both arrays', async (t) => {
  const dir = tempDir(t, 'pstorage-async-');
  const secretFile = path.join(dir, 'secret');
  fs.writeFileSync(secretFile, Buffer.from('0123456789abcdef0123456789abcdef'), { mode: 0o600 });
  const [a, b] = await Promise.all([startArray(t, 'a', dir, secretFile), startArray(t, 'b', dir, secretFile)]);
  await cli(a.dataDir, ['volume', 'create', 'dr', '--size', '64M']);
  t.is((await podIo(['write', a.server.tcpUri('dr'), '0', String(4 * MiB), '17'])).code, 0);

  const first = JSON.parse(await cli(a.dataDir, ['replicate', 'dr', '--to', `127.0.0.1:${b.replicationPort}`, '--json'])) as Run;
  t.log(`first run: ${first.changedBytes} bytes examined, ${first.sentBytes} bytes of data sent (zeroes as headers, LZ4 where smaller)`);
  t.is(first.base, null, 'the first run is a full copy');
  t.is(first.changedBytes, 64 * MiB);
  t.true(first.sentBytes < 4 * MiB, 'the copy went in reduced form (4 MiB of one byte value, 60 MiB of zeroes)');
  t.is(await exportDigest(b.server.tcpUri(`dr@${first.snapshot}`)), await exportDigest(a.server.tcpUri(`dr@${first.snapshot}`)), 'the target snapshot is the source snapshot');

  t.is((await podIo(['write', a.server.tcpUri('dr'), String(8 * MiB), String(MiB), '34'])).code, 0);
  const second = JSON.parse(await cli(a.dataDir, ['replicate', 'dr', '--to', `127.0.0.1:${b.replicationPort}`, '--json'])) as Run;
  t.log(`second run: ${second.changedBytes} bytes changed since ${second.base}, ${second.sentBytes} bytes sent`);
  t.is(second.base, first.snapshot, 'the second run starts from the first snapshot');
  t.true(second.changedBytes >= MiB && second.changedBytes < 2 * MiB, `only the changed megabyte went: ${second.changedBytes}`);
  t.is(await exportDigest(b.server.tcpUri(`dr@${second.snapshot}`)), await exportDigest(a.server.tcpUri(`dr@${second.snapshot}`)));
  const snapshots = JSON.parse(await cli(b.dataDir, ['snapshot', 'list', 'dr', '--json'])) as Array<{ name: string }>;
  t.deepEqual(snapshots.map((s) => s.name), [second.snapshot], 'the target keeps the newest copy');

  const bad = await pstorage(a.dataDir, ['replicate', 'dr', '--to', `127.0.0.1:${b.replicationPort}`, '--every', 'often']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /give a whole number with s, m or h, e.g. 30s, 5m, 1h/);
});
