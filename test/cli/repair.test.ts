/**
 * `pstorage inspect repair` against real damage: an array written by the engine and stopped
 * cleanly, then 4 KiB of seeded random bytes written over the LevelDB table block that holds each
 * sublevel's first keys in turn (and once over the write-ahead log). Per case: the real
 * `pstorage serve` is started on the damaged directory (it refuses, pointing at repair, or - for
 * the damage the open path does not read - starts), then the CLI's repair and audit run, and
 * every logical block of every volume and snapshot is read back: it must hold exactly what was
 * written or fail with EIO, never other data, and the blocks that fail must be exactly the ones
 * the repair report lists.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { concatReadExtents } from '../../src/common/block-device.js';
import { silentLogger } from '../../src/common/log.js';
import { tableBlocks } from '../../src/meta/leveldb-files.js';
import { FlashArray } from '../../src/volume/flash-array.js';
import type { RepairReport } from '../../src/volume/repair.js';
import { createSnapshot } from '../../src/volume/snapshots.js';
import { describeRun } from '../helpers/interop.js';
import { PSTORAGE_BIN } from '../helpers/pstorage-process.js';
import { BLOCK, pstorage } from './cli-run.js';

const MiB = 1024 * 1024;
const A_BLOCKS = 4096; // volume a: 16 MiB, 4 map pages
const B_BLOCKS = 2048; // volume b: 8 MiB
const A_WRITTEN = 3000;

/**
 * A temporary directory in memory when the machine has /dev/shm: every case opens the array four
 * times, and the fsyncs of those opens and closes were most of the file's time on a busy disk.
 */
function makeTempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), prefix));
}

/** Seeded content of a block: a differs per volume, block and generation. */
function content(volume: number, lba: number, generation: number): Buffer {
  const block = Buffer.alloc(BLOCK);
  for (let at = 0; at < BLOCK; at += 4) block.writeUInt32LE(((volume * 7919 + lba) * 2654435761 + generation * 40503 + at * 97) >>> 0, at);
  return block;
}

const ZERO = Buffer.alloc(BLOCK);
/** What every block of every export holds. */
const EXPECTED: Record<string, { blocks: number; at: (lba: number) => Buffer }> = {
  a: { blocks: A_BLOCKS, at: (lba) => (lba >= A_WRITTEN ? ZERO : content(1, lba, lba % 3 === 0 ? 1 : 0)) },
  'a@s1': { blocks: A_BLOCKS, at: (lba) => (lba >= A_WRITTEN ? ZERO : content(1, lba, 0)) },
  // b: every fifth block zero (a pattern entry), the rest repeating every 300 blocks (dedup).
  b: { blocks: B_BLOCKS, at: (lba) => (lba % 5 === 0 ? ZERO : content(2, lba % 300, 0)) },
};

/** The arrays the cases start from (plain, and encrypted with KEY), each made once: written, closed, reopened and closed again. */
const pristine = new Map<boolean, Promise<string>>();
const KEY = Buffer.alloc(32, 0x6b);

function pristineArray(encrypted = false): Promise<string> {
  const made = pristine.get(encrypted) ?? (async () => {
    const dataDir = path.join(makeTempDir('pstorage-repair-'), 'data');
    const keyFileBytes = encrypted ? KEY : undefined;
    const { array } = await FlashArray.open(dataDir, silentLogger, { capacityBytes: 64 * MiB, reductionWorkers: 0, keyFileBytes });
    const a = await array.createVolume('a', A_BLOCKS * BLOCK);
    const b = await array.createVolume('b', B_BLOCKS * BLOCK);
    for (let lba = 0; lba < A_WRITTEN; lba += 100) {
      const count = Math.min(100, A_WRITTEN - lba);
      await a.write(lba * BLOCK, Buffer.concat(Array.from({ length: count }, (_, i) => content(1, lba + i, 0))), { fua: false });
    }
    await createSnapshot(array, 'a', 's1');
    for (let lba = 0; lba < A_WRITTEN; lba += 3) await a.write(lba * BLOCK, content(1, lba, 1), { fua: false });
    for (let lba = 0; lba < B_BLOCKS; lba += 128) await b.write(lba * BLOCK, Buffer.concat(Array.from({ length: 128 }, (_, i) => EXPECTED.b!.at(lba + i))), { fua: false });
    await array.close();
    // The reopen turns LevelDB's log into a table: the damage below lands in table blocks.
    const { array: again } = await FlashArray.open(dataDir, silentLogger, { createIfMissing: false, reductionWorkers: 0, keyFileBytes });
    await again.close();
    return dataDir;
  })();
  pristine.set(encrypted, made);
  return made;
}

