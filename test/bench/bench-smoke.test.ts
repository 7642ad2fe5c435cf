/**
 * The benchmark harness (scripts/bench.ts) in its quick mode with a 2 s runtime: it must start
 * pstorage, nbdkit memory and nbdkit file, run every job of the matrix on every server (and the
 * data-pattern jobs on pstorage, and ext4 end to end on all three), run the reduction, flash and
 * memory/recovery experiments at their quick sizes, compute the ratios, write results.json,
 * results.md and the charts, and leave no server, mount or work directory behind.
 * The figures themselves are not checked: this machine is shared and they are noise at 2 s.
 *
 * Needs fio, nbdkit, libnbd-bin, nbdfuse and fuse3, root and /dev/fuse (as the filesystem
 * interop test does); when they are missing the benchmark exits 2 and says what to install, and
 * this test fails with that message.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseFioJson } from '../../scripts/bench/fio.js';
import { fioArgs, nbdTarget, MATRIX_JOBS, SERVER_IDS } from '../../scripts/bench/jobs.js';
import type { BenchReport } from '../../scripts/bench/report.js';
import { median, type JobResult } from '../../scripts/bench/stats.js';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const BENCH = path.join(REPO_ROOT, 'build/scripts/bench.js');

/** The jobs the issue asks for, by id: the matrix on every server, the data patterns on pstorage. */
const EXPECTED_MATRIX = ['randread-4k-qd1', 'randread-4k-qd32', 'randwrite-4k-qd1', 'randwrite-4k-qd32', 'randrw70-4k-qd32', 'read-128k-qd8', 'write-128k-qd8', 'randwrite-4k-qd32-4conn'];
const EXPECTED_DATA = ['data-unique', 'data-duplicate', 'data-zeros', 'data-compressible'];
const EXPECTED_FILESYSTEM = ['fs-randwrite-4k-qd16', 'fs-write-1m-qd8', 'fs-read-1m-qd8'];

