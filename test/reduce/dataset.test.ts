/**
 * A realistic dataset against the real server: an ext4 image (`mkfs.ext4 -d`) of copies of system
 * files — documentation (text, many small and gzip-compressed files), C headers (text) and shared
 * libraries (binaries), plus a second copy of the libraries — about 150–200 MiB of files.
 *
 * `pstorage estimate --json` predicts what the array will store; a fresh `pstorage serve` gets
 * the image with nbdcopy, and its physicalBytes must match the estimate within 2 %. (nbdcopy
 * skips zero regions and sends WRITE_ZEROES for them; the estimator counts those blocks as
 * patterns: both cost 0 physical bytes.) The image is then written again at 8 GiB into the
 * export (nbdkit's offset filter): physicalBytes must grow by less than 1 %. Both copies are read
 * back and must equal the image byte for byte.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { GiB, MiB, mustRun, requireTools, sha256File, startServer, stopServer, tempDir } from '../helpers/interop.js';
import { estimateImage, exportWindow, serverStats } from '../helpers/reduce-server.js';

/** Where the files come from, in order, with how much of each to take. */
const SOURCES: Array<{ dir: string; budgetBytes: number; name: string; accept?: (file: string) => boolean }> = [
  { dir: '/usr/share/doc', budgetBytes: 50 * MiB, name: 'doc' },
  { dir: '/usr/include', budgetBytes: 30 * MiB, name: 'include' },
  { dir: '/usr/lib/x86_64-linux-gnu', budgetBytes: 50 * MiB, name: 'lib', accept: (file) => /\.so(\.|$)/.test(file) },
  { dir: '/usr/lib', budgetBytes: 50 * MiB, name: 'lib-any', accept: (file) => /\.so(\.|$)/.test(file) },
];
const MIN_DATASET_BYTES = 80 * MiB;
const SECOND_COPY_OFFSET = 8 * GiB;

/** Regular files under `dir` in sorted order (deterministic), without following symlinks. */
function* walk(dir: string): Generator<string> {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) yield* walk(full);
    else if (entry.isFile()) yield full;
  }
}

/** Copies files from `source` into `target` until `budgetBytes`; returns the bytes copied. */
function copyTree(source: string, target: string, budgetBytes: number, accept: (file: string) => boolean = () => true): number {
  let total = 0;
  for (const file of walk(source)) {
    if (!accept(file)) continue;
    let size: number;
    try {
      size = fs.statSync(file).size;
    } catch {
      continue;
    }
    if (size === 0 || size > budgetBytes - total) {
      if (budgetBytes - total < 64 * 1024) break;
      continue;
    }
    const destination = path.join(target, path.relative(source, file));
    try {
      fs.mkdirSync(path.dirname(destination), { recursive: true });
      fs.copyFileSync(file, destination);
    } catch {
      continue;
    }
    total += size;
  }
  return total;
}

/** The dataset directory: system files plus a second copy of the libraries. */
function buildDataset(dir: string): { bytes: number; duplicateBytes: number; parts: string[] } {
  const parts: string[] = [];
  let bytes = 0;
  let duplicateBytes = 0;
  let libraryDir: string | null = null;
  for (const source of SOURCES) {
    if (source.name === 'lib-any' && libraryDir !== null) continue;
    if (!fs.existsSync(source.dir)) continue;
    const target = path.join(dir, source.name);
    const copied = copyTree(source.dir, target, source.budgetBytes, source.accept);
    if (copied === 0) continue;
    if (source.accept !== undefined) libraryDir = target;
    parts.push(`${source.name} ${(copied / MiB).toFixed(1)} MiB`);
    bytes += copied;
  }
  if (libraryDir !== null) {
    fs.cpSync(libraryDir, path.join(dir, 'lib-copy'), { recursive: true });
    const copied = [...walk(libraryDir)].reduce((sum, file) => sum + fs.statSync(file).size, 0);
    parts.push(`second copy of the libraries ${(copied / MiB).toFixed(1)} MiB`);
    bytes += copied;
    duplicateBytes = copied;
  }
  return { bytes, duplicateBytes, parts };
}