test.after.always(async () => {
  for (const made of pristine.values()) fs.rmSync(path.dirname(await made), { recursive: true, force: true });
});

/** Seeded bytes, so that a failure replays. */
function seededBytes(seed: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out[i] = state & 0xff;
  }
  return out;
}

/** Overwrites 4 KiB from the first table block holding a key of `sublevel`; returns the file. */
function damageSublevel(metaDir: string, sublevel: string, seed: number): string {
  const prefix = Buffer.from(`!${sublevel}!`, 'latin1');
  const inSublevel = (key: Buffer) => key.subarray(0, prefix.length).equals(prefix);
  for (const name of fs.readdirSync(metaDir).filter((file) => file.endsWith('.ldb')).sort()) {
    const file = path.join(metaDir, name);
    const bytes = fs.readFileSync(file);
    const block = tableBlocks(bytes).find((candidate) => inSublevel(candidate.firstKey) || inSublevel(candidate.lastKey) || (Buffer.compare(candidate.firstKey, prefix) < 0 && Buffer.compare(candidate.lastKey, prefix) > 0));
    if (block === undefined) continue;
    overwrite(file, block.offsetBytes, seed);
    return `${name} at ${block.offsetBytes}`;
  }
  throw new Error(`no table block holds keys of ${sublevel}`);
}

function damageLog(metaDir: string, seed: number): string {
  const name = fs.readdirSync(metaDir).find((file) => file.endsWith('.log'))!;
  overwrite(path.join(metaDir, name), 0, seed);
  return `${name} at 0`;
}

function overwrite(file: string, offsetBytes: number, seed: number): void {
  const length = Math.min(4096, fs.statSync(file).size - offsetBytes);
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, seededBytes(seed, length), 0, length, offsetBytes);
  } finally {
    fs.closeSync(fd);
  }
}

/** Starts `pstorage serve`; resolves with its exit and stderr, or 'started' once it listens (then stops it). */
function tryServe(dataDir: string): Promise<{ outcome: 'refused' | 'started'; code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [PSTORAGE_BIN, 'serve', '--data-dir', dataDir, '--socket', `${dataDir}.nbd.sock`], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, PSTORAGE_LOG: 'info', PSTORAGE_LISTEN: 'none' } });
    let stderr = '';
    let started = false;
    const timer = setTimeout(() => reject(new Error(`pstorage serve neither started nor failed in 30 s:\n${stderr}`)), 30_000);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text: string) => {
      stderr += text;
      if (!started && stderr.includes('"msg":"listening"')) {
        started = true;
        child.kill('SIGTERM');
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ outcome: started ? 'started' : 'refused', code, stderr });
    });
  });
}

/** Reads every block of every export: exact content, or EIO; returns the blocks that failed. */
async function readEverything(t: ExecutionContext, dataDir: string, keyFileBytes?: Buffer): Promise<Map<string, Set<number>>> {
  const { array } = await FlashArray.open(dataDir, silentLogger, { createIfMissing: false, reductionWorkers: 0, keyFileBytes });
  const failed = new Map<string, Set<number>>();
  try {
    for (const [name, expected] of Object.entries(EXPECTED)) {
      const device = array.lookup(name)!.device;
      const lost = new Set<number>();
      let wrong = 0;
      for (let lba = 0; lba < expected.blocks; lba++) {
        try {
          const data = concatReadExtents(await device.read(lba * BLOCK, BLOCK), BLOCK);
          if (!data.equals(expected.at(lba))) wrong += 1;
        } catch (error) {
          t.is((error as { code?: string }).code, 'CORRUPT', `${name} lba ${lba}: a lost block fails as CORRUPT (EIO)`);
          lost.add(lba);
        }
      }
      t.is(wrong, 0, `${name}: no block reads other data than was written`);
      failed.set(name, lost);
    }
  } finally {
    await array.close();
  }
  return failed;
}