function runBench(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BENCH, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
    child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Every job has a positive result on each of `expectedServers`, and its ratios match its figures. */
function checkJobs(t: ExecutionContext, results: readonly JobResult[], expectedIds: readonly string[], expectedServers: readonly string[], all: readonly JobResult[] = results): void {
  t.deepEqual(results.map((result) => result.job.id), [...expectedIds]);
  for (const result of results) {
    t.deepEqual([...result.job.servers].sort(), [...expectedServers].sort(), `${result.job.id}: servers`);
    for (const serverId of result.job.servers) {
      const summary = result.results[serverId]?.summary;
      const where = `${result.job.id} on ${serverId}`;
      t.truthy(summary, `${where}: no result (${JSON.stringify(result.results[serverId]?.runs)})`);
      t.true(summary!.iops > 0, `${where}: IOPS`);
      t.true(summary!.mibPerSecond > 0, `${where}: MiB/s`);
      t.true(summary!.latencyUs.p50! > 0 && summary!.latencyUs.p99! >= summary!.latencyUs.p50!, `${where}: latency percentiles`);
      t.true(summary!.serverCpuSecondsPerGiB !== null && summary!.serverCpuSecondsPerGiB >= 0, `${where}: CPU per GiB`);
    }
    for (const reference of ['nbdkit-memory', 'nbdkit-file'] as const) {
      const ratio = result.ratios[`pstorage/${reference}`];
      const referenceResult = all.find((candidate) => candidate.job.id === ratio?.referenceJobId);
      t.truthy(ratio && referenceResult, `${result.job.id}: ratio to ${reference}`);
      const expected = result.results.pstorage!.summary!.iops / referenceResult!.results[reference]!.summary!.iops;
      t.true(Math.abs(ratio!.iops! - expected) < 1e-9 * expected, `${result.job.id}: ratio to ${reference} is ${ratio!.iops}, expected ${expected}`);
    }
  }
}

test('bench --quick runs every job on every server and writes the JSON, the table and the charts', async (t) => {
  t.timeout(10 * 60_000);
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pstorage-bench-smoke-'));
  t.teardown(() => fs.rmSync(scratch, { recursive: true, force: true }));
  const outDir = path.join(scratch, 'out');
  const workDir = path.join(scratch, 'work');
  const { code, stdout, stderr } = await runBench(['--quick', '--runtime', '2', '--size', '32M', '--out', outDir, '--work-dir', workDir]);
  t.is(code, 0, `bench failed:\n${stderr.slice(-4000)}`);

  const report = JSON.parse(fs.readFileSync(path.join(outDir, 'results.json'), 'utf8')) as BenchReport;
  t.is(report.schema, 'pstorage-bench/1');
  checkJobs(t, report.block.filter((result) => result.job.group === 'matrix'), EXPECTED_MATRIX, SERVER_IDS);
  checkJobs(t, report.block.filter((result) => result.job.group === 'data'), EXPECTED_DATA, ['pstorage'], report.block);
  t.is(report.filesystem.skipped, null);
  checkJobs(t, report.filesystem.jobs, EXPECTED_FILESYSTEM, SERVER_IDS);
  for (const id of SERVER_IDS) t.true(report.filesystem.fsck[id]?.clean, `ext4 on ${id} is not clean after the run`);

  t.true(report.machine.nproc > 0 && report.machine.kernel.length > 0 && report.machine.cpuModel.length > 0);
  t.regex(report.commandLine, /bench\.js --quick --runtime 2/);
  const sizes = new Set(report.servers.map((server) => server.exportSizeBytes));
  t.is(sizes.size, 1, 'every server must export the same size');
  for (const server of report.servers) t.deepEqual([server.stop?.code, server.stop?.killed], [0, false], `${server.id} did not stop cleanly`);

  const markdown = fs.readFileSync(path.join(outDir, 'results.md'), 'utf8');
  t.true(markdown.includes('| Job | nbdkit memory | nbdkit file | pstorage | pstorage ÷ memory | pstorage ÷ file |'));
  for (const job of MATRIX_JOBS) t.true(markdown.includes(`| ${job.title} |`), `results.md lacks ${job.id}`);
  t.true(markdown.includes(report.commandLine));
  for (const chart of ['block-throughput.svg', 'block-latency-p99.svg', 'block-cpu-per-gib.svg', 'pstorage-data-patterns.svg', 'filesystem.svg']) {
    const svg = fs.readFileSync(path.join(outDir, chart), 'utf8');
    t.true(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"') && svg.trimEnd().endsWith('</svg>'), `${chart} is not an SVG document`);
    t.true(svg.includes('pstorage') && svg.includes('<rect'), `${chart} has no bars`);
  }
  t.true(stdout.includes('pstorage ÷ memory'), 'the summary table is printed');

  // Experiments 3-5 ran at their quick sizes, each with a section in results.md and its charts.
  t.deepEqual(Object.keys(report.extensions), ['reduction', 'flash', 'memory']);
  for (const [name, result] of Object.entries(report.extensions)) {
    t.is(result.status, 'ok', `experiment ${name}: ${result.status} ${result.note ?? ''}`);
    t.true(markdown.includes(`## Experiment \`${name}\``), `results.md lacks the ${name} section`);
    const charts = Object.keys(result.charts ?? {});
    t.true(charts.length > 0, `experiment ${name} drew no chart`);
    for (const chart of charts) {
      const svg = fs.readFileSync(path.join(outDir, chart), 'utf8');
      t.true(svg.startsWith('<svg') && svg.trimEnd().endsWith('</svg>'), `${chart} is not an SVG document`);
      t.true(report.files.includes(chart), `${chart} is not listed in results.json`);
    }
  }

  // --render draws the same report again from results.json alone.
  const rerendered = path.join(scratch, 'rerendered');
  const again = await runBench(['--render', path.join(outDir, 'results.json'), '--out', rerendered]);
  t.is(again.code, 0, again.stderr);
  t.is(fs.readFileSync(path.join(rerendered, 'results.md'), 'utf8'), markdown);

  // Nothing left behind: the work directory is gone and nothing is mounted under it.
  t.deepEqual(fs.readdirSync(workDir), []);
  t.false(fs.readFileSync('/proc/mounts', 'utf8').includes(workDir), 'a mount was left behind');
  if (report.problems.length > 0) t.log(`problems reported by the benchmark:\n${report.problems.join('\n')}`);
});

test('fio gets --ioengine=nbd before --uri, and JSON output in a file', (t) => {
  const args = fioArgs(MATRIX_JOBS[0]!, nbdTarget('nbd://127.0.0.1:1/default', 0, 1 << 20), { runtimeSeconds: 1, outputPath: '/tmp/x.json', duplicateSeed: 1, compressPercent: 50 });
  t.true(args.indexOf('--ioengine=nbd') < args.indexOf('--uri=nbd://127.0.0.1:1/default'));
  t.true(args.includes('--output-format=json') && args.includes('--output=/tmp/x.json'));
  t.true(args.includes('--refill_buffers=1') && args.includes('--randrepeat=0'));
});

test('parseFioJson adds directions, prefers the mixed group, and skips a leading line', (t) => {
  const direction = (iops: number, p99Ns: number) => ({ io_bytes: iops * 4096, bw_bytes: iops * 4096, iops, lat_ns: { percentile: { '50.000000': 1000, '99.000000': p99Ns, '99.900000': p99Ns * 2 } } });
  const plain = parseFioJson(`fio: connected to NBD server\n${JSON.stringify({ jobs: [{ error: 0, job_runtime: 2000, read: direction(0, 0), write: direction(100, 5000) }] })}`);
  t.is(plain.iops, 100);
  t.is(plain.latencyUs.p99, 5);
  t.is(plain.runtimeSeconds, 2);
  const mixed = parseFioJson(JSON.stringify({ jobs: [{ error: 0, job_runtime: 1000, read: direction(70, 1), write: direction(30, 1), mixed: direction(100, 9000) }] }));
  t.is(mixed.iops, 100);
  t.is(mixed.latencyUs.p99, 9);
  t.throws(() => parseFioJson(JSON.stringify({ jobs: [{ error: 5, job_runtime: 0, read: direction(0, 0), write: direction(0, 0) }] })), { message: /error 5/ });
});

test('median of an odd and an even count, ignoring non-finite values', (t) => {
  t.is(median([3, 1, 2]), 2);
  t.is(median([4, 1, 3, 2]), 2.5);
  t.is(median([Number.NaN, 7]), 7);
  t.is(median([]), null);
});
