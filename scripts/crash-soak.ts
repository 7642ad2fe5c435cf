/**
 * Crash soak: the real-process crash campaign of test/crash/ (SIGKILL under a write workload with
 * periodic FLUSH, restart, check the durability contract, `pstorage inspect audit`) for many
 * cycles on one data directory. Run it through scripts/crash-soak.sh, which builds first.
 *
 * Usage: scripts/crash-soak.sh [--cycles N] [--seed N] [--dir DIR]
 *   --cycles  kill cycles (env PSTORAGE_SOAK_CYCLES, default 1000)
 *   --seed    replay a run (env PSTORAGE_CRASH_SEED, default random; always printed)
 *   --dir     work directory (default a new temporary one; removed after a passing run)
 * Exit codes: 0 every cycle passed, 1 a check failed (the work directory is kept), 2 bad usage.
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { randomSeed } from '../src/nand/seeded-random.js';
import { makeTempDir } from '../test/helpers/pstorage-process.js';
import { percentiles, runCampaign } from '../test/crash/crash-campaign.js';

function wholeNumber(text: string | undefined, name: string, fallback: number, max = Number.MAX_SAFE_INTEGER): number {
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 0 || value > max) {
    process.stderr.write(`crash-soak: ${name} must be a whole number from 0 to ${max}, not "${text}"\n`);
    process.exit(2);
  }
  return value;
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { cycles: { type: 'string' }, seed: { type: 'string' }, dir: { type: 'string' } } });
  const cycles = wholeNumber(values.cycles ?? process.env.PSTORAGE_SOAK_CYCLES, '--cycles', 1000, 4000);
  const seed = wholeNumber(values.seed ?? process.env.PSTORAGE_CRASH_SEED, '--seed', randomSeed(), 0xffffffff);
  const workDir = values.dir ?? makeTempDir('pstorage-crash-soak-');
  fs.mkdirSync(workDir, { recursive: true });
  const started = Date.now();
  process.stdout.write(`crash-soak: seed ${seed}, ${cycles} cycles, work directory ${workDir}\n`);
  process.stdout.write(`crash-soak: replay with scripts/crash-soak.sh --seed ${seed} --cycles ${cycles}\n`);
  try {
    const report = await runCampaign({ seed, cycles, workDir, cleanStopLast: true, log: (line) => process.stdout.write(`${line}\n`) });
    const recovery = percentiles(report.cycles.map((cycle) => cycle.recoveryMs));
    const sorted = report.cycles.map((cycle) => cycle.recoveryMs).sort((a, b) => a - b);
    const p99 = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))];
    const requests = report.cycles.reduce((sum, cycle) => sum + cycle.summary.issued, 0);
    const flushes = report.cycles.reduce((sum, cycle) => sum + cycle.summary.flushesAcked, 0);
    const startupKills = report.cycles.filter((cycle) => cycle.startupKill !== null).length;
    process.stdout.write(
      `\ncrash-soak summary (seed ${seed}): ${report.cycles.length} cycles in ${Math.round((Date.now() - started) / 1000)} s, ` +
        `${report.cycles.length - 1} SIGKILLs under load + ${report.cycles.length} idle SIGKILLs + ${startupKills} during startup + 1 clean stop; ` +
        `${requests} requests, ${flushes} flushes acknowledged\n` +
        `recovery time: min ${recovery.min} ms, median ${recovery.median} ms, p99 ${p99} ms, max ${recovery.max} ms\n`,
    );
    if (report.auditMissing !== null) {
      process.stdout.write(`crash-soak: FAILED: every data check passed, but ${report.auditMissing}\n`);
      return 1;
    }
    process.stdout.write('crash-soak: PASSED\n');
    if (values.dir === undefined) fs.rmSync(workDir, { recursive: true, force: true });
    return 0;
  } catch (error) {
    process.stdout.write(`\ncrash-soak: FAILED after ${Math.round((Date.now() - started) / 1000)} s (seed ${seed}; work directory kept: ${workDir})\n${(error as Error).stack ?? String(error)}\n`);
    return 1;
  }
}

process.exitCode = await main();
