/**
 * Experiment 3 of the benchmark issue: data reduction on realistic data sets. Each data set
 * (datasets.ts) is written over NBD (`nbdcopy --flush`) into a fresh pstorage array of its own,
 * and the array's `physicalBytes` (from `pstorage stats --json`, read before and after) is set
 * beside an ideal the script computes itself, without any of pstorage's code:
 *
 *   - the data is cut into 4 KiB logical blocks (a short last block padded with zeroes);
 *   - an all-zero block costs 0;
 *   - a block whose SHA-256 (node:crypto) was seen before anywhere in the same array costs 0, so
 *     a second copy of an image adds nothing;
 *   - every other block costs min(4096, its LZ4 block-compressed size). The compressor is
 *     lz4-napi's `compressSync`, which returns lz4_flex's `compress_prepend_size` output: a 4-byte
 *     little-endian uncompressed length followed by a raw LZ4 block. The ideal counts the raw
 *     block only (length minus 4); the prefix is checked to be 4096 on every block.
 *
 * To explain the gap, the same pass also evaluates pstorage's documented storage rules (README
 * "stats", src/reduce/codec.ts and pattern.ts, re-implemented here, not imported): a block that is
 * one 8-byte word repeated (zero included) costs 0; a stored chunk is the `compressSync` output
 * (prefix included) when that is at least 256 bytes smaller than 4096, else the raw 4096 bytes;
 * every stored chunk carries a 16-byte record header. So
 *
 *   model = ideal + 16 x stored chunks + 4 x compressed chunks
 *                 + (4096 - LZ4 size) for blocks kept raw although LZ4 shrank them
 *                 - the ideal's cost of non-zero repeated-word blocks,
 *
 * and array - model should be 0; array - ideal is the format's overhead. A whole-file `zstd -3`
 * size is given for context (what a general-purpose compressor gets with no block boundaries).
 */
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { compressSync } from 'lz4-napi';
import type { ExperimentContext, ExperimentResult } from '../extensions.js';
import { runChecked, runCommand } from '../processes.js';
import { startPstorage, type RunningServer } from '../servers.js';
import { formatCompact, renderBarChart, type BarChart } from '../svg-chart.js';
import { LOGICAL_BLOCK_BYTES, makeExt4Image, makeTarGz, stageSystemFiles, writeLogs, type LogFile, type StagedFiles } from './datasets.js';

const PURPOSE = "data reduction on realistic data sets: the array's physical bytes next to an independently computed ideal (4 KiB dedup + per-block LZ4)";
const MiB = 1024 * 1024;
/** The seed of every generated data set; printed in the report so that a run can be repeated. */
const SEED = 20_240_312;
const RECORD_HEADER_BYTES = 16;
const LZ4_PREFIX_BYTES = 4;
const MIN_SAVING_BYTES = 256;
const COPY_TIMEOUT_MS = 30 * 60_000;
const CLI_TIMEOUT_MS = 120_000;

interface Sizes {
  imageBytes: number;
  uniqueFileBytes: number;
  duplicateFileBytes: number;
  logBytes: number;
}

const SIZES: Record<'full' | 'quick', Sizes> = {
  full: { imageBytes: 512 * MiB, uniqueFileBytes: 240 * MiB, duplicateFileBytes: 64 * MiB, logBytes: 256 * MiB },
  quick: { imageBytes: 32 * MiB, uniqueFileBytes: 12 * MiB, duplicateFileBytes: 3 * MiB, logBytes: 8 * MiB },
};

// ---------------------------------------------------------------------------------------------
// The independent ideal

export interface IdealTotals {
  logicalBytes: number;
  blocks: number;
  zeroBlocks: number;
  duplicateBlocks: number;
  uniqueBlocks: number;
  /** Sum over unique non-zero blocks of min(4096, raw LZ4 block size): the ideal. */
  idealBytes: number;
  /** pstorage's documented rules (see the module comment). */
  modelBytes: number;
  modelStoredChunks: number;
  modelCompressedChunks: number;
  /** Unique blocks the model keeps raw although LZ4 made them smaller, and what that costs. */
  modelRawBlocks: number;
  modelRawLossBytes: number;
  /** Unique non-zero blocks of one repeated 8-byte word (free in pstorage), and their ideal cost. */
  patternBlocks: number;
  patternIdealBytes: number;
}