function mkfsExt4(): string {
  for (const candidate of ['/usr/sbin/mkfs.ext4', '/sbin/mkfs.ext4']) if (fs.existsSync(candidate)) return candidate;
  return 'mkfs.ext4';
}

test('dataset: ext4 image of system files — array physicalBytes matches the estimate within 2 %; a second copy grows it < 1 %', async (t) => {
  requireTools(['nbdcopy', 'nbdkit']);
  const dir = tempDir(t, 'pstorage-reduce-');
  const started = Date.now();
  const dataset = buildDataset(path.join(dir, 'files'));
  t.log(`dataset: ${(dataset.bytes / MiB).toFixed(1)} MiB of files (${dataset.parts.join(', ')})`);
  t.true(dataset.bytes >= MIN_DATASET_BYTES, `this machine gave only ${dataset.bytes} bytes of system files (need ${MIN_DATASET_BYTES})`);

  const image = path.join(dir, 'ext4.img');
  const imageBytes = Math.ceil((dataset.bytes * 1.3 + 64 * MiB) / MiB) * MiB;
  fs.closeSync(fs.openSync(image, 'w'));
  fs.truncateSync(image, imageBytes);
  await mustRun(mkfsExt4(), ['-q', '-F', '-b', '4096', '-d', path.join(dir, 'files'), image], { timeoutMs: 120_000 });
  fs.rmSync(path.join(dir, 'files'), { recursive: true, force: true });
  const imageHash = await sha256File(image);

  const estimate = await estimateImage(image);
  t.log(`estimate: logical ${estimate.logicalBytes}, physical ${estimate.physicalBytes}, DRR ${estimate.dataReductionRatio} (pattern ${estimate.patternBlocks}, duplicate ${estimate.duplicateBlocks}, unique ${estimate.uniqueBlocks} blocks)`);
  t.is(estimate.logicalBytes, imageBytes);
  t.true(estimate.duplicateBlocks * 4096 >= 0.9 * dataset.duplicateBytes, 'the estimator finds the second copy of the libraries');

  const server = await startServer(t);
  await mustRun('nbdcopy', ['--flush', image, server.unixUri()], { timeoutMs: 180_000 });
  const first = await serverStats(server);
  const deviation = first.physicalBytes / estimate.physicalBytes - 1;
  t.log(`array after one copy: logical ${first.logicalBytes}, physical ${first.physicalBytes}, DRR ${first.dataReductionRatio}, deviation from estimate ${(deviation * 100).toFixed(3)} %`);
  t.true(first.physicalBytes > 0);
  t.true(Math.abs(deviation) <= 0.02, `physicalBytes ${first.physicalBytes} vs estimate ${estimate.physicalBytes}`);

  await mustRun('nbdcopy', ['--flush', image, '--', ...exportWindow(server, SECOND_COPY_OFFSET, imageBytes)], { timeoutMs: 180_000 });
  const second = await serverStats(server);
  const growth = second.physicalBytes - first.physicalBytes;
  t.log(`array after two copies: logical ${second.logicalBytes}, physical ${second.physicalBytes}, DRR ${second.dataReductionRatio}, growth ${growth} bytes`);
  t.true(growth < 0.01 * first.physicalBytes, `the second copy grew physicalBytes by ${growth}`);
  t.true(second.logicalBytes >= 2 * first.logicalBytes - 64 * 4096, 'the second copy is mapped');

  for (const [label, offset] of [['first copy', 0], ['second copy', SECOND_COPY_OFFSET]] as const) {
    const out = path.join(dir, 'out.img');
    await mustRun('nbdcopy', ['--', ...exportWindow(server, offset, imageBytes), out], { timeoutMs: 180_000 });
    t.is(await sha256File(out), imageHash, `${label} reads back as the image`);
    fs.rmSync(out);
  }
  t.log(`total ${Date.now() - started} ms`);
  await stopServer(t, server);
});
