/**
 * The benchmark's command line. Full mode is the default (1 GiB test region, 3 repetitions);
 * --quick is the smoke-test size (64 MiB, 1 repetition, 3 s per job, under 3 minutes in all).
 */
import path from 'node:path';
import os from 'node:os';
import { Command, InvalidArgumentError } from 'commander';
import type { Preconditioning } from './jobs.js';
import type { Transport } from './servers.js';

export interface BenchOptions {
  quick: boolean;
  runtimeSeconds: number;
  repeat: number;
  /** Bytes of each test region (see jobs.ts for the layout). */
  sizeBytes: number;
  /** Size of the ext4 filesystem made for the filesystem jobs (the test file is `sizeBytes`). */
  filesystemBytes: number;
  outDir: string;
  workDir: string;
  transport: Transport;
  precondition: Preconditioning;
  compressPercent: number;
  filesystem: boolean;
  png: boolean;
  keepWorkDir: boolean;
  json: boolean;
  /** Re-render results.md and the charts from this results.json instead of running anything. */
  renderFrom: string | null;
  /** False with --no-matrix: no preconditioning, block matrix or filesystem jobs (experiments only). */
  matrix: boolean;
  /** Names of the experiments to run (extensions.ts), in order. */
  experiments: string[];
}

export const EXPERIMENT_NAMES = ['reduction', 'flash', 'memory'] as const;

function parseExperiments(text: string): string[] {
  if (text.trim() === 'none') return [];
  const names = text.split(',').map((name) => name.trim()).filter((name) => name.length > 0);
  const unknown = names.filter((name) => !(EXPERIMENT_NAMES as readonly string[]).includes(name));
  if (unknown.length > 0 || names.length === 0) throw new InvalidArgumentError(`use a comma-separated list of ${EXPERIMENT_NAMES.join(', ')} (or none)`);
  return [...new Set(names)];
}

const SIZE_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };

/** "64M", "1G", "1048576" -> bytes; a multiple of 1 MiB so every job's block size divides it. */
export function parseSize(text: string): number {
  const match = /^(\d+)\s*([kmg]?)(?:i?b)?$/i.exec(text.trim());
  const bytes = match ? Number(match[1]) * SIZE_UNITS[match[2]!.toLowerCase()]! : NaN;
  if (!Number.isSafeInteger(bytes) || bytes < 1024 ** 2 || bytes % 1024 ** 2 !== 0) {
    throw new InvalidArgumentError(`"${text}" is not a size of at least 1M in whole MiB (examples: 64M, 1G)`);
  }
  return bytes;
}

function parsePositiveInteger(text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new InvalidArgumentError(`"${text}" is not a whole number of at least 1`);
  return value;
}

function parseChoice<T extends string>(choices: readonly T[]) {
  return (text: string): T => {
    if (!(choices as readonly string[]).includes(text)) throw new InvalidArgumentError(`use one of: ${choices.join(', ')}`);
    return text as T;
  };
}

function timestamp(): string {
  return new Date().toISOString().replace(/[:]/g, '-').replace(/\..*$/, '');
}

export function buildBenchCommand(repoRoot: string, onParsed: (options: BenchOptions) => Promise<void>): Command {
  return new Command('bench')
    .description('pstorage side by side with nbdkit memory and nbdkit file: fio (ioengine=nbd) matrix, data patterns and ext4 end to end')
    .option('--quick', 'small and short: 64M region, 1 repetition, 3 s per job (under 3 minutes)', false)
    .option('--runtime <seconds>', 'seconds per measured job (default 15; 3 with --quick)', parsePositiveInteger)
    .option('--repeat <n>', 'repetitions per job; figures are medians (default 3; 1 with --quick)', parsePositiveInteger)
    .option('--size <bytes>', 'test region size, e.g. 1G (default 1G; 64M with --quick)', parseSize)
    .option('--fs-size <bytes>', 'ext4 size for the filesystem jobs (default 4 x --size, at least 256M)', parseSize)
    .option('--out <dir>', 'output directory (default bench-results/<timestamp>)')
    .option('--work-dir <dir>', 'where the data directory, sparse file and mounts go', os.tmpdir())
    .option('--transport <tcp|unix>', 'how fio and nbdfuse reach every server', parseChoice<Transport>(['tcp', 'unix']), 'tcp')
    .option('--precondition <rand4k|seq1m>', 'how every server\'s test region is filled first (rand4k suits nbdkit file best)', parseChoice<Preconditioning>(['rand4k', 'seq1m']), 'rand4k')
    .option('--compress-percent <n>', 'fio buffer_compress_percentage for the compressible-data job', parsePositiveInteger, 50)
    .option('--no-fs', 'skip the filesystem (nbdfuse + loop + ext4) jobs')
    .option('--no-png', 'do not convert the SVG charts to PNG even if rsvg-convert is installed')
    .option('--keep-work-dir', 'keep the data directory and logs instead of deleting them', false)
    .option('--json', 'print results.json on standard output instead of the summary table', false)
    .option('--experiments <names>', `experiments to run after the fio jobs: comma-separated ${EXPERIMENT_NAMES.join(', ')}, or none`, parseExperiments, [...EXPERIMENT_NAMES])
    .option('--no-matrix', 'skip preconditioning, the block matrix and the filesystem jobs (run the experiments only)')
    .option('--render <results.json>', 'only redraw results.md and the charts from an earlier results.json (into --out, default its own directory)')
    .action(async (raw: Record<string, unknown>) => {
      const quick = raw.quick === true;
      const sizeBytes = (raw.size as number | undefined) ?? (quick ? 64 * 1024 ** 2 : 1024 ** 3);
      await onParsed({
        quick,
        runtimeSeconds: (raw.runtime as number | undefined) ?? (quick ? 3 : 15),
        repeat: (raw.repeat as number | undefined) ?? (quick ? 1 : 3),
        sizeBytes,
        filesystemBytes: (raw.fsSize as number | undefined) ?? Math.max(4 * sizeBytes, 256 * 1024 ** 2),
        outDir: path.resolve((raw.out as string | undefined) ?? (raw.render !== undefined ? path.dirname(raw.render as string) : path.join(repoRoot, 'bench-results', timestamp()))),
        workDir: path.resolve(raw.workDir as string),
        transport: raw.transport as Transport,
        precondition: raw.precondition as Preconditioning,
        compressPercent: Math.min(raw.compressPercent as number, 100),
        filesystem: raw.fs !== false,
        png: raw.png !== false,
        keepWorkDir: raw.keepWorkDir === true,
        json: raw.json === true,
        renderFrom: raw.render !== undefined ? path.resolve(raw.render as string) : null,
        matrix: raw.matrix !== false,
        experiments: raw.experiments as string[],
      });
    });
}