function emptyTotals(): IdealTotals {
  return { logicalBytes: 0, blocks: 0, zeroBlocks: 0, duplicateBlocks: 0, uniqueBlocks: 0, idealBytes: 0, modelBytes: 0, modelStoredChunks: 0, modelCompressedChunks: 0, modelRawBlocks: 0, modelRawLossBytes: 0, patternBlocks: 0, patternIdealBytes: 0 };
}

function difference(after: IdealTotals, before: IdealTotals): IdealTotals {
  const result = emptyTotals();
  for (const key of Object.keys(result) as (keyof IdealTotals)[]) result[key] = after[key] - before[key];
  return result;
}

const ZERO_BLOCK = Buffer.alloc(LOGICAL_BLOCK_BYTES);

/** True when the block is one 8-byte word repeated (the block compared with itself shifted by 8). */
function isRepeatedWord(block: Buffer): boolean {
  return block.compare(block, 8, block.length, 0, block.length - 8) === 0;
}

/** The ideal and the model for one array: the dedup set spans every file added to it. */
export class IdealReducer {
  private readonly seen = new Set<string>();
  private readonly totals = emptyTotals();

  /** Adds the file's blocks; returns what they added (a file seen before adds only duplicates). */
  async addFile(filePath: string): Promise<IdealTotals> {
    const before = { ...this.totals };
    const handle = await fs.promises.open(filePath, 'r');
    const buffer = Buffer.alloc(4 * MiB);
    try {
      for (;;) {
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
        if (bytesRead === 0) break;
        const wholeBytes = Math.ceil(bytesRead / LOGICAL_BLOCK_BYTES) * LOGICAL_BLOCK_BYTES;
        buffer.fill(0, bytesRead, wholeBytes); // a short last block is zero-padded, as on a volume
        for (let at = 0; at < wholeBytes; at += LOGICAL_BLOCK_BYTES) this.addBlock(buffer.subarray(at, at + LOGICAL_BLOCK_BYTES));
      }
    } finally {
      await handle.close();
    }
    return difference(this.totals, before);
  }

  private addBlock(block: Buffer): void {
    const t = this.totals;
    t.blocks += 1;
    t.logicalBytes += LOGICAL_BLOCK_BYTES;
    if (block.equals(ZERO_BLOCK)) {
      t.zeroBlocks += 1;
      return;
    }
    const key = createHash('sha256').update(block).digest('base64');
    if (this.seen.has(key)) {
      t.duplicateBlocks += 1;
      return;
    }
    this.seen.add(key);
    t.uniqueBlocks += 1;
    const framed = compressSync(block);
    if (framed.readUInt32LE(0) !== LOGICAL_BLOCK_BYTES) throw new Error(`lz4-napi compressSync no longer starts with the 4-byte block length (got ${framed.readUInt32LE(0)}); the ideal's LZ4 size would be wrong`);
    const lz4Bytes = framed.length - LZ4_PREFIX_BYTES;
    const idealBytes = Math.min(LOGICAL_BLOCK_BYTES, lz4Bytes);
    t.idealBytes += idealBytes;
    if (isRepeatedWord(block)) {
      t.patternBlocks += 1;
      t.patternIdealBytes += idealBytes;
      return;
    }
    const compressed = framed.length + MIN_SAVING_BYTES <= LOGICAL_BLOCK_BYTES;
    t.modelStoredChunks += 1;
    t.modelBytes += RECORD_HEADER_BYTES + (compressed ? framed.length : LOGICAL_BLOCK_BYTES);
    if (compressed) t.modelCompressedChunks += 1;
    else if (lz4Bytes < LOGICAL_BLOCK_BYTES) {
      t.modelRawBlocks += 1;
      t.modelRawLossBytes += LOGICAL_BLOCK_BYTES - lz4Bytes;
    }
  }
}

/** Bytes of `zstd -3` over the whole file (no block boundaries, one thread), or null without zstd. */
function zstdWholeFileBytes(filePath: string): Promise<number | null> {
  return new Promise((resolve) => {
    const child = spawn('zstd', ['-q', '-3', '-T1', '-c', filePath], { stdio: ['ignore', 'pipe', 'ignore'] });
    let bytes = 0;
    child.stdout.on('data', (chunk: Buffer) => (bytes += chunk.length));
    child.once('error', () => resolve(null));
    child.once('close', (code) => resolve(code === 0 ? bytes : null));
  });
}