function reportedBlocks(report: RepairReport): Map<string, Set<number>> {
  const out = new Map<string, Set<number>>(Object.keys(EXPECTED).map((name) => [name, new Set<number>()]));
  for (const entry of report.lost.exports) {
    for (const range of entry.ranges) for (let at = range.offsetBytes; at < range.offsetBytes + range.lengthBytes; at += BLOCK) out.get(entry.name)!.add(at / BLOCK);
  }
  return out;
}

interface Case {
  title: string;
  damage: (metaDir: string, seed: number) => string;
  /** What the unrepaired server does (observed; see the commit that added this test). */
  serve: 'refused' | 'started' | 'skipped';
  /** Sublevels the repair must find damaged. */
  damaged: string[];
  /** Whether blocks are lost (and then which exports lose some). */
  lost: string[];
}

const CASES: Case[] = [
  { title: 'chunks', damage: (dir, seed) => damageSublevel(dir, 'chunks', seed), serve: 'started', damaged: ['chunks'], lost: [] },
  { title: 'erase-blocks', damage: (dir, seed) => damageSublevel(dir, 'erase-blocks', seed), serve: 'refused', damaged: ['erase-blocks'], lost: [] },
  { title: 'fingerprints', damage: (dir, seed) => damageSublevel(dir, 'fingerprints', seed), serve: 'refused', damaged: ['fingerprints'], lost: [] },
  { title: 'journal', damage: (dir, seed) => damageSublevel(dir, 'journal', seed), serve: 'started', damaged: ['journal'], lost: [] },
  { title: 'map', damage: (dir, seed) => damageSublevel(dir, 'map', seed), serve: 'refused', damaged: ['map'], lost: ['a', 'a@s1'] },
  // 'snapshots', 'super' and 'volumes' are a few small keys that share one table block.
  { title: 'snapshots, super and volumes', damage: (dir, seed) => damageSublevel(dir, 'snapshots', seed), serve: 'refused', damaged: ['snapshots', 'super', 'volumes'], lost: [] },
  // The log holds the last commits, whose keys cannot be known once a record is lost: everything
  // is marked lost. (The server is not started first: LevelDB's open skips a damaged log record
  // without a word and turns the log into a table, so the damage would be gone, unseen.)
  { title: 'the write-ahead log', damage: (dir, seed) => damageLog(dir, seed), serve: 'skipped', damaged: [], lost: ['a', 'a@s1', 'b'] },
];

