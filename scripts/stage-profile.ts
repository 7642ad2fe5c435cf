/**
 * Where the CPU goes, per stage of the data path, in microseconds per 4 KiB block: runs
 * `pstorage serve` under `node --cpu-prof`, preconditions a region with 4 KiB random writes, runs
 * one fio job, stops the server, and attributes every profile sample taken during the job (main
 * thread and reduction workers apart) to a stage by the first pstorage module on its stack.
 *
 *   node build/scripts/stage-profile.js [--job randwrite] [--bs 4k] [--qd 32] [--size 512M]
 *       [--runtime 8] [--repo DIR] [--top N] [--keep DIR] [--json]
 *
 * `--top N` also lists the N functions with the most self time on the main thread (µs per block).
 * `--keep DIR` copies the .cpuprofile files there (open them in Chrome DevTools).
 * `--repo` profiles another checkout (built), e.g. an older commit in a git worktree, so the same
 * command gives the "before" and "after" of a change. Samples are wall-clock: a thread that is
 * descheduled inside a system call is counted there, which inflates system calls that wake another
 * thread (socket writes, thread-pool submissions) on a busy machine. Needs fio with its nbd engine.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServe } from './serve-process.js';

interface Options {
  job: string;
  bs: string;
  qd: number;
  size: string;
  runtime: number;
  repo: string;
  top: number;
  keep: string | null;
  json: boolean;
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber?: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** Stages, by the first pstorage module found walking up from the sampled frame. */
const STAGES: Array<[RegExp, string]> = [
  [/\/(protocol|server)\//, 'protocol and replies'],
  [/\/reduce\/(dedup-index|bloom-filter)\./, 'dedup index'],
  [/\/reduce\//, 'reduction: hash, sample, compress'],
  [/\/volume\/(map-table|map-page|chunk-table|page-cache)\.|\/meta\/journal\./, 'maps, chunk table, journal'],
  [/\/volume\/(io-scheduler|volume|snapshots|range-lock)\./, 'volume: plan and apply'],
  [/\/ftl\//, 'FTL: log, checksums, reads'],
  [/\/nand\//, 'NAND I/O'],
  [/\/volume\/flash-array\.|\/meta\//, 'commit and LevelDB'],
];

function parseOptions(argv: string[]): Options {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const options: Options = { job: 'randwrite', bs: '4k', qd: 32, size: '512M', runtime: 8, repo: path.resolve(here, '../..'), top: 0, keep: null, json: false };
  for (let i = 0; i < argv.length; i++) {
    const value = argv[i + 1];
    switch (argv[i]) {
      case '--job':
        options.job = value!;
        break;
      case '--bs':
        options.bs = value!;
        break;
      case '--qd':
        options.qd = Number(value);
        break;
      case '--size':
        options.size = value!;
        break;
      case '--runtime':
        options.runtime = Number(value);
        break;
      case '--repo':
        options.repo = path.resolve(value!);
        break;
      case '--top':
        options.top = Number(value);
        break;
      case '--keep':
        options.keep = path.resolve(value!);
        break;
      case '--json':
        options.json = true;
        continue;
      default:
        throw new Error(`unknown option ${argv[i]}: see the usage at the top of scripts/stage-profile.ts`);
    }
    i += 1;
  }
  return options;
}

function fio(args: string[], outputPath: string): Record<string, unknown> {
  const result = spawnSync('fio', [...args, '--output-format=json', `--output=${outputPath}`], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`fio failed (${result.status}): ${result.stderr}`);
  return JSON.parse(fs.readFileSync(outputPath, 'utf8')) as Record<string, unknown>;
}

async function startServer(repo: string, workDir: string): Promise<{ child: ReturnType<typeof spawn>; port: number }> {
  const server = await startServe(repo, ['--data-dir', path.join(workDir, 'data'), '--listen', '127.0.0.1:0'], { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${path.join(workDir, 'prof')}`] });
  return { child: server.child, port: server.ports.get('listening')! };
}

/** Microseconds of samples per stage inside [fromUs, toUs] of the profile's clock. */
function stagesOf(profile: CpuProfile, fromUs: number, toUs: number): Map<string, number> {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const stageOfNode = new Map<number, string>();
  const stageOf = (id: number): string => {
    const known = stageOfNode.get(id);
    if (known !== undefined) return known;
    const leaf = byId.get(id)!.callFrame.functionName;
    let stage: string | undefined;
    if (leaf === '(idle)') stage = 'idle';
    else if (leaf === '(garbage collector)') stage = 'garbage collector';
    let socket = false;
    for (let current: number | undefined = id; stage === undefined && current !== undefined; current = parent.get(current)) {
      const { url } = byId.get(current)!.callFrame;
      if (url.includes('/build/src/')) stage = STAGES.find(([pattern]) => pattern.test(url))?.[1] ?? 'other pstorage code';
      else if (/node:net|stream_base_commons|streams\//.test(url)) socket = true;
    }
    stage ??= socket ? 'protocol and replies' : 'other (Node, V8)';
    stageOfNode.set(id, stage);
    return stage;
  };
  const out = new Map<string, number>();
  let at = profile.startTime;
  profile.samples.forEach((id, i) => {
    at += profile.timeDeltas[i] ?? 0;
    if (at < fromUs || at > toUs) return;
    const stage = stageOf(id);
    out.set(stage, (out.get(stage) ?? 0) + (profile.timeDeltas[i] ?? 0));
  });
  return out;
}

/** Self time per function (name and place) inside [fromUs, toUs], most first. */
function selfTimes(profile: CpuProfile, fromUs: number, toUs: number): Array<[string, number]> {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const out = new Map<string, number>();
  let at = profile.startTime;
  profile.samples.forEach((id, i) => {
    at += profile.timeDeltas[i] ?? 0;
    if (at < fromUs || at > toUs) return;
    const { functionName, url, lineNumber } = byId.get(id)!.callFrame;
    const key = `${functionName || '(anonymous)'} ${url.replace(/^.*\/build\//, '').replace(/^file:\/\//, '')}:${(lineNumber ?? 0) + 1}`;
    out.set(key, (out.get(key) ?? 0) + (profile.timeDeltas[i] ?? 0));
  });
  return [...out].sort((a, b) => b[1] - a[1]);
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pstorage-stages-'));
  try {
    const { child, port } = await startServer(options.repo, workDir);
    const uri = `nbd://127.0.0.1:${port}/default`;
    const common = ['--ioengine=nbd', `--uri=${uri}`, `--size=${options.size}`, '--refill_buffers=1', '--randrepeat=0'];
    fio(['--name=precondition', ...common, '--rw=randwrite', '--bs=4k', '--iodepth=32'], path.join(workDir, 'precondition.json'));
    const fromUs = Number(process.hrtime.bigint() / 1000n);
    const result = fio(['--name=job', ...common, `--rw=${options.job}`, `--bs=${options.bs}`, `--iodepth=${options.qd}`, '--time_based=1', `--runtime=${options.runtime}`], path.join(workDir, 'job.json'));
    const toUs = Number(process.hrtime.bigint() / 1000n);
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGINT');
    await exited;
    const job = (result.jobs as Array<Record<string, { io_bytes: number; iops: number }>>)[0]!;
    const ioBytes = job.read!.io_bytes + job.write!.io_bytes;
    const blocks = ioBytes / 4096;
    const files = fs.readdirSync(path.join(workDir, 'prof')).sort();
    if (options.keep !== null) fs.cpSync(path.join(workDir, 'prof'), options.keep, { recursive: true });
    const rows: Array<{ thread: string; stage: string; usPerBlock: number }> = [];
    let top: Array<{ place: string; usPerBlock: number }> = [];
    files.forEach((file, index) => {
      const profile = JSON.parse(fs.readFileSync(path.join(workDir, 'prof', file), 'utf8')) as CpuProfile;
      if (index === 0) top = selfTimes(profile, fromUs, toUs).slice(0, options.top).map(([place, us]) => ({ place, usPerBlock: us / blocks }));
      const thread = index === 0 ? 'main' : `worker ${index}`;
      for (const [stage, us] of [...stagesOf(profile, fromUs, toUs)].sort((a, b) => b[1] - a[1])) {
        if (stage === 'idle' && thread !== 'main') continue;
        rows.push({ thread, stage, usPerBlock: us / blocks });
      }
    });
    const summary = { job: `${options.job} ${options.bs} QD${options.qd}`, iops: job.read!.iops + job.write!.iops, blocks, rows, top };
    if (options.json) {
      process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
      return;
    }
    process.stdout.write(`${summary.job}: ${Math.round(summary.iops)} IOPS, ${Math.round(blocks)} blocks of 4 KiB profiled (${options.repo})\n`);
    process.stdout.write('thread    stage                               us per 4 KiB block\n');
    for (const row of rows) process.stdout.write(`${row.thread.padEnd(10)}${row.stage.padEnd(36)}${row.usPerBlock.toFixed(2).padStart(8)}\n`);
    for (const thread of new Set(rows.map((row) => row.thread))) {
      const busy = rows.filter((row) => row.thread === thread && row.stage !== 'idle').reduce((sum, row) => sum + row.usPerBlock, 0);
      process.stdout.write(`${thread.padEnd(10)}${'total (not idle)'.padEnd(36)}${busy.toFixed(2).padStart(8)}\n`);
    }
    if (top.length > 0) process.stdout.write('main thread, self time      us per 4 KiB block\n');
    for (const row of top) process.stdout.write(`${row.usPerBlock.toFixed(3).padStart(8)}  ${row.place}\n`);
  } finally {
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`stage-profile: ${(error as Error).message}\n`);
  process.exit(1);
});
