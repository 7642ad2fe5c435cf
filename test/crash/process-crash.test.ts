/**
 * Real-process crash test: `pstorage serve` under a write workload with periodic FLUSH is killed
 * with SIGKILL at random moments, restarted on the same data directory, and checked against the
 * durability contract (DESIGN.md): every logical block acknowledged before the last completed
 * FLUSH, or written with FUA, reads back exactly; every other block reads as one of the contents
 * written to it since its last durable one, never torn, never another block's data. After every
 * check the server is killed again (idle) and `pstorage inspect audit` must exit 0 on the stopped
 * data directory. Every fifth cycle the server is also killed while it opens the directory; each
 * start draws its metadata cache (1, 4 or 256 MiB) and GC policy from the seed. The last cycle
 * ends with SIGTERM, after which every acknowledged write must be there. An error reply other
 * than the lost connection, an error in the server's log, or the server dying by itself fails too.
 *
 * The seed is printed; PSTORAGE_CRASH_SEED=N replays a run's workload and delays,
 * PSTORAGE_CRASH_CYCLES=N changes the number of cycles (default 24). scripts/crash-soak.sh runs
 * the same campaign for 1000 cycles. How the check works: crash-model.ts.
 */
import fs from 'node:fs';
import test from 'ava';
import { randomSeed } from '../../src/nand/seeded-random.js';
import { makeTempDir } from '../helpers/pstorage-process.js';
import { SYSTEM_PYTHON, percentiles, run, runCampaign } from './crash-campaign.js';

const DEFAULT_CYCLES = 24;

function wholeNumberFromEnv(name: string, fallback: () => number, min: number, max: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback();
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < min || value > max) throw new Error(`${name}=${text} is not a whole number from ${min} to ${max}`);
  return value;
}

test('SIGKILL at random moments under writes and FLUSH: every restart keeps the durability contract and passes the audit', async (t) => {
  const probe = await run(SYSTEM_PYTHON, ['-c', 'import nbd'], 10_000).catch((error: Error) => ({ code: -1, output: error.message }));
  if (probe.code !== 0) throw new Error(`the crash test needs ${SYSTEM_PYTHON} with python3-libnbd (Debian packages python3 python3-libnbd): ${probe.output.trim()}`);

  const seed = wholeNumberFromEnv('PSTORAGE_CRASH_SEED', randomSeed, 0, 0xffffffff);
  const cycles = wholeNumberFromEnv('PSTORAGE_CRASH_CYCLES', () => DEFAULT_CYCLES, 1, 4000);
  t.log(`seed ${seed} (replay with PSTORAGE_CRASH_SEED=${seed}), ${cycles} cycles`);
  const workDir = makeTempDir('pstorage-crash-');
  let passed = false;
  t.teardown(() => {
    if (passed) fs.rmSync(workDir, { recursive: true, force: true });
    else console.error(`process-crash: seed ${seed}; data directory, journals and region image kept in ${workDir}`);
  });

  const report = await runCampaign({ seed, cycles, workDir, cleanStopLast: true, log: (line) => t.log(line) });

  const recovery = percentiles(report.cycles.map((cycle) => cycle.recoveryMs));
  t.log(`recovery time over ${report.cycles.length} restarts: min ${recovery.min} ms, median ${recovery.median} ms, max ${recovery.max} ms`);
  const kills = report.cycles.filter((cycle) => cycle.ending === 'SIGKILL').length;
  const startupKills = report.cycles.filter((cycle) => cycle.startupKill !== null).length;
  t.true(kills >= 20 || cycles < 21, `only ${kills} SIGKILL cycles ran`);
  t.log(`${kills} kills under load, ${startupKills} kills during startup, 1 clean stop; seed ${seed}`);
  t.is(report.auditMissing, null, `every data check passed, but ${report.auditMissing ?? ''}: the crash test needs "pstorage inspect audit --data-dir DIR" (exit 0 when every structure is consistent)`);
  passed = report.auditMissing === null;
});
