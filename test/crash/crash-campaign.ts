/**
 * A crash campaign against the real `pstorage serve` process, shared by the ava test
 * (process-crash.test.ts) and the soak script (scripts/crash-soak.ts).
 *
 * One cycle: start the workload (crash_workload.py: writes, sub-block writes, pattern blocks,
 * deduplicable blocks, WRITE_ZEROES, TRIM, FUA and periodic FLUSH over two connections, many
 * requests in flight), SIGKILL the server after a random delay (or at once if it logs an error,
 * to freeze the evidence), let the client record what it saw, sometimes kill the server again
 * while it opens the directory, restart it (its "data directory opened" line gives the recovery
 * time), read the region back and check it against the journal (crash-model.ts), SIGKILL the now
 * idle server, and run `pstorage inspect audit` on the stopped data directory (it opens the
 * directory itself, so it cannot run beside the server). What was read becomes the starting state
 * of the next cycle, so state and crashes accumulate in one data directory. The last cycle may
 * end with SIGTERM instead, after which every acknowledged write must be there. Each start draws
 * the server's metadata cache size and GC policy from the seed.
 *
 * Failures besides the contract: an error reply other than the lost connection, an error line in
 * the server's log, the server exiting by itself, an audit that exits non-zero.
 *
 * Everything random on this side (delays, server settings, startup kills) comes from the seed,
 * and the workload's requests come from (seed, cycle); the exact moment a kill lands depends on
 * timing, so a replay with the same seed repeats the workload, not the interleaving.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { SeededRandom } from '../../src/nand/seeded-random.js';
import { PSTORAGE_BIN, REPO_ROOT, startPstorage, type PstorageProcess } from '../helpers/pstorage-process.js';
import { RegionModel, parseJournal, summarise, type CycleSummary, type VerifyResult } from './crash-model.js';

export const WORKLOAD_SCRIPT = path.join(REPO_ROOT, 'test/crash/crash_workload.py');
/** python3-libnbd imports only under the system interpreter (TESTING.md). */
export const SYSTEM_PYTHON = '/usr/bin/python3';

export interface CampaignOptions {
  /** Whole number 0 … 2^32-1; printed so that a failure can be replayed. */
  seed: number;
  cycles: number;
  /** Holds the data directory, the journals and the region images; kept when a check fails. */
  workDir: string;
  regionBlocks?: number;
  /** NAND capacity of the new array: small, so that garbage collection runs during the workload. */
  capacity?: string;
  killAfterMs?: { min: number; max: number };
  /** Every Nth cycle also kills the server while it opens the data directory (0: never). */
  startupKillEvery?: number;
  /** End the last cycle with SIGTERM (clean shutdown) instead of SIGKILL. */
  cleanStopLast?: boolean;
  log?: (line: string) => void;
}

export type AuditOutcome = { status: 'ok'; elapsedMs: number } | { status: 'missing'; detail: string };

export interface CycleReport {
  cycle: number;
  ending: 'SIGKILL' | 'SIGTERM';
  /** Settings of the server that ran the workload. */
  loadedServer: string;
  killAfterMs: number;
  /** The longest a request waited for its reply (or was still waiting at the kill). */
  slowestReplyMs: number;
  summary: CycleSummary;
  /** The extra kill while the server was starting: when, and whether it had opened the directory. */
  startupKill: { afterMs: number; opened: boolean } | null;
  recoveryMs: number;
  openMs: number;
  verify: VerifyResult;
  audit: AuditOutcome;
}

export interface CampaignReport {
  seed: number;
  workDir: string;
  cycles: CycleReport[];
  /** Set when `pstorage inspect audit` does not exist: the campaign ran without it. */
  auditMissing: string | null;
}

/** A broken durability contract, a failed audit or an error reply: carries what replays it. */
export class CrashCheckError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CrashCheckError';
  }
}

const MAX_VIOLATIONS_SHOWN = 12;
const CACHE_MB_CHOICES = [1, 4, 256];