// ---------------------------------------------------------------------------------------------
// The arrays

interface ArrayStats {
  physicalBytes: number;
  logicalBytes: number;
  dataReductionRatio: number;
  reduction: Record<string, unknown>;
}

interface ArraySession {
  name: string;
  dataDir: string;
  server: RunningServer;
}

function pstorageCli(context: ExperimentContext, args: string[]): Promise<string> {
  return runChecked(process.execPath, [path.join(context.repoRoot, 'bin/pstorage.js'), ...args], CLI_TIMEOUT_MS);
}

async function readStats(context: ExperimentContext, session: ArraySession): Promise<ArrayStats> {
  const stats = JSON.parse(await pstorageCli(context, ['stats', '--json', '--data-dir', session.dataDir])) as ArrayStats;
  if (typeof stats.physicalBytes !== 'number') throw new Error(`pstorage stats --json has no physicalBytes: ${JSON.stringify(stats).slice(0, 300)}`);
  return stats;
}

async function startArray(context: ExperimentContext, name: string): Promise<ArraySession> {
  // Short names: the management socket (DATA_DIR/pstorage.sock) must fit a Unix socket path.
  const workDir = path.join(context.scratchDir, name);
  const dataDir = path.join(workDir, 'd');
  fs.mkdirSync(workDir, { recursive: true });
  const server = await startPstorage({ repoRoot: context.repoRoot, dataDir, workDir, transport: context.options.transport, name: `reduction-${name}` });
  context.cleanup(`stop the reduction experiment's pstorage "${name}"`, async () => void (await server.stop()));
  return { name, dataDir, server };
}

/** Stops the array's server; returns what went wrong (unclean exit, warn/error log lines). */
async function stopArray(session: ArraySession): Promise<string[]> {
  const stop = await session.server.stop();
  const problems = session.server.problems().map((problem) => `array "${session.name}": ${problem}`);
  if (stop.killed || stop.code !== 0) problems.push(`array "${session.name}": pstorage did not stop cleanly (${stop.killed ? 'killed after the grace period' : `exit ${stop.code ?? stop.signal}`}); log ${session.server.logPath}`);
  return problems;
}

/** The URI of another volume of the same server (the export name is the volume name). */
function volumeUri(uri: string, volume: string): string {
  return uri.replace('/default', `/${volume}`);
}

async function copyInto(source: string, uri: string): Promise<number> {
  const result = await runCommand('nbdcopy', ['--flush', source, uri], { timeoutMs: COPY_TIMEOUT_MS });
  if (result.code !== 0) throw new Error(`nbdcopy --flush ${source} ${uri} ${result.timedOut ? 'timed out' : `exited with ${result.code ?? result.signal}`}: ${result.stderr.trim()}`);
  return result.wallSeconds;
}

// ---------------------------------------------------------------------------------------------
// The experiment

interface DataSetPlan {
  id: string;
  label: string;
  description: string;
  file: string;
  /** The array (a fresh pstorage) it goes into, and the volume. */
  array: string;
  volume: string;
}

export interface DataSetRow {
  id: string;
  label: string;
  description: string;
  array: string;
  volume: string;
  logicalBytes: number;
  ideal: IdealTotals;
  zstdWholeFileBytes: number | null;
  arrayPhysicalBytesBefore: number;
  arrayPhysicalBytesAfter: number;
  /** What this data set added to the array's physicalBytes. */
  arrayPhysicalBytes: number;
  arrayOverIdeal: number | null;
  arrayMinusIdealBytes: number;
  arrayMinusModelBytes: number;
  /** logicalBytes / arrayPhysicalBytes (null when the set added nothing). */
  dataReductionRatio: number | null;
  /** The array's own `dataReductionRatio` (mapped bytes / physical) after this set. */
  arrayReportedDataReductionRatio: number;
  arrayReduction: Record<string, unknown>;
  writeSeconds: number;
  writeMiBPerSecond: number;
}

interface Prepared {
  plans: DataSetPlan[];
  staged: StagedFiles;
  logFiles: LogFile[];
  prepareSeconds: number;
}

