/**
 * Encryption at rest with a real `pstorage serve` and real clients: nbdcopy writes a volume's
 * first 32 MiB full of a known marker string; after the server stops, `grep -rc MARKER DATA_DIR`
 * counts 0 in every file of the encrypted array and more than 0 in a plain one (so the test can
 * fail). 4 MiB of it are the 8-byte word PSTRMARK repeated, and three blocks repeat a 1-, 2- and
 * 4-byte word: a plain array keeps such blocks as a literal in the volume map (its patternBlocks
 * count them), an encrypted one must store them as encrypted chunks (only all-zero blocks stay
 * patterns), so neither PSTRMARK nor its little-endian map form is in any of its files, and its
 * physical bytes stay within 1 % of the plain array's. The data reads back exactly (nbdsh) after a
 * restart with the key; a start without the
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
const BLOCK_BYTES = 4096;
/** A repeated 8-byte word: a pattern block. */
const PATTERN_MARKER = 'PSTRMARK';
/**
 * How a plain array keeps it: the map literal's high and low words, each a u32 read big-endian
 * from the block and stored little-endian (the journal entry holds them side by side).
 */
const PATTERN_MARKER_STORED = 'RTSPKRAM';
/** Where the pattern blocks are: 1024 of PSTRMARK (a whole map page), then 'Q', 'PS', 'PSTR', then zeros. */
const PATTERN_AT = 16 * MiB;
const PATTERN_WORDS = [...Array<string>(1024).fill(PATTERN_MARKER), 'Q', 'PS', 'PSTR'];
const ZERO_BLOCKS = 4;

function markerImage(): Buffer {
  const image = Buffer.alloc(COPY_BYTES);
  // Numbered blocks (else dedup keeps one), each a run of the marker: what a leak would show.
  for (let at = 0; at < COPY_BYTES; at += BLOCK_BYTES) image.write(`${String(at / BLOCK_BYTES).padStart(8, '0')}|${MARKER.repeat(140)}`.slice(0, BLOCK_BYTES), at, 'latin1');
  PATTERN_WORDS.forEach((word, i) => image.fill(word, PATTERN_AT + i * BLOCK_BYTES, PATTERN_AT + (i + 1) * BLOCK_BYTES, 'latin1'));
  const zerosAt = PATTERN_AT + PATTERN_WORDS.length * BLOCK_BYTES;
  image.fill(0, zerosAt, zerosAt + ZERO_BLOCKS * BLOCK_BYTES);
  return image;
}

/** `grep -rc -F -e NEEDLE... dir`: each file's count of lines holding one of the needles. */
async function grepCounts(dir: string, needles: readonly string[] = [MARKER]): Promise<Map<string, number>> {
  const result = await run('grep', ['-rc', '-a', '-F', ...needles.flatMap((needle) => ['-e', needle]), dir]);
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

interface FillStats {
  physicalBytes: number;
  reduction: { patternBlocks: number };
}

/** Writes the image, and returns the array's stats once it is flushed. */
async function fillWithMarker(t: ExecutionContext, dataDir: string, args: string[], image: string): Promise<FillStats> {
  const server = await startServer(t, { dataDir, args: ['--capacity', '1G', ...args] });
  await mustRun('nbdcopy', ['--flush', image, server.unixUri()], { timeoutMs: 120_000 });
  const stats = await mustRun(process.execPath, [PSTORAGE_BIN, 'stats', '--data-dir', dataDir, '--json']);
  await stopServer(t, server);
  return JSON.parse(stats.stdout) as FillStats;
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
  const plainStats = await fillWithMarker(t, plainDir, [], image);
  const encryptedStats = await fillWithMarker(t, encryptedDir, ['--key-file', key], image);
  const plainCounts = await grepCounts(plainDir);
  t.true([...plainCounts.values()].some((count) => count > 0), `the plain array holds the marker: ${JSON.stringify([...plainCounts])}`);
  // One pass over the encrypted array (grep reads the sparse 1 GiB image whole): the marker, the
  // pattern word and the pattern word as a plain array's map stores it.
  const encryptedCounts = await grepCounts(encryptedDir, [MARKER, PATTERN_MARKER, PATTERN_MARKER_STORED]);
  t.true(encryptedCounts.size > 0, 'grep saw the encrypted array\'s files');
  t.deepEqual([...encryptedCounts].filter(([, count]) => count !== 0), [], `grep -c counts 0 (${MARKER}, ${PATTERN_MARKER}, ${PATTERN_MARKER_STORED}) in every file of the encrypted array`);

  // Pattern blocks: literals in a plain array's map (so this data does take that path there), data
  // in an encrypted one's: only the zero blocks may be patterns.
  t.true(plainStats.reduction.patternBlocks >= PATTERN_WORDS.length, `the plain array keeps the non-zero patterns as map literals: ${JSON.stringify(plainStats.reduction)}`);
  t.true(encryptedStats.reduction.patternBlocks <= ZERO_BLOCKS, `the encrypted array keeps no non-zero pattern in its map: ${JSON.stringify(encryptedStats.reduction)}`);
  // Where a plain array's literal shows (LevelDB's log, when it still holds the journal entry):
  // reported, not asserted, since compaction may have rewritten it by then.
  const plainLiterals = [...(await grepCounts(path.join(plainDir, 'meta'), [PATTERN_MARKER, PATTERN_MARKER_STORED]))].filter(([, count]) => count > 0);
  const physicalRatio = encryptedStats.physicalBytes / plainStats.physicalBytes;
  t.log(`physical bytes: plain ${plainStats.physicalBytes}, encrypted ${encryptedStats.physicalBytes} (ratio ${physicalRatio.toFixed(4)}); pattern blocks: plain ${plainStats.reduction.patternBlocks}, encrypted ${encryptedStats.reduction.patternBlocks}; ${PATTERN_MARKER}/${PATTERN_MARKER_STORED} in the plain array's metadata: ${JSON.stringify(plainLiterals)}`);
  t.true(Math.abs(physicalRatio - 1) <= 0.01, `encrypted physical bytes within 1 % of plain (ratio ${physicalRatio})`);

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
