/**
 * What the benchmark needs from the machine (checked before anything starts, with the exact
 * apt-get line to fix it) and what it records about the machine next to the figures.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCommand } from './processes.js';

/** Executable -> the Debian package that ships it. */
const BLOCK_TOOLS: Record<string, string> = { fio: 'fio', nbdkit: 'nbdkit', nbdinfo: 'libnbd-bin' };
const FILESYSTEM_TOOLS: Record<string, string> = {
  nbdfuse: 'nbdfuse',
  fusermount3: 'fuse3',
  losetup: 'mount',
  mount: 'mount',
  umount: 'mount',
  'mkfs.ext4': 'e2fsprogs',
  e2fsck: 'e2fsprogs',
};

function onPath(executable: string): boolean {
  const directories = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin']);
  return directories.some((directory) => {
    try {
      fs.accessSync(path.join(directory, executable), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

export interface Preflight {
  /** Fatal problems, each with what to do. */
  errors: string[];
  /** Why the filesystem jobs cannot run here, or null. */
  filesystemUnavailable: string | null;
}

function missingPackages(tools: Record<string, string>): string[] {
  return [...new Set(Object.entries(tools).filter(([executable]) => !onPath(executable)).map(([, pkg]) => pkg))];
}

export async function preflight(options: { repoRoot: string; filesystem: boolean }): Promise<Preflight> {
  const errors: string[] = [];
  const blockMissing = missingPackages(BLOCK_TOOLS);
  const fsMissing = options.filesystem ? missingPackages(FILESYSTEM_TOOLS) : [];
  const missing = [...blockMissing, ...fsMissing];
  if (missing.length > 0) {
    errors.push(`missing tools: install them with\n    sudo apt-get update && sudo apt-get install -y ${missing.join(' ')}${fsMissing.length > 0 ? '\n  (or pass --no-fs to skip the filesystem jobs)' : ''}`);
  }
  if (blockMissing.length === 0 && (await runCommand('fio', ['--enghelp=nbd'], { timeoutMs: 10_000 })).code !== 0) {
    errors.push('this fio has no nbd engine: install Debian\'s fio package (apt-get install -y fio), which is built with libnbd');
  }
  if (!fs.existsSync(path.join(options.repoRoot, 'build/src/cli/main.js'))) {
    errors.push(`pstorage is not built: run \`npx tsc -p tsconfig.json\` (or \`npm run build\`) in ${options.repoRoot}`);
  }
  let filesystemUnavailable: string | null = null;
  if (!options.filesystem) filesystemUnavailable = 'skipped with --no-fs';
  else if (process.getuid?.() !== 0) filesystemUnavailable = 'needs root (losetup, mount); run as root or pass --no-fs';
  else if (!fs.existsSync('/dev/fuse')) filesystemUnavailable = 'no /dev/fuse on this machine';
  if (filesystemUnavailable !== null && options.filesystem) errors.push(`filesystem jobs cannot run: ${filesystemUnavailable}`);
  return { errors, filesystemUnavailable };
}

export interface MachineInfo {
  hostname: string;
  nproc: number;
  cpuModel: string;
  kernel: string;
  memoryBytes: number;
  loadAverageAtStart: number[];
  loadAverageAtEnd?: number[];
  node: string;
  tools: Record<string, string>;
  /** `git describe --dirty` of the checkout; the build measured may be newer or older. */
  pstorageCommit: string;
  /** When build/src/cli/main.js (what bin/pstorage.js runs) was last compiled. */
  pstorageBuiltAt: string | null;
  workDirFilesystem: string;
}

async function firstLine(command: string, args: string[]): Promise<string> {
  try {
    const result = await runCommand(command, args, { timeoutMs: 10_000 });
    return (result.stdout || result.stderr).trim().split('\n')[0] ?? '';
  } catch {
    return 'unavailable';
  }
}

function builtAt(filePath: string): string | null {
  try {
    return fs.statSync(filePath).mtime.toISOString();
  } catch {
    return null;
  }
}

export async function describeMachine(repoRoot: string, workDir: string): Promise<MachineInfo> {
  const commit = await firstLine('git', ['-C', repoRoot, 'describe', '--always', '--dirty', '--abbrev=12']);
  const dfLine = (await runCommand('df', ['-T', workDir], { timeoutMs: 10_000 })).stdout.trim().split('\n')[1] ?? '';
  return {
    hostname: os.hostname(),
    nproc: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    kernel: `${os.type()} ${os.release()}`,
    memoryBytes: os.totalmem(),
    loadAverageAtStart: os.loadavg(),
    node: process.version,
    tools: {
      fio: await firstLine('fio', ['--version']),
      nbdkit: await firstLine('nbdkit', ['--version']),
      nbdinfo: await firstLine('nbdinfo', ['--version']),
      nbdfuse: await firstLine('nbdfuse', ['--version']),
    },
    pstorageCommit: commit,
    pstorageBuiltAt: builtAt(path.join(repoRoot, 'build/src/cli/main.js')),
    workDirFilesystem: dfLine.split(/\s+/).slice(0, 2).join(' '),
  };
}