async function prepareDataSets(context: ExperimentContext, sizes: Sizes): Promise<Prepared> {
  const started = Date.now();
  const dir = path.join(context.scratchDir, 'datasets');
  fs.mkdirSync(dir, { recursive: true });
  const staged = stageSystemFiles(path.join(dir, 'staging'), { uniqueBytes: sizes.uniqueFileBytes, duplicateBytes: sizes.duplicateFileBytes, seed: SEED });
  context.log(`reduction: staged ${staged.files} system files (${(staged.fileBytes / MiB).toFixed(0)} MiB, ${(staged.duplicateBytes / MiB).toFixed(0)} MiB of them duplicates)`);
  const image = path.join(dir, 'system-files.ext4');
  await makeExt4Image(staged.dir, image, sizes.imageBytes);
  const logs = path.join(dir, 'logs.txt');
  const logFiles = writeLogs(logs, { bytes: sizes.logBytes, seed: SEED });
  const archive = path.join(dir, 'system-files.tar.gz');
  await makeTarGz(staged.dir, archive);
  const mib = (file: string): string => `${(fs.statSync(file).size / MiB).toFixed(0)} MiB`;
  const plans: DataSetPlan[] = [
    { id: 'ext4-image', label: 'ext4 image of system files', description: `${mib(image)} ext4 image (mke2fs -d) holding ${staged.files} files copied from ${staged.entries.length} entries of /usr/share and /usr/lib/<multiarch>, ${(staged.duplicateBytes / MiB).toFixed(0)} MiB of them twice (backup/)`, file: image, array: 'image', volume: 'default' },
    { id: 'ext4-image-copy', label: 'second copy of the image', description: 'the same image again, into a second volume of the same array', file: image, array: 'image', volume: 'copy2' },
    { id: 'text-logs', label: 'text logs', description: `${mib(logs)} of generated logs: ${logFiles.map((log) => `${log.name} ${(log.bytes / MiB).toFixed(0)} MiB`).join(', ')}`, file: logs, array: 'logs', volume: 'default' },
    { id: 'tar-gz', label: '.tar.gz of the same files', description: `${mib(archive)} tar | gzip -6 of the staged files (already compressed)`, file: archive, array: 'archive', volume: 'default' },
  ];
  return { plans, staged, logFiles, prepareSeconds: (Date.now() - started) / 1000 };
}

/** Writes one data set into its array and measures it; the ideal increment was computed before. */
async function measureDataSet(context: ExperimentContext, session: ArraySession, plan: DataSetPlan, ideal: IdealTotals, zstdBytes: number | null): Promise<DataSetRow> {
  const logicalBytes = fs.statSync(plan.file).size;
  if (plan.volume !== 'default') await pstorageCli(context, ['volume', 'create', plan.volume, '--size', `${Math.ceil(logicalBytes / MiB)}M`, '--data-dir', session.dataDir]);
  const before = await readStats(context, session);
  context.log(`reduction: writing ${plan.label} (${(logicalBytes / MiB).toFixed(0)} MiB) into array "${session.name}" volume ${plan.volume}`);
  const writeSeconds = await copyInto(plan.file, volumeUri(session.server.uri, plan.volume));
  const after = await readStats(context, session);
  const added = after.physicalBytes - before.physicalBytes;
  return {
    id: plan.id,
    label: plan.label,
    description: plan.description,
    array: session.name,
    volume: plan.volume,
    logicalBytes,
    ideal,
    zstdWholeFileBytes: zstdBytes,
    arrayPhysicalBytesBefore: before.physicalBytes,
    arrayPhysicalBytesAfter: after.physicalBytes,
    arrayPhysicalBytes: added,
    arrayOverIdeal: ideal.idealBytes > 0 ? round(added / ideal.idealBytes, 4) : null,
    arrayMinusIdealBytes: added - ideal.idealBytes,
    arrayMinusModelBytes: added - ideal.modelBytes,
    dataReductionRatio: added > 0 ? round(logicalBytes / added, 3) : null,
    arrayReportedDataReductionRatio: after.dataReductionRatio,
    arrayReduction: after.reduction,
    writeSeconds: round(writeSeconds, 3),
    writeMiBPerSecond: round(logicalBytes / MiB / writeSeconds, 1),
  };
}

function round(value: number, digits: number): number {
  return Number(value.toFixed(digits));
}

