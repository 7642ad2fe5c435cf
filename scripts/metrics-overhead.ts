/**
 * What scraping /metrics costs the data path: one `pstorage serve` (fresh data directory, with
 * `--metrics-listen`), a region preconditioned with 4 KiB random writes, then fio runs of one job
 * in pairs, one run with a scraper fetching /metrics once a second (as Prometheus would, over a
 * kept-alive connection) and one without, the order alternating pair by pair. Reports each run's
 * IOPS and the server's CPU per request (all threads, from /proc), and the medians' ratio.
 *
 *   node build/scripts/metrics-overhead.js [--rw randread] [--bs 4k] [--qd 32] [--size 512M]
 *       [--runtime 10] [--pairs 3] [--interval-ms 1000] [--repo DIR]
 *
 * Needs fio with its nbd engine. The machine is shared: read the ratio of medians, not one run.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { median, startServe } from './serve-process.js';

interface Options {
  rw: string;
  bs: string;
  qd: number;
  size: string;
  runtime: number;
  pairs: number;
  intervalMs: number;
  repo: string;
}

interface RunResult {
  scraped: boolean;
  iops: number;
  cpuUsPerRequest: number;
  scrapes: number;
}

const CLOCK_TICKS_PER_SECOND = 100;

function parseOptions(argv: string[]): Options {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const options: Options = { rw: 'randread', bs: '4k', qd: 32, size: '512M', runtime: 10, pairs: 3, intervalMs: 1000, repo: path.resolve(here, '../..') };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i]!, argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    const number = Number(value);
    switch (flag) {
      case '--rw': options.rw = value; break;
      case '--bs': options.bs = value; break;
      case '--size': options.size = value; break;
      case '--repo': options.repo = path.resolve(value); break;
      case '--qd': case '--runtime': case '--pairs': case '--interval-ms':
        if (!Number.isInteger(number) || number < 1) throw new Error(`${flag} takes a whole number of at least 1, not "${value}"`);
        if (flag === '--qd') options.qd = number;
        else if (flag === '--runtime') options.runtime = number;
        else if (flag === '--pairs') options.pairs = number;
        else options.intervalMs = number;
        break;
      default:
        throw new Error(`unknown option ${flag} (see the comment at the top of scripts/metrics-overhead.ts)`);
    }
  }
  return options;
}

/** Starts the server and resolves with its NBD and metrics ports. */
async function startServer(repo: string, workDir: string): Promise<{ child: ChildProcess; nbdPort: number; metricsPort: number }> {
  const server = await startServe(repo, ['--data-dir', path.join(workDir, 'data'), '--listen', '127.0.0.1:0', '--metrics-listen', '127.0.0.1:0'], { portMessages: ['listening', 'metrics listening'] });
  return { child: server.child, nbdPort: server.ports.get('listening')!, metricsPort: server.ports.get('metrics listening')! };
}

function fio(args: string[], outputPath: string): { iops: number; requests: number } {
  const result = spawnSync('fio', [...args, '--output-format=json', `--output=${outputPath}`], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`fio failed (${result.status}): ${result.stderr}`);
  const job = (JSON.parse(fs.readFileSync(outputPath, 'utf8')) as { jobs: Array<Record<'read' | 'write', { iops: number; total_ios: number }>> }).jobs[0]!;
  return { iops: job.read.iops + job.write.iops, requests: job.read.total_ios + job.write.total_ios };
}

