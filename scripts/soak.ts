/**
 * Soak: hours of what a deployment meets, with nothing lost. For `--minutes`, in rounds:
 *   - fio with `--connections` jobs (one NBD connection each) writes its own region with 4 KiB to
 *     128 KiB random writes of unique data carrying crc32c verify headers, verifies it, and
 *     flushes (end_fsync);
 *   - meanwhile clients abort mid-request (nbdcopy of the whole volume killed after 0.2-0.5 s),
 *     a TRIM storm unmaps random ranges of a region of its own (python3-libnbd), and sessions of
 *     bad inputs (scripts/soak_bad_inputs.py: garbage handshakes, oversized options, invalid and
 *     malformed requests) must each get the protocol's answer, with the server answering a fresh
 *     connection and a region of their own intact after every one;
 *   - every `--kill-every` minutes, after a round, the server is killed with SIGKILL, restarted
 *     on the same data directory, and the last round's data is verified first (fio verify_only):
 *     flushed data must survive;
 *   - RSS is sampled every second (peak, and idle after each round).
 * Ends with a summary and exits 1 if any verification failed or the server died on its own.
 *
 *   node build/scripts/soak.js [--minutes 10] [--kill-every 3] [--connections 16] [--region-mib 32]
 *       [--work DIR] [--cache-mb N]
 * Needs fio (nbd engine), nbdcopy, python3-libnbd. Run on purpose (npm run soak), not in the suite.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface Options {
  minutes: number;
  killEveryMinutes: number;
  connections: number;
  regionMiB: number;
  work: string;
  cacheMb: number | null;
}

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const MiB = 1024 * 1024;
const BAD_INPUTS_SCRIPT = path.join(REPO, 'scripts/soak_bad_inputs.py');

function parseOptions(argv: string[]): Options {
  const options: Options = { minutes: 10, killEveryMinutes: 3, connections: 16, regionMiB: 32, work: os.tmpdir(), cacheMb: null };
  for (let i = 0; i < argv.length; i += 2) {
    const value = argv[i + 1];
    const number = Number(value);
    switch (argv[i]) {
      case '--minutes': options.minutes = number; break;
      case '--kill-every': options.killEveryMinutes = number; break;
      case '--connections': options.connections = number; break;
      case '--region-mib': options.regionMiB = number; break;
      case '--work': options.work = value!; break;
      case '--cache-mb': options.cacheMb = number; break;
      default: throw new Error(`soak: unknown option ${argv[i]}: see the usage at the top of scripts/soak.ts`);
    }
    if (argv[i] !== '--work' && !(number > 0)) throw new Error(`soak: ${argv[i]} needs a positive number`);
  }
  return options;
}

class Server {
  child: ChildProcess | null = null;
  diedOnItsOwn = false;
  constructor(readonly dataDir: string, readonly socketPath: string, readonly cacheMb: number | null) {}

  get uri(): string {
    return `nbd+unix:///default?socket=${this.socketPath}`;
  }

  async start(): Promise<void> {
    const args = [path.join(REPO, 'bin/pstorage.js'), 'serve', '--data-dir', this.dataDir, '--socket', this.socketPath, ...(this.cacheMb === null ? [] : ['--cache-mb', String(this.cacheMb)])];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, PSTORAGE_LISTEN: 'none', PSTORAGE_LOG: 'info' } });
    this.child = child;
    let log = '';
    child.stderr!.setEncoding('utf8');
    await new Promise<void>((resolve, reject) => {
      child.stderr!.on('data', (text: string) => {
        log += text;
        if (log.includes('"msg":"listening"')) resolve();
        if (log.length > 1 << 20) log = log.slice(-4096);
      });
      child.once('exit', (code, signal) => {
        if (this.child === child) this.diedOnItsOwn = true;
        reject(new Error(`pstorage exited (${code ?? signal}) before listening:\n${log.slice(-2000)}`));
      });
    });
  }

  rssKiB(): number {
    try {
      const status = fs.readFileSync(`/proc/${this.child!.pid}/status`, 'utf8');
      return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    } catch {
      return 0;
    }
  }

  async kill(signal: NodeJS.Signals): Promise<void> {
    const child = this.child!;
    this.child = null;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill(signal);
    await exited;
  }
}

function run(program: string, args: string[], timeoutMs: number): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

function fioArgs(server: Server, options: Options, round: number, verifyOnly: boolean): string[] {
  return [
    '--name=soak', '--ioengine=nbd', `--uri=${server.uri}`, `--numjobs=${options.connections}`, '--group_reporting=1',
    `--size=${options.regionMiB}M`, `--offset_increment=${options.regionMiB}M`, '--rw=randwrite', '--bsrange=4k-128k', '--iodepth=8',
    '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', `--randseed=${1000 + round}`, '--end_fsync=1', '--output-format=terse',
    ...(verifyOnly ? ['--verify_only=1'] : ['--do_verify=1']),
  ];
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  for (const tool of ['fio', 'nbdcopy']) if (spawnSync('which', [tool]).status !== 0) throw new Error(`soak: ${tool} is not installed`);
  const work = fs.mkdtempSync(path.join(options.work, 'pstorage-soak-'));
  const server = new Server(path.join(work, 'data'), path.join(work, 'nbd.sock'), options.cacheMb);
  const trimBase = options.connections * options.regionMiB * MiB + 64 * MiB;
  const stats = { rounds: 0, bytesWritten: 0, verifies: 0, verifyFailures: 0, kills: 0, aborts: 0, trims: 0, trimFailures: 0, badSessions: 0, badRequests: 0, badAnswered: 0, badClosed: 0, peakRssKiB: 0, idleRssKiB: [] as number[], failures: [] as string[] };
  const started = Date.now();
  let lastKill = Date.now();
  await server.start();
  const sampler = setInterval(() => (stats.peakRssKiB = Math.max(stats.peakRssKiB, server.child ? server.rssKiB() : 0)), 1000);
  let lastRound = -1;
  try {
    while (Date.now() - started < options.minutes * 60_000) {
      const round = stats.rounds;
      let stormsOn = true;
      const aborts = (async () => {
        while (stormsOn) {
          await run('nbdcopy', [server.uri, 'null:'], 200 + Math.floor(Math.random() * 300));
          stats.aborts += 1;
        }
      })();
      const trims = (async () => {
        const script = `import nbd, random, sys\nh = nbd.NBD(); h.connect_uri(sys.argv[1])\nbase = int(sys.argv[2])\nh.pwrite(random.randbytes(1 << 20), base + random.randrange(64) * (1 << 20))\nfor _ in range(50):\n    h.trim(random.choice([4096, 65536, 1 << 20, 16 << 20]), base + random.randrange(0, 48 << 20, 4096))\nh.flush()\n`;
        while (stormsOn) {
          const result = await run('/usr/bin/python3', ['-c', script, server.uri, String(trimBase)], 60_000);
          if (result.code === 0) stats.trims += 50;
          else if (stormsOn) {
            stats.trimFailures += 1;
            stats.failures.push(`TRIM storm, round ${round}: ${result.output.slice(-300)}`);
          }
        }
      })();
      const badInputs = (async () => {
        while (stormsOn) {
          const seed = Math.floor(Math.random() * 2 ** 31);
          const result = await run('/usr/bin/python3', [BAD_INPUTS_SCRIPT, server.socketPath, String(trimBase + 128 * MiB), '50', String(seed)], 10 * 60_000);
          const summary = parseBadInputs(result.output);
          if (summary !== null) {
            stats.badSessions += summary.sessions;
            stats.badRequests += summary.requests;
            stats.badAnswered += summary.errors_answered;
            stats.badClosed += summary.closed;
          }
          if (result.code !== 0 || summary === null || summary.failures.length > 0) {
            stats.failures.push(`bad inputs (seed ${seed}), round ${round}: ${summary === null ? result.output.slice(-300) : summary.failures.slice(0, 5).join('; ')}`);
          }
        }
      })();
      const fio = await run('fio', fioArgs(server, options, round, false), 30 * 60_000);
      stormsOn = false;
      await Promise.all([aborts, trims, badInputs]);
      stats.rounds += 1;
      stats.verifies += 1;
      if (fio.code !== 0) {
        stats.verifyFailures += 1;
        stats.failures.push(`round ${round}: fio exited ${fio.code}: ${fio.output.slice(-500)}`);
      } else {
        stats.bytesWritten += options.connections * options.regionMiB * MiB;
        lastRound = round;
      }
      await new Promise((resolve) => setTimeout(resolve, 5000));
      stats.idleRssKiB.push(server.rssKiB());
      if (server.diedOnItsOwn) throw new Error('the server died on its own');
      console.log(`round ${round}: fio ${fio.code === 0 ? 'ok' : 'FAILED'}; ${stats.aborts} aborted clients, ${stats.trims} trims so far; RSS ${Math.round(server.rssKiB() / 1024)} MiB idle, peak ${Math.round(stats.peakRssKiB / 1024)} MiB`);
      if (Date.now() - lastKill >= options.killEveryMinutes * 60_000) {
        await server.kill('SIGKILL');
        stats.kills += 1;
        lastKill = Date.now();
        await server.start();
        if (lastRound >= 0) {
          const check = await run('fio', fioArgs(server, options, lastRound, true), 30 * 60_000);
          stats.verifies += 1;
          if (check.code !== 0) {
            stats.verifyFailures += 1;
            stats.failures.push(`after SIGKILL ${stats.kills}: round ${lastRound}'s flushed data failed verification: ${check.output.slice(-500)}`);
          }
          console.log(`SIGKILL ${stats.kills}, restarted: round ${lastRound}'s data ${check.code === 0 ? 'intact' : 'FAILED'}`);
        }
      }
    }
  } finally {
    clearInterval(sampler);
    if (server.child) await server.kill('SIGTERM');
    fs.rmSync(work, { recursive: true, force: true });
  }
  const minutes = (Date.now() - started) / 60_000;
  const idle = stats.idleRssKiB.map((k) => Math.round(k / 1024));
  console.log(`\nsoak: ${minutes.toFixed(1)} min, ${stats.rounds} rounds, ${(stats.bytesWritten / 2 ** 30).toFixed(2)} GiB written and verified by ${options.connections} connections`);
  console.log(`faults: ${stats.kills} SIGKILL + restart (flushed data verified after each), ${stats.aborts} clients aborted mid-read, ${stats.trims} TRIMs (${stats.trimFailures} storms failed)`);
  console.log(`bad inputs: ${stats.badRequests} malformed or invalid requests in ${stats.badSessions} sessions (${stats.badAnswered} answered with an error, ${stats.badClosed} connections closed by the protocol's rules), the server answering a fresh connection after each`);
  console.log(`RSS: peak ${Math.round(stats.peakRssKiB / 1024)} MiB; idle after rounds ${idle.join(', ')} MiB`);
  console.log(`verifications: ${stats.verifies - stats.verifyFailures} of ${stats.verifies} passed`);
  for (const failure of stats.failures) console.log(`FAILURE: ${failure}`);
  process.exitCode = stats.failures.length === 0 ? 0 : 1;
}

/** The JSON summary line soak_bad_inputs.py prints last, or null. */
function parseBadInputs(output: string): { sessions: number; requests: number; errors_answered: number; closed: number; failures: string[] } | null {
  const line = output.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as { sessions: number; requests: number; errors_answered: number; closed: number; failures: string[] };
  } catch {
    return null;
  }
}

main().catch((error: unknown) => {
  console.error(`soak: ${(error as Error).message}`);
  process.exitCode = 1;
});