export async function runCampaign(options: CampaignOptions): Promise<CampaignReport> {
  const campaign = new Campaign(options);
  try {
    return await campaign.run();
  } finally {
    // After a failure this leaves the data directory as the failing check saw it.
    await campaign.killServer();
  }
}

class Campaign {
  private readonly rng: SeededRandom;
  private readonly model: RegionModel;
  private readonly dataDir: string;
  private readonly regionBlocks: number;
  private readonly capacity: string;
  private readonly log: (line: string) => void;
  private server: PstorageProcess | null = null;
  private serverSettings = { cacheMb: 256, gcPolicy: 'cost-benefit' };
  /** How long the last start took from spawn to "data directory opened" (aims the startup kills). */
  private startupToOpenMs = 300;
  private loadedServer = '';
  private readonly report: CampaignReport;

  constructor(private readonly options: CampaignOptions) {
    this.rng = new SeededRandom(options.seed);
    this.regionBlocks = options.regionBlocks ?? 2048;
    this.capacity = options.capacity ?? '64M';
    this.model = new RegionModel(options.seed, this.regionBlocks);
    this.dataDir = path.join(options.workDir, 'data');
    this.log = options.log ?? (() => undefined);
    this.report = { seed: options.seed, workDir: options.workDir, cycles: [], auditMissing: null };
  }

  async run(): Promise<CampaignReport> {
    for (let cycle = 1; cycle <= this.options.cycles; cycle++) {
      const ending = this.options.cleanStopLast === true && cycle === this.options.cycles ? 'SIGTERM' : 'SIGKILL';
      const report = await this.runCycle(cycle, ending);
      this.report.cycles.push(report);
      this.log(formatCycle(report));
    }
    return this.report;
  }

  async killServer(): Promise<void> {
    const server = this.server;
    this.server = null;
    await server?.stop('SIGKILL');
  }

  private async runCycle(cycle: number, ending: 'SIGKILL' | 'SIGTERM'): Promise<CycleReport> {
    const { min, max } = this.options.killAfterMs ?? { min: 200, max: 2500 };
    const killAfterMs = min + this.rng.nextInt(max - min + 1);
    const journalPath = path.join(this.options.workDir, `journal-${cycle}.txt`);
    if (this.server === null) this.server = await this.startServer();
    const loadedServer = `cache ${this.serverSettings.cacheMb} MiB, GC ${this.serverSettings.gcPolicy}`;
    this.loadedServer = loadedServer;
    const { slowestReplyMs } = await this.runWorkloadUntilStop(cycle, journalPath, killAfterMs, ending);
    const journal = parseJournal(fs.readFileSync(journalPath, 'utf8'));
    const summary = summarise(journal);
    if (summary.serverErrors.length > 0) this.fail(cycle, `the server failed requests it should have served:\n${summary.serverErrors.slice(0, MAX_VIOLATIONS_SHOWN).join('\n')}`);
    const every = this.options.startupKillEvery ?? 5;
    const startupKill = every > 0 && cycle % every === 0 ? await this.killDuringStartup() : null;
    this.server = await this.startServer();
    const opened = openedRecord(this.server.logs());
    const image = await this.dumpRegion(cycle);
    const verify = this.model.verify(image, this.model.expectations(journal, { allAckedDurable: ending === 'SIGTERM' }));
    if (verify.violations.length > 0) this.failContract(cycle, journalPath, verify);
    this.model.adopt(image);
    // The audit opens the data directory itself, so the server must be gone: kill it again, idle
    // this time (what was just read must survive that too: the next cycle checks it).
    this.checkServerLog(cycle, this.server, 'after the restart');
    await this.killServer();
    const audit = await this.audit(cycle);
    // Keep the last journal and image for a look after a passing run; older ones are done with.
    fs.rmSync(path.join(this.options.workDir, `journal-${cycle - 1}.txt`), { force: true });
    return { cycle, ending, loadedServer, killAfterMs, slowestReplyMs, summary, startupKill, recoveryMs: opened.recoveryMs, openMs: opened.openMs, verify, audit };
  }

