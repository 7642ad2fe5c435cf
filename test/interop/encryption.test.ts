/**
 * Encryption at rest with a real `pstorage serve` and real clients: nbdcopy writes a volume's
 * first 32 MiB full of a known marker string; after the server stops, `grep -rc MARKER DATA_DIR`
 * counts 0 in every file of the encrypted array and more than 0 in a plain one (so the test can
 * fail); the data reads back exactly (nbdsh) after a restart with the key; a start without the
 * key, or with a wrong one, exits with a clear message and changes no file; `pstorage key rotate`
 * then a restart with the new key works, and the old key is refused.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { MiB, SYSTEM_PYTHON, mustRun, requireTools, run, sha256, startServer, stopServer, tempDir } from '../helpers/interop.js';
import { PSTORAGE_BIN, type PstorageProcess } from '../helpers/pstorage-process.js';

const MARKER = 'PSTORAGE-AT-REST-MARKER-c0ffee';
const COPY_BYTES = 32 * MiB;

function markerImage(): Buffer {
  const block = 4096;
  const image = Buffer.alloc(COPY_BYTES);
  // Numbered blocks (else dedup keeps one), each a run of the marker: what a leak would show.
  for (let at = 0; at < COPY_BYTES; at += block) image.write(`${String(at / block).padStart(8, '0')}|${MARKER.repeat(140)}`.slice(0, block), at, 'latin1');
  return image;
}

/** `grep -rc MARKER dir`: each file's count of lines holding the marker. */
async function grepCounts(dir: string): Promise<Map<string, number>> {
  const result = await run('grep', ['-rc', '-a', MARKER, dir]);
  const counts = new Map<string, number>();
  for (const line of result.stdout.split('\n').filter((text) => text !== '')) {
    const at = line.lastIndexOf(':');
    counts.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return counts;
}

/** Every file's name, mtime and hash. */
function snapshotDir(dir: string): string {
  return fs
    .readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.join(entry.parentPath ?? entry.path, entry.name))
    .sort()
    .map((file) => `${file} ${fs.statSync(file).mtimeMs} ${crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex')}`)
    .join('\n');
}

async function readHash(server: PstorageProcess): Promise<string> {
  const script = `import hashlib\nh2 = hashlib.sha256()\nfor off in range(0, ${COPY_BYTES}, 4 << 20):\n    h2.update(h.pread(4 << 20, off))\nprint(h2.hexdigest())`;
  const result = await mustRun('nbdsh', ['-u', server.unixUri(), '-c', script], { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH}` }, timeoutMs: 60_000 });
  return result.stdout.trim();
}

async function fillWithMarker(t: ExecutionContext, dataDir: string, args: string[], image: string): Promise<void> {
  const server = await startServer(t, { dataDir, args: ['--capacity', '1G', ...args] });
  await mustRun('nbdcopy', ['--flush', image, server.unixUri()], { timeoutMs: 120_000 });
  await stopServer(t, server);
}

/** `pstorage serve` that must refuse to start: its exit code and message. */
async function refusedStart(dataDir: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  const result = await run(process.execPath, [PSTORAGE_BIN, 'serve', '--data-dir', dataDir, '--listen', 'none', '--socket', path.join(dataDir, 'refused.sock'), ...args], { timeoutMs: 30_000, env: { ...process.env, PSTORAGE_KEY_FILE: '' } });
  return { code: result.code, stderr: result.stderr + result.stdout };
}

test('encrypted array: no marker in any file (a plain one shows it), exact read-back with the key, no key and a wrong key refused with nothing changed, rotation', async (t) => {
  requireTools(['nbdcopy', 'nbdsh', 'grep', 'openssl', SYSTEM_PYTHON]);
  const dir = tempDir(t);
  const key = path.join(dir, 'array.key');
  const wrongKey = path.join(dir, 'wrong.key');
  const newKey = path.join(dir, 'new.key');
  for (const file of [key, wrongKey, newKey]) await mustRun('openssl', ['rand', '-out', file, '32']);
  const data = markerImage();
  const image = path.join(dir, 'marker.img');
  fs.writeFileSync(image, data);

  const plainDir = path.join(dir, 'plain');
  const encryptedDir = path.join(dir, 'encrypted');
  await fillWithMarker(t, plainDir, [], image);
  await fillWithMarker(t, encryptedDir, ['--key-file', key], image);
  const plainCounts = await grepCounts(plainDir);
  t.true([...plainCounts.values()].some((count) => count > 0), `the plain array holds the marker: ${JSON.stringify([...plainCounts])}`);
  const encryptedCounts = await grepCounts(encryptedDir);
  t.true(encryptedCounts.size > 0, 'grep saw the encrypted array\'s files');
  t.deepEqual([...encryptedCounts].filter(([, count]) => count !== 0), [], 'grep -c counts 0 in every file of the encrypted array');

  const before = snapshotDir(encryptedDir);
  const noKey = await refusedStart(encryptedDir, []);
  t.is(noKey.code, 2, noKey.stderr);
  t.regex(noKey.stderr, /is encrypted: pass its key file with --key-file/);
  const wrong = await refusedStart(encryptedDir, ['--key-file', wrongKey]);
  t.is(wrong.code, 2, wrong.stderr);
  t.regex(wrong.stderr, /wrong key/);
  t.is(snapshotDir(encryptedDir), before, 'no file changed (names, mtimes, contents)');
  const plainWithKey = await refusedStart(plainDir, ['--key-file', key]);
  t.regex(plainWithKey.stderr, /is not encrypted, but a key file was given/);

  const server = await startServer(t, { dataDir: encryptedDir, args: ['--key-file', key] });
  t.is(await readHash(server), sha256(data), 'reads back exactly after a restart with the key');
  const stats = await mustRun(process.execPath, [PSTORAGE_BIN, 'stats', '--data-dir', encryptedDir, '--json']);
  t.deepEqual((JSON.parse(stats.stdout) as { encryption: unknown }).encryption, { cipher: 'aes-256-xts', keyWrap: 'aes-256-gcm' });
  await stopServer(t, server);

  await mustRun(process.execPath, [PSTORAGE_BIN, 'key', 'rotate', '--data-dir', encryptedDir, '--key-file', key, '--new-key-file', newKey]);
  const old = await refusedStart(encryptedDir, ['--key-file', key]);
  t.regex(old.stderr, /wrong key/, 'the old key is refused after rotation');
  const rotated = await startServer(t, { dataDir: encryptedDir, env: { PSTORAGE_KEY_FILE: newKey } });
  t.is(await readHash(rotated), sha256(data), 'the new key (PSTORAGE_KEY_FILE) opens it and the data is the same');
  await stopServer(t, rotated);
});