for (const [index, testCase] of CASES.entries()) {
  test.serial(`repair after 4 KiB of damage in ${testCase.title}`, async (t) => {
    const seed = 0x5eed + index;
    const dataDir = path.join(makeTempDir('pstorage-repair-case-'), 'data');
    t.teardown(() => fs.rmSync(path.dirname(dataDir), { recursive: true, force: true }));
    fs.cpSync(await pristineArray(), dataDir, { recursive: true });
    t.log(`damaged ${testCase.damage(path.join(dataDir, 'meta'), seed)} (seed ${seed})`);

    const before = testCase.serve === 'skipped' ? { outcome: 'skipped', code: null, stderr: '' } : await tryServe(dataDir);
    t.is(before.outcome, testCase.serve, `the damaged array: serve ${before.outcome}\n${before.stderr}`);
    if (before.outcome === 'refused') {
      t.is(before.code, 1);
      t.regex(before.stderr, /damaged: stop every pstorage process .* then run "pstorage inspect repair --data-dir /, 'the refusal says what to do');
    }

    const started = Date.now();
    const repaired = await pstorage(dataDir, ['inspect', 'repair', '--json']);
    t.log(`repair: exit ${repaired.code} in ${Date.now() - started} ms`);
    t.true(repaired.code === 0 || repaired.code === 4, describeRun(repaired));
    const report = JSON.parse(repaired.stdout) as RepairReport;
    t.true(report.ok, `audit after repair: ${report.audit.problems.join('; ')}`);
    for (const sublevel of testCase.damaged) t.true(report.damagedSublevels.includes(sublevel as never), `${sublevel} found damaged (found: ${report.damagedSublevels.join(', ')})`);
    t.is(repaired.code, testCase.lost.length > 0 ? 4 : 0, 'exit 4 exactly when blocks were lost');
    t.deepEqual(report.lost.exports.map((entry) => entry.name).sort(), [...testCase.lost].sort(), 'the exports that lost blocks');

    const audit = await pstorage(dataDir, ['inspect', 'audit']);
    t.is(audit.code, 0, describeRun(audit));

    const failed = await readEverything(t, dataDir);
    const reported = reportedBlocks(report);
    for (const name of Object.keys(EXPECTED)) {
      t.deepEqual([...failed.get(name)!].sort((x, y) => x - y), [...reported.get(name)!].sort((x, y) => x - y), `${name}: the blocks that read as EIO are exactly the ones reported lost`);
    }
    t.log(`lost: ${report.lost.exports.map((entry) => `${entry.name} ${entry.lostBytes / BLOCK} blocks`).join(', ') || 'nothing'}; ${report.rebuilt.length} structures rebuilt; ${report.durationMs} ms`);
    if (testCase.title === 'map') await serveAndRewrite(t, dataDir, report);
  });
}

/** After a repair the server starts, and a lost block can be written again. */
async function serveAndRewrite(t: ExecutionContext, dataDir: string, report: RepairReport): Promise<void> {
  const lostLba = report.lost.exports.find((entry) => entry.name === 'a')!.ranges[0]!.offsetBytes / BLOCK;
  const served = await tryServe(dataDir);
  t.is(served.outcome, 'started', served.stderr);
  t.is(served.code, 0, 'and stops cleanly');
  const { array } = await FlashArray.open(dataDir, silentLogger, { createIfMissing: false, reductionWorkers: 0 });
  try {
    const volume = array.volumes.get('a')!;
    await t.throwsAsync(volume.read(lostLba * BLOCK, BLOCK), { message: /lost in a metadata repair/ });
    await t.throwsAsync(volume.write(lostLba * BLOCK + 512, Buffer.alloc(512, 1), { fua: false }), { message: /lost in a metadata repair/ }, 'a partial write has nothing to merge into');
    const fresh = content(9, lostLba, 9);
    await volume.write(lostLba * BLOCK, fresh, { fua: true });
    t.true(concatReadExtents(await volume.read(lostLba * BLOCK, BLOCK), BLOCK).equals(fresh), 'a whole-block write replaces the lost entry');
  } finally {
    await array.close();
  }
  t.is((await pstorage(dataDir, ['inspect', 'audit'])).code, 0);
}

test.serial('repair refuses while the server runs', async (t) => {
  const dataDir = path.join(makeTempDir('pstorage-repair-busy-'), 'data');
  t.teardown(() => fs.rmSync(path.dirname(dataDir), { recursive: true, force: true }));
  fs.cpSync(await pristineArray(), dataDir, { recursive: true });
  const child = spawn(process.execPath, [PSTORAGE_BIN, 'serve', '--data-dir', dataDir, '--socket', `${dataDir}.nbd.sock`], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, PSTORAGE_LOG: 'info', PSTORAGE_LISTEN: 'none' } });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  await new Promise<void>((resolve) => child.stderr.on('data', (text: string) => ((stderr += text), stderr.includes('"msg":"listening"') && resolve())));
  const refused = await pstorage(dataDir, ['inspect', 'repair']);
  child.kill('SIGTERM');
  await new Promise((resolve) => child.once('exit', resolve));
  t.is(refused.code, 3, describeRun(refused));
  t.regex(refused.stderr, /server is running .* stop it first/);
  t.false(fs.readdirSync(dataDir).some((name) => name.startsWith('meta.damaged')), 'nothing was touched');
});