  /** Runs the workload; after `killAfterMs` stops the server with `ending`; waits for the client. */
  private async runWorkloadUntilStop(cycle: number, journalPath: string, killAfterMs: number, ending: 'SIGKILL' | 'SIGTERM'): Promise<{ slowestReplyMs: number }> {
    const server = this.server!;
    const maxSeconds = String(Math.ceil(killAfterMs / 1000) + 30);
    const args = [WORKLOAD_SCRIPT, 'run', '--uri', server.unixUri(), '--journal', journalPath, '--seed', String(this.options.seed), '--cycle', String(cycle), '--region-blocks', String(this.regionBlocks), '--max-seconds', maxSeconds];
    const client = startChild(SYSTEM_PYTHON, args);
    await client.waitForOutput('ready', 20_000).catch((error: Error) => this.fail(cycle, `workload did not start: ${error.message}\n${client.output()}`));
    await sleepUnlessLogged(server, killAfterMs, '"level":"error"');
    const exitedBefore = server.child.exitCode !== null || server.child.signalCode !== null;
    const exit = await server.stop(ending);
    this.server = null;
    fs.writeFileSync(path.join(this.options.workDir, 'server-stopped.log'), server.logs());
    if (exitedBefore) this.fail(cycle, `the server exited by itself under the workload (${JSON.stringify(exit)}) before it was killed:\n${tail(server.logs())}`);
    if (ending === 'SIGTERM' && exit.code !== 0) this.fail(cycle, `server did not shut down cleanly on SIGTERM: ${JSON.stringify(exit)}\n${tail(server.logs())}`);
    this.checkServerLog(cycle, server, 'under the workload');
    const clientExit = await client.waitForExit(30_000);
    if (clientExit.code !== 0) this.fail(cycle, `workload failed (${JSON.stringify(clientExit)}):\n${client.output()}`);
    const number = (name: string) => Number(new RegExp(`${name}=(\\d+)`).exec(client.output())?.[1] ?? NaN);
    return { slowestReplyMs: Math.max(number('maxReplyMs'), number('oldestPendingMs')) };
  }

  /**
   * Starts the server with a metadata cache and GC policy drawn from the seed: a 1 MiB cache
   * makes the engine evict and reload metadata pages and write dirty ones back between flushes,
   * so crashes also land after such background (unsynced) commits.
   */
  private async startServer(): Promise<PstorageProcess> {
    this.serverSettings = { cacheMb: CACHE_MB_CHOICES[this.rng.nextInt(CACHE_MB_CHOICES.length)]!, gcPolicy: this.rng.nextInt(2) === 0 ? 'cost-benefit' : 'greedy' };
    const spawnedAt = Date.now();
    const server = await startPstorage({ dataDir: this.dataDir, args: this.serverArgs() });
    const opened = server.logs().split('\n').find((line) => line.includes('"msg":"data directory opened"') || line.includes('"msg":"data directory created"'));
    if (opened !== undefined) this.startupToOpenMs = Date.parse((JSON.parse(opened) as { time: string }).time) - spawnedAt;
    return server;
  }

  private serverArgs(): string[] {
    return ['--capacity', this.capacity, '--cache-mb', String(this.serverSettings.cacheMb), '--gc-policy', this.serverSettings.gcPolicy];
  }

  /**
   * Starts the server and SIGKILLs it after a random delay aimed at the opening of the directory:
   * between 60% and 120% of the last start's time from spawn to "opened" (recovery is its end).
   */
  private async killDuringStartup(): Promise<{ afterMs: number; opened: boolean }> {
    const afterMs = Math.round(this.startupToOpenMs * (0.6 + 0.6 * this.rng.next()));
    const args = [PSTORAGE_BIN, 'serve', '--data-dir', this.dataDir, '--socket', path.join(this.options.workDir, 'startup-kill.sock'), ...this.serverArgs()];
    const child = startChild(process.execPath, args, { ...process.env, PSTORAGE_LOG: 'info', PSTORAGE_LISTEN: 'none' });
    await sleep(afterMs);
    child.process.kill('SIGKILL');
    await child.waitForExit(10_000);
    return { afterMs, opened: child.output().includes('"msg":"data directory opened"') };
  }