/** Runs the data sets of one array: computes their ideal, starts a fresh pstorage, writes them. */
async function runArray(context: ExperimentContext, name: string, plans: readonly DataSetPlan[], sessions: ArraySession[], problems: string[]): Promise<DataSetRow[]> {
  const reducer = new IdealReducer();
  const ideals: IdealTotals[] = [];
  const zstd = new Map<string, number | null>();
  for (const plan of plans) {
    ideals.push(await reducer.addFile(plan.file));
    if (!zstd.has(plan.file)) zstd.set(plan.file, await zstdWholeFileBytes(plan.file));
  }
  const session = await startArray(context, name);
  sessions.push(session);
  const rows: DataSetRow[] = [];
  try {
    for (const [index, plan] of plans.entries()) {
      // The whole-file figure describes the file, not the array: given at its first appearance only.
      const zstdBytes = plans.findIndex((other) => other.file === plan.file) === index ? zstd.get(plan.file)! : null;
      rows.push(await measureDataSet(context, session, plan, ideals[index]!, zstdBytes));
    }
  } finally {
    problems.push(...(await stopArray(session)));
  }
  return rows;
}

export async function runReductionDatasets(context: ExperimentContext): Promise<ExperimentResult> {
  const started = Date.now();
  const sizes = context.options.quick ? SIZES.quick : SIZES.full;
  const sessions: ArraySession[] = [];
  const problems: string[] = [];
  const rows: DataSetRow[] = [];
  let prepared: Prepared | null = null;
  try {
    prepared = await prepareDataSets(context, sizes);
    context.log(`reduction: data sets ready after ${prepared.prepareSeconds.toFixed(1)} s (seed ${SEED})`);
    for (const array of ['image', 'logs', 'archive']) {
      rows.push(...(await runArray(context, array, prepared.plans.filter((plan) => plan.array === array), sessions, problems)));
    }
  } catch (error) {
    problems.unshift((error as Error).message);
  } finally {
    for (const session of sessions) await session.server.stop(); // already stopped unless a step threw
  }
  const data = { seed: SEED, quick: context.options.quick, sizes, staged: prepared?.staged ?? null, logFiles: prepared?.logFiles ?? null, prepareSeconds: prepared?.prepareSeconds ?? null, durationSeconds: round((Date.now() - started) / 1000, 1), rows };
  const result: ExperimentResult = { status: problems.length === 0 ? 'ok' : 'failed', purpose: PURPOSE, data };
  if (problems.length > 0) result.note = problems.join('; ');
  if (rows.length > 0) {
    result.markdown = renderMarkdownSection(rows, data);
    result.charts = { 'reduction-datasets.svg': renderBarChart(reductionChart(rows, context.options.quick)) };
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Report

const bytes = (value: number): string => value.toLocaleString('en-US');
const signedBytes = (value: number): string => (value > 0 ? '+' : '') + bytes(value);

function shortBytes(value: number): string {
  if (Math.abs(value) >= MiB) return `${(value / MiB).toFixed(1)} MiB`;
  if (Math.abs(value) >= 1024) return `${(value / 1024).toFixed(1)} KiB`;
  return `${value} B`;
}

function ratioText(ratio: number | null): string {
  return ratio === null ? '∞' : `${ratio.toFixed(2)}:1`;
}

function renderMarkdownSection(rows: readonly DataSetRow[], data: { seed: number; durationSeconds: number; staged: StagedFiles | null }): string[] {
  const lines = [
    `Each data set is generated by the script (seed ${data.seed}), written with \`nbdcopy --flush FILE URI\` into a fresh pstorage (\`serve\` defaults: LZ4, dedup on) of its own, except the second copy of the image, which goes into a second volume of the image's array. "Array" is what the set added to the array's \`physicalBytes\` (\`pstorage stats --json\` before and after). "Ideal" is computed by the script without pstorage's code: 4 KiB blocks, all-zero blocks free, SHA-256 dedup across the whole array, every other block min(4096, raw LZ4 block size) (lz4-napi \`compressSync\` minus its 4-byte length prefix). DRR is logical bytes over array bytes. MiB/s is logical bytes over nbdcopy's wall-clock time, flush included (the source file is in the page cache).`,
    '',
    '| data set | logical bytes | ideal bytes | array physical bytes | array / ideal | array − ideal | DRR | zstd -3 whole file | write MiB/s |',
    '|---|--:|--:|--:|--:|--:|--:|--:|--:|',
    ...rows.map((row) => `| ${row.label} | ${bytes(row.logicalBytes)} | ${bytes(row.ideal.idealBytes)} | ${bytes(row.arrayPhysicalBytes)} | ${row.arrayOverIdeal === null ? '—' : row.arrayOverIdeal.toFixed(3)} | ${signedBytes(row.arrayMinusIdealBytes)} | ${ratioText(row.dataReductionRatio)} | ${row.zstdWholeFileBytes === null ? '—' : bytes(row.zstdWholeFileBytes)} | ${row.writeMiBPerSecond.toFixed(1)} |`),
    '',
    'Where array and ideal differ, the gap splits into the costs of pstorage\'s format (its rules re-implemented by the script: a 16-byte header per stored chunk, the 4-byte length prefix of every LZ4 chunk, blocks kept raw when LZ4 saves less than 256 bytes) minus what its pattern removal saves (a block of one repeated 8-byte word costs nothing; the ideal frees only all-zero blocks). "Model" is the ideal with those terms applied; array − model is 0 when the array stores exactly what its documentation says.',
    '',
    '| data set | blocks | zero | duplicate | unique | headers | LZ4 prefixes | kept raw (blocks, bytes) | repeated-word blocks (blocks, ideal bytes) | model bytes | array − model |',
    '|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|',
    ...rows.map((row) => {
      const t = row.ideal;
      return `| ${row.label} | ${bytes(t.blocks)} | ${bytes(t.zeroBlocks)} | ${bytes(t.duplicateBlocks)} | ${bytes(t.uniqueBlocks)} | +${bytes(t.modelStoredChunks * RECORD_HEADER_BYTES)} | +${bytes(t.modelCompressedChunks * LZ4_PREFIX_BYTES)} | ${bytes(t.modelRawBlocks)}, +${bytes(t.modelRawLossBytes)} | ${bytes(t.patternBlocks)}, −${bytes(t.patternIdealBytes)} | ${bytes(t.modelBytes)} | ${signedBytes(row.arrayMinusModelBytes)} |`;
    }),
    '',
    'Data sets:',
    '',
    ...rows.map((row) => `- **${row.label}**: ${row.description}.`),
    '',
    `The logs depend only on the seed; which system files are copied depends on the seed and on the host's directory listing, and their contents on the packages installed on this host. The experiment took ${data.durationSeconds.toFixed(0)} s.`,
    '',
    '![data reduction on realistic data sets](reduction-datasets.png)',
  ];
  return lines;
}

const SERIES = [
  { id: 'logical', label: 'logical (as written)', color: '#9aa5b1' },
  { id: 'ideal', label: 'ideal: 4 KiB dedup + per-block LZ4', color: '#4e79a7' },
  { id: 'array', label: 'pstorage physical bytes', color: '#f28e2b' },
];

function reductionChart(rows: readonly DataSetRow[], quick: boolean): BarChart {
  return {
    title: 'Data reduction on realistic data sets',
    subtitle: 'What each data set takes: as written, the ideal, and what pstorage stored. Shorter is better.',
    xLabel: 'MiB',
    scale: 'linear',
    series: SERIES,
    groups: rows.map((row) => ({
      label: row.label,
      sublabel: `${row.dataReductionRatio === null ? 'adds nothing' : `DRR ${ratioText(row.dataReductionRatio)}`} · written at ${formatCompact(row.writeMiBPerSecond)} MiB/s`,
      bars: [
        { seriesId: 'logical', value: row.logicalBytes / MiB, text: shortBytes(row.logicalBytes) },
        { seriesId: 'ideal', value: row.ideal.idealBytes / MiB, text: `${row.id === 'ext4-image-copy' ? '+' : ''}${shortBytes(row.ideal.idealBytes)}` },
        { seriesId: 'array', value: row.arrayPhysicalBytes / MiB, text: `${row.id === 'ext4-image-copy' ? '+' : ''}${shortBytes(row.arrayPhysicalBytes)}${row.arrayOverIdeal === null ? '' : ` · ${row.arrayOverIdeal.toFixed(3)}× ideal`}` },
      ],
    })),
    footnote: `${quick ? 'quick mode (tiny data sets) · ' : ''}seed ${SEED} · the second copy's bars are what it added to the first copy's array · ${new Date().toISOString().slice(0, 10)}`,
  };
}
