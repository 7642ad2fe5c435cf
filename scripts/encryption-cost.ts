/**
 * What encryption at rest costs the data path: two `pstorage serve` processes, one on a plain
 * array and one on an encrypted one (`--key-file`, fresh data directories), each preconditioned
 * with the same 4 KiB random writes of random data over `--size`, then fio runs of one job per
 * workload (4 KiB random read QD32, 128 KiB sequential read QD8, 4 KiB random write QD32) in pairs,
 * plain and encrypted, the order alternating pair by pair. Prints every run's IOPS, MiB/s and the
 * server's CPU time per I/O (user + system of its process, threads included, from /proc), and per
 * workload the median IOPS and their ratio (encrypted / plain), the median of the pairs' ratios,
 * and the median CPU per I/O of each server and their ratio.
 *
 *   node build/scripts/encryption-cost.js [--size 512M] [--runtime 10] [--pairs 3] [--only TEXT] [--repo DIR]
 *
 * `--only 128K` runs only the workloads whose name holds that text. Needs fio with its nbd engine
 * and openssl. The machine is shared: when other work takes CPU, throughput swings by ±30 % from
 * one run to the next; CPU per I/O swings less, since it does not count the time spent waiting.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { median, startServe } from './serve-process.js';

interface Options {
  size: string;
  runtime: number;
  pairs: number;
  only: string;
  repo: string;
}

interface Workload {
  name: string;
  rw: string;
  bs: string;
  qd: number;
}

const WORKLOADS: Workload[] = [
  { name: '4K randread QD32', rw: 'randread', bs: '4k', qd: 32 },
  { name: '128K seq read QD8', rw: 'read', bs: '128k', qd: 8 },
  { name: '4K randwrite QD32', rw: 'randwrite', bs: '4k', qd: 32 },
];

function parseOptions(argv: string[]): Options {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const options: Options = { size: '512M', runtime: 10, pairs: 3, only: '', repo: path.resolve(here, '../..') };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i]!, argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    const number = Number(value);
    if (flag === '--size') options.size = value;
    else if (flag === '--only') options.only = value;
    else if (flag === '--repo') options.repo = path.resolve(value);
    else if (flag === '--runtime' || flag === '--pairs') {
      if (!Number.isInteger(number) || number < 1) throw new Error(`${flag} takes a whole number of at least 1, not "${value}"`);
      if (flag === '--runtime') options.runtime = number;
      else options.pairs = number;
    } else throw new Error(`unknown option ${flag} (see the comment at the top of scripts/encryption-cost.ts)`);
  }
  return options;
}

/** Starts a server and resolves with its NBD port. */
async function startServer(repo: string, dataDir: string, extraArgs: string[]): Promise<{ child: ChildProcess; port: number }> {
  const server = await startServe(repo, ['--data-dir', dataDir, '--listen', '127.0.0.1:0', ...extraArgs], { env: { PSTORAGE_KEY_FILE: '' } });
  return { child: server.child, port: server.ports.get('listening')! };
}

/** User + system CPU seconds of a process (every thread), from /proc/PID/stat. */
function cpuSeconds(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after "pid (comm) ".
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}
const CLOCK_TICKS_PER_SECOND = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

function fio(args: string[], outputPath: string): { iops: number; mibPerSecond: number } {
  const result = spawnSync('fio', [...args, '--output-format=json', `--output=${outputPath}`], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`fio failed (${result.status}): ${result.stderr}`);
  const job = (JSON.parse(fs.readFileSync(outputPath, 'utf8')) as { jobs: Array<Record<'read' | 'write', { iops: number; bw_bytes: number }>> }).jobs[0]!;
  return { iops: job.read.iops + job.write.iops, mibPerSecond: (job.read.bw_bytes + job.write.bw_bytes) / 1048576 };
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pstorage-encryption-cost-'));
  const keyFile = path.join(workDir, 'array.key');
  spawnSync('openssl', ['rand', '-out', keyFile, '32']);
  const servers: Record<'plain' | 'encrypted', { child: ChildProcess; port: number } | null> = { plain: null, encrypted: null };
  try {
    servers.plain = await startServer(options.repo, path.join(workDir, 'plain'), []);
    servers.encrypted = await startServer(options.repo, path.join(workDir, 'encrypted'), ['--key-file', keyFile]);
    const common = (port: number) => ['--ioengine=nbd', `--uri=nbd://127.0.0.1:${port}/default`, '--offset=0', `--size=${options.size}`, '--refill_buffers=1', '--randrepeat=0'];
    for (const kind of ['plain', 'encrypted'] as const) {
      fio(['--name=precondition', ...common(servers[kind]!.port), '--rw=write', '--bs=128k', '--iodepth=8'], path.join(workDir, `precondition-${kind}.json`));
    }
    const summary: string[] = [];
    for (const workload of WORKLOADS.filter((candidate) => candidate.name.includes(options.only))) {
      const results: Record<'plain' | 'encrypted', Array<{ iops: number; mibPerSecond: number; cpuUsPerIo: number }>> = { plain: [], encrypted: [] };
      for (let pair = 0; pair < options.pairs; pair++) {
        const order = pair % 2 === 0 ? (['plain', 'encrypted'] as const) : (['encrypted', 'plain'] as const);
        for (const kind of order) {
          const args = ['--name=job', ...common(servers[kind]!.port), `--rw=${workload.rw}`, `--bs=${workload.bs}`, `--iodepth=${workload.qd}`, '--time_based=1', `--runtime=${options.runtime}`];
          const pid = servers[kind]!.child.pid!;
          const cpuBefore = cpuSeconds(pid);
          const result = fio(args, path.join(workDir, `run.json`));
          const cpuUsPerIo = ((cpuSeconds(pid) - cpuBefore) * 1e6) / (result.iops * options.runtime);
          results[kind].push({ ...result, cpuUsPerIo });
          process.stdout.write(`${workload.name} pair ${pair + 1} ${kind.padEnd(9)}: ${Math.round(result.iops)} IOPS, ${result.mibPerSecond.toFixed(1)} MiB/s, server CPU ${cpuUsPerIo.toFixed(1)} µs/IO\n`);
        }
      }
      const plain = median(results.plain.map((run) => run.iops));
      const encrypted = median(results.encrypted.map((run) => run.iops));
      const pairRatios = results.encrypted.map((run, pair) => run.iops / results.plain[pair]!.iops);
      const cpuPlain = median(results.plain.map((run) => run.cpuUsPerIo));
      const cpuEncrypted = median(results.encrypted.map((run) => run.cpuUsPerIo));
      summary.push(
        `${workload.name}: median IOPS encrypted / plain = ${Math.round(encrypted)} / ${Math.round(plain)} = ${(encrypted / plain).toFixed(3)} (cost ${((1 - encrypted / plain) * 100).toFixed(1)} %); ` +
          `median of the pairs' ratios ${median(pairRatios).toFixed(3)}; server CPU per I/O ${cpuEncrypted.toFixed(1)} / ${cpuPlain.toFixed(1)} µs = ${(cpuEncrypted / cpuPlain).toFixed(3)}`,
      );
    }
    process.stdout.write(`\n${options.pairs} pairs of ${options.runtime} s over ${options.size}:\n${summary.map((line) => `  ${line}`).join('\n')}\n`);
  } finally {
    for (const server of Object.values(servers)) {
      if (server === null) continue;
      server.child.kill('SIGTERM');
      await new Promise((resolve) => server.child.once('exit', resolve));
    }
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`encryption-cost: ${(error as Error).message}\n`);
  process.exitCode = 1;
});