  private async audit(cycle: number): Promise<AuditOutcome> {
    const result = await run(process.execPath, [PSTORAGE_BIN, 'inspect', 'audit', '--data-dir', this.dataDir], 120_000);
    if (result.code === 0) return { status: 'ok', elapsedMs: result.elapsedMs };
    if (/unknown command|unknown option '--data-dir'/i.test(result.output)) {
      const detail = `\`pstorage inspect audit --data-dir DIR\` is not available (exit ${result.code}: ${result.output.trim().split('\n')[0]})`;
      if (this.report.auditMissing === null) this.log(`WARNING: ${detail}; the crash test will fail at the end for this reason`);
      this.report.auditMissing = detail;
      return { status: 'missing', detail };
    }
    this.fail(cycle, `pstorage inspect audit reported a problem:\n${describeRun(result)}`);
  }

  /** An error logged by the server (a failed write-back, a NAND error) fails the cycle. */
  private checkServerLog(cycle: number, server: PstorageProcess, when: string): void {
    const errors = server.logs().split('\n').filter((line) => line.includes('"level":"error"'));
    if (errors.length === 0) return;
    const logFile = path.join(this.options.workDir, `server-${cycle}-${when.replace(/\W+/g, '-')}.log`);
    fs.writeFileSync(logFile, server.logs());
    const shown = [...new Set(errors.map(summariseLogLine))].slice(0, 5);
    this.fail(cycle, `the server logged ${errors.length} error(s) ${when}, e.g.:\n${shown.join('\n')}\nfull log: ${logFile}`);
  }

  private async dumpRegion(cycle: number): Promise<Buffer> {
    const out = path.join(this.options.workDir, 'region.img');
    const args = [WORKLOAD_SCRIPT, 'dump', '--uri', this.server!.unixUri(), '--out', out, '--region-blocks', String(this.regionBlocks)];
    const result = await run(SYSTEM_PYTHON, args, 60_000);
    if (result.code !== 0) this.fail(cycle, `reading the region back after the restart failed:\n${describeRun(result)}\n${tail(this.server!.logs())}`);
    return fs.readFileSync(out);
  }

  private failContract(cycle: number, journalPath: string, verify: VerifyResult): never {
    const shown = verify.violations.slice(0, MAX_VIOLATIONS_SHOWN).map((v) => `  lba ${v.lba}: ${v.message}`);
    const more = verify.violations.length > shown.length ? `\n  … and ${verify.violations.length - shown.length} more` : '';
    this.fail(cycle, `${verify.violations.length} logical block(s) break the durability contract after the restart:\n${shown.join('\n')}${more}\njournal: ${journalPath}; region read back: ${path.join(this.options.workDir, 'region.img')}; log of the stopped server: ${path.join(this.options.workDir, 'server-stopped.log')}\nserver log after restart:\n${tail(this.server?.logs() ?? '')}`);
  }

  private fail(cycle: number, message: string): never {
    const context = `seed ${this.options.seed}, server under load: ${this.loadedServer}, data kept in ${this.options.workDir}`;
    throw new CrashCheckError(`crash test failed in cycle ${cycle} (${context}): ${message}`);
  }
}

// ---- Helpers ----------------------------------------------------------------------------------

function openedRecord(logs: string): { recoveryMs: number; openMs: number } {
  for (const line of logs.split('\n')) {
    if (!line.includes('"msg":"data directory opened"')) continue;
    const record = JSON.parse(line) as { recoveryMs: number; openMs: number };
    return { recoveryMs: record.recoveryMs, openMs: record.openMs };
  }
  throw new CrashCheckError(`the restarted server did not log "data directory opened":\n${tail(logs)}`);
}