/** CPU ticks (user + system) of every thread of the process so far. */
function processTicks(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

/** Fetches /metrics every `intervalMs` over one kept-alive connection until stopped. */
function startScraper(port: number, intervalMs: number): { stop(): number } {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  let scrapes = 0;
  const scrape = () => {
    http.get({ host: '127.0.0.1', port, path: '/metrics', agent }, (response) => {
      response.resume();
      response.on('end', () => {
        if (response.statusCode === 200) scrapes += 1;
      });
    }).on('error', () => {});
  };
  const timer = setInterval(scrape, intervalMs);
  scrape();
  return {
    stop() {
      clearInterval(timer);
      agent.destroy();
      return scrapes;
    },
  };
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pstorage-metrics-overhead-'));
  const server = await startServer(options.repo, workDir);
  try {
    const uri = `nbd://127.0.0.1:${server.nbdPort}/default`;
    const common = ['--ioengine=nbd', `--uri=${uri}`, '--offset=0', `--size=${options.size}`, '--refill_buffers=1', '--randrepeat=0'];
    fio(['--name=precondition', ...common, '--rw=randwrite', '--bs=4k', '--iodepth=32'], path.join(workDir, 'precondition.json'));
    const runs: RunResult[] = [];
    for (let pair = 0; pair < options.pairs; pair++) {
      const order = pair % 2 === 0 ? [true, false] : [false, true];
      for (const scraped of order) {
        const scraper = scraped ? startScraper(server.metricsPort, options.intervalMs) : null;
        const ticksBefore = processTicks(server.child.pid!);
        // fio runs in a child process while this one's event loop keeps the scraper going.
        const result = await new Promise<{ iops: number; requests: number }>((resolve, reject) => {
          const outputPath = path.join(workDir, `run-${runs.length}.json`);
          const child = spawn('fio', [`--name=job`, ...common, `--rw=${options.rw}`, `--bs=${options.bs}`, `--iodepth=${options.qd}`, '--time_based=1', `--runtime=${options.runtime}`, '--output-format=json', `--output=${outputPath}`], { stdio: 'ignore' });
          child.once('exit', (code) => {
            if (code !== 0) return reject(new Error(`fio exited with ${code}`));
            const job = (JSON.parse(fs.readFileSync(outputPath, 'utf8')) as { jobs: Array<Record<'read' | 'write', { iops: number; total_ios: number }>> }).jobs[0]!;
            resolve({ iops: job.read.iops + job.write.iops, requests: job.read.total_ios + job.write.total_ios });
          });
        });
        const cpuUs = ((processTicks(server.child.pid!) - ticksBefore) / CLOCK_TICKS_PER_SECOND) * 1e6;
        const scrapes = scraper?.stop() ?? 0;
        runs.push({ scraped, iops: result.iops, cpuUsPerRequest: cpuUs / result.requests, scrapes });
        process.stdout.write(`pair ${pair + 1} ${scraped ? 'scraped  ' : 'unscraped'}: ${Math.round(result.iops)} IOPS, ${(cpuUs / result.requests).toFixed(2)} µs CPU a request${scraped ? `, ${scrapes} scrapes` : ''}\n`);
      }
    }
    const with_ = runs.filter((run) => run.scraped);
    const without = runs.filter((run) => !run.scraped);
    const ratio = median(with_.map((run) => run.iops)) / median(without.map((run) => run.iops));
    const cpuRatio = median(with_.map((run) => run.cpuUsPerRequest)) / median(without.map((run) => run.cpuUsPerRequest));
    process.stdout.write(`${options.rw} ${options.bs} QD${options.qd}, ${options.pairs} pairs of ${options.runtime} s, scraping every ${options.intervalMs} ms:\n`);
    process.stdout.write(`  median IOPS scraped / unscraped: ${Math.round(median(with_.map((run) => run.iops)))} / ${Math.round(median(without.map((run) => run.iops)))} = ${ratio.toFixed(3)} (cost ${((1 - ratio) * 100).toFixed(1)} %)\n`);
    process.stdout.write(`  median CPU per request scraped / unscraped: ${cpuRatio.toFixed(3)}\n`);
  } finally {
    server.child.kill('SIGTERM');
    await new Promise((resolve) => server.child.once('exit', resolve));
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`metrics-overhead: ${(error as Error).message}\n`);
  process.exitCode = 1;
});
