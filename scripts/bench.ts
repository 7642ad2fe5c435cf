#!/usr/bin/env node
/**
 * `npm run bench`: pstorage side by side with nbdkit memory (the NBD ceiling) and nbdkit file (the
 * plain persistent peer), the same fio matrix against each, plus ext4 end to end. Writes
 * results.json, results.md and charts to --out; see scripts/bench/run.ts for the phases.
 *
 * Exit codes: 0 every run succeeded; 1 the benchmark failed or some runs failed (the results that
 * exist are still written); 2 bad usage or a missing tool (the message says what to install);
 * 130 interrupted (everything started is stopped first).
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CommanderError } from 'commander';
import { countFailedRuns, renderMarkdownSummary } from './bench/summary.js';
import { buildBenchCommand, type BenchOptions } from './bench/options.js';
import { CleanupStack } from './bench/processes.js';
import type { BenchReport } from './bench/report.js';
import { BenchSetupError, runBench, writeOutputs } from './bench/run.js';

const EXIT_FAILED = 1;
const EXIT_USAGE = 2;
const EXIT_INTERRUPTED = 130;

/** build/scripts/bench.js -> the repository root. */
const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function quote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

function commandLine(argv: readonly string[]): string {
  const script = path.relative(process.cwd(), argv[1] ?? 'build/scripts/bench.js') || argv[1]!;
  return ['node', script, ...argv.slice(2)].map(quote).join(' ');
}

const log = (message: string): void => void process.stderr.write(`${message}\n`);

/** --render: the measurements of an earlier run, drawn again (the run's own command line is kept). */
function rerender(options: BenchOptions): BenchReport {
  const report = JSON.parse(fs.readFileSync(options.renderFrom!, 'utf8')) as BenchReport;
  fs.mkdirSync(options.outDir, { recursive: true });
  report.options.outDir = options.outDir;
  writeOutputs(report, log);
  return report;
}

async function execute(options: BenchOptions, cleanup: CleanupStack): Promise<void> {
  try {
    const report = options.renderFrom !== null ? rerender(options) : await runBench(options, { repoRoot: REPO_ROOT, commandLine: commandLine(process.argv), cleanup, log });
    if (options.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    else process.stdout.write(renderMarkdownSummary(report));
    if (countFailedRuns(report) > 0) process.exitCode = EXIT_FAILED;
  } finally {
    await cleanup.runAll(log);
  }
}

async function main(): Promise<void> {
  const cleanup = new CleanupStack();
  let interrupted = false;
  const interrupt = (signal: string): void => {
    if (interrupted) return;
    interrupted = true;
    log(`bench: ${signal}: stopping everything that was started`);
    void cleanup.runAll(log).finally(() => process.exit(EXIT_INTERRUPTED));
  };
  process.on('SIGINT', () => interrupt('SIGINT'));
  process.on('SIGTERM', () => interrupt('SIGTERM'));
  const command = buildBenchCommand(REPO_ROOT, (options) => execute(options, cleanup)).exitOverride();
  try {
    await command.parseAsync(process.argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      process.exitCode = error.exitCode === 0 ? 0 : EXIT_USAGE;
    } else if (error instanceof BenchSetupError) {
      log(`bench: ${error.message}`);
      process.exitCode = EXIT_USAGE;
    } else {
      log(`bench: failed: ${(error as Error).stack ?? String(error)}`);
      process.exitCode = EXIT_FAILED;
    }
  }
}

await main();