/** One error log line, short: message, error and the first frames of its stack. */
function summariseLogLine(line: string): string {
  try {
    const { time: _time, level: _level, msg, stack, ...fields } = JSON.parse(line) as Record<string, unknown>;
    const frames = String(stack ?? '').split('\n').slice(1, 4).map((frame) => frame.trim()).filter((frame) => frame !== '');
    return `${String(msg)} ${JSON.stringify(fields)}${frames.length > 0 ? ` [${frames.join(' ← ')}]` : ''}`;
  } catch {
    return line.slice(0, 500);
  }
}

function formatCycle(report: CycleReport): string {
  const s = report.summary;
  const v = report.verify;
  const kill = report.startupKill;
  const startup = kill === null ? '' : `, killed again ${kill.afterMs} ms into startup (${kill.opened ? 'after' : 'before'} the directory was open)`;
  return (
    `cycle ${report.cycle}: ${report.ending} after ${report.killAfterMs} ms [${report.loadedServer}] (${s.issued} requests, ${s.acked} acked, ${s.flushesAcked} flushes, ${s.fuaAcked} FUA, slowest reply ${report.slowestReplyMs} ms)` +
    `${startup}; recovery ${report.recoveryMs} ms; ${v.exactBlocks} blocks exact, ${v.inDoubtBlocks} in doubt (${v.inDoubtNewest} newest); audit ${report.audit.status}`
  );
}

export function percentiles(values: number[]): { min: number; median: number; max: number } {
  const sorted = [...values].sort((a, b) => a - b);
  return { min: sorted[0] ?? NaN, median: sorted[Math.floor(sorted.length / 2)] ?? NaN, max: sorted[sorted.length - 1] ?? NaN };
}

function tail(text: string, lines = 30): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

interface RunResult {
  command: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
  elapsedMs: number;
}

/** Runs a program to completion (SIGKILL after `timeoutMs`), capturing its output. */
export async function run(program: string, args: string[], timeoutMs: number): Promise<RunResult> {
  const started = Date.now();
  const child = startChild(program, args);
  const exit = await child.waitForExit(timeoutMs);
  return { command: [program, ...args].join(' '), ...exit, output: child.output(), elapsedMs: Date.now() - started };
}

function describeRun(result: RunResult): string {
  return `\`${result.command}\` ended with ${JSON.stringify({ code: result.code, signal: result.signal })} after ${result.elapsedMs} ms:\n${result.output.trimEnd()}`;
}

/**
 * Sleeps `ms`, but returns as soon as the server logs `text`, so that the kill that follows
 * freezes the data directory close to the moment of an error (for the post-mortem).
 */
async function sleepUnlessLogged(server: PstorageProcess, ms: number, text: string): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until && !server.logs().includes(text)) await sleep(Math.min(10, until - Date.now()));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface Child {
  process: ChildProcess;
  output(): string;
  waitForOutput(text: string, timeoutMs: number): Promise<void>;
  waitForExit(timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Spawns a program with its output captured; waiting for exit SIGKILLs it after `timeoutMs`. */
function startChild(program: string, args: string[], env: NodeJS.ProcessEnv = process.env): Child {
  const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let output = '';
  child.stdout!.setEncoding('utf8').on('data', (text: string) => (output += text));
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (output += text));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.once('error', (error) => {
      output += `\n[cannot run ${program}: ${error.message}]`;
      resolve({ code: -1, signal: null });
    });
  });
  return {
    process: child,
    output: () => output,
    waitForOutput: async (text, timeoutMs) => {
      const deadline = Date.now() + timeoutMs;
      while (!output.includes(text)) {
        if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${path.basename(program)} exited before printing "${text}"`);
        if (Date.now() > deadline) throw new Error(`no "${text}" from ${path.basename(program)} within ${timeoutMs} ms`);
        await sleep(10);
      }
    },
    waitForExit: async (timeoutMs) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
}