test.serial('repair of an encrypted array: refused without its key file or with another, then chunk entries rebuilt from decrypted records with their keyed fingerprints', async (t) => {
  const dataDir = path.join(makeTempDir('pstorage-repair-encrypted-'), 'data');
  t.teardown(() => fs.rmSync(path.dirname(dataDir), { recursive: true, force: true }));
  fs.cpSync(await pristineArray(true), dataDir, { recursive: true });
  const keyFile = path.join(path.dirname(dataDir), 'array.key');
  const otherKeyFile = path.join(path.dirname(dataDir), 'other.key');
  fs.writeFileSync(keyFile, KEY);
  fs.writeFileSync(otherKeyFile, Buffer.alloc(32, 0x6c));
  t.log(`damaged ${damageSublevel(path.join(dataDir, 'meta'), 'chunks', 0xc0de)}`);
  const untouched = () => !fs.readdirSync(dataDir).some((name) => name.startsWith('meta.damaged') || name === 'meta.repair');

  const withoutKey = await pstorage(dataDir, ['inspect', 'repair']);
  t.is(withoutKey.code, 2, describeRun(withoutKey)); // a bad argument: the message says what to pass
  t.regex(withoutKey.stderr, /encrypted: pass its key file with --key-file/);
  const wrongKey = await pstorage(dataDir, ['inspect', 'repair', '--key-file', otherKeyFile]);
  t.is(wrongKey.code, 2, describeRun(wrongKey));
  t.regex(wrongKey.stderr, /wrong key: the key file does not unlock/);
  t.true(untouched(), 'neither touched the data directory');

  const repaired = await pstorage(dataDir, ['inspect', 'repair', '--json', '--key-file', keyFile]);
  t.is(repaired.code, 0, describeRun(repaired));
  const report = JSON.parse(repaired.stdout) as RepairReport;
  t.true(report.ok, `audit after repair: ${report.audit.problems.join('; ')}`);
  t.true(report.damagedSublevels.includes('chunks' as never));
  const rebuilt = report.rebuilt.find((line) => line.startsWith('chunk table:'))!;
  const fromNand = Number(/\((\d+) rebuilt from NAND records\)/.exec(rebuilt)?.[1] ?? 0);
  t.true(fromNand > 0, `some chunk entries came from NAND records: ${rebuilt}`);

  const unkeyedAudit = await pstorage(dataDir, ['inspect', 'audit']);
  t.is(unkeyedAudit.code, 2, describeRun(unkeyedAudit));
  const audit = await pstorage(dataDir, ['inspect', 'audit', '--key-file', keyFile]);
  t.is(audit.code, 0, describeRun(audit));
  const auditByEnvironment = await pstorage(dataDir, ['inspect', 'audit'], { env: { PSTORAGE_KEY_FILE: keyFile } });
  t.is(auditByEnvironment.code, 0, describeRun(auditByEnvironment));
  const failed = await readEverything(t, dataDir, KEY);
  for (const name of Object.keys(EXPECTED)) t.is(failed.get(name)!.size, 0, `${name}: nothing lost`);

  // The rebuilt fingerprints are the array's keyed ones over the clear blocks: a copy of one of the
  // first blocks written (their chunks have the lowest ids, whose entries were in the damaged table
  // block) written again now dedups against it (a fingerprint of the ciphertext, or under another
  // key, would not match, and the block would be stored again).
  const { array } = await FlashArray.open(dataDir, silentLogger, { createIfMissing: false, reductionWorkers: 0, keyFileBytes: KEY });
  try {
    const a = array.volumes.get('a')!;
    const hits = a.record.dedupHits;
    const copies = [1, 2, 4, 5, 7, 8, 10, 11].map((lba) => EXPECTED['a@s1']!.at(lba));
    await a.write(A_WRITTEN * BLOCK, Buffer.concat(copies), { fua: true });
    t.is(a.record.dedupHits - hits, copies.length, 'every copy deduplicated');
  } finally {
    await array.close();
  }
});
