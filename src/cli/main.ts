/**
 * The `pstorage` command line. Exit codes: 0 success, 1 the operation failed, 2 bad usage,
 * 3 the data directory is in use by another process.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { isStorageError } from '../common/errors.js';
import { parseSizeBytes } from '../common/size.js';
import { DEFAULT_LISTEN, parseListen } from './listen-address.js';
import { estimateCommand } from './estimate.js';
import { auditCommand, statsCommand } from './inspect.js';
import { serve } from './serve.js';

export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_BUSY = 3;

const packageJson = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };

function asSize(value: string): number {
  try {
    return parseSizeBytes(value);
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
}

function asPositiveInt(value: string): number {
  const parsed = Number(value);
  if (!Number.isSafeInteger(parsed) || parsed <= 0) throw new InvalidArgumentError(`"${value}" is not a positive whole number`);
  return parsed;
}

function asListen(value: string) {
  try {
    return parseListen(value);
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
}

export function buildProgram(): Command {
  const program = new Command('pstorage')
    .description('A software-defined all-flash storage array, served to Linux over NBD.')
    .version(packageJson.version, '-V, --version')
    .showHelpAfterError('(run "pstorage --help" for usage)')
    .exitOverride();

  program
    .command('serve')
    .description('serve the volumes of a data directory over NBD (creates it, with a 16 GiB "default" volume, on first start)')
    .option('-d, --data-dir <dir>', 'data directory (env PSTORAGE_DATA_DIR)', process.env.PSTORAGE_DATA_DIR ?? './pstorage-data')
    .option('-l, --listen <host:port>', 'TCP address for NBD, or "none" (env PSTORAGE_LISTEN)', asListen, asListen(process.env.PSTORAGE_LISTEN ?? DEFAULT_LISTEN))
    .option('-s, --socket <path>', 'also serve NBD on this Unix socket (env PSTORAGE_SOCKET)', process.env.PSTORAGE_SOCKET)
    .option('--capacity <size>', 'NAND capacity of a new array (sparse), e.g. 8G (env PSTORAGE_CAPACITY)', asSize, process.env.PSTORAGE_CAPACITY ? asSize(process.env.PSTORAGE_CAPACITY) : undefined)
    .option('--cache-mb <mib>', 'metadata cache budget in MiB (env PSTORAGE_CACHE_MB)', asPositiveInt, process.env.PSTORAGE_CACHE_MB ? asPositiveInt(process.env.PSTORAGE_CACHE_MB) : 256)
    .option('--gc-policy <policy>', 'GC victim choice: cost-benefit or greedy', (value: string) => {
      if (value !== 'cost-benefit' && value !== 'greedy') throw new InvalidArgumentError('use cost-benefit or greedy');
      return value;
    }, 'cost-benefit')
    .option('--compression <codec>', 'codec for new data: lz4, zstd or none (env PSTORAGE_COMPRESSION)', (value: string) => {
      if (value !== 'lz4' && value !== 'zstd' && value !== 'none') throw new InvalidArgumentError('use lz4, zstd or none');
      return value;
    }, process.env.PSTORAGE_COMPRESSION ?? 'lz4')
    .option('--dedup <on|off>', 'global deduplication (env PSTORAGE_DEDUP)', (value: string) => {
      if (value !== 'on' && value !== 'off') throw new InvalidArgumentError('use on or off');
      return value;
    }, process.env.PSTORAGE_DEDUP ?? 'on')
    .action(async (options: { dataDir: string; listen: ReturnType<typeof parseListen>; socket?: string; capacity?: number; cacheMb: number; gcPolicy: 'cost-benefit' | 'greedy'; compression: 'lz4' | 'zstd' | 'none'; dedup: 'on' | 'off' }) => {
      if (options.listen === null && options.socket === undefined) {
        throw new InvalidArgumentError('nothing to listen on: give --listen HOST:PORT or --socket PATH');
      }
      await serve({
        dataDir: options.dataDir,
        listen: options.listen,
        socketPath: options.socket ?? null,
        array: {
          capacityBytes: options.capacity,
          cacheBytes: options.cacheMb * 1024 * 1024,
          ftl: { victimPolicy: options.gcPolicy },
          compression: options.compression,
          dedup: options.dedup === 'on',
        },
      });
    });

  const dataDirOption = () => process.env.PSTORAGE_DATA_DIR ?? './pstorage-data';

  program
    .command('stats')
    .description('capacity, data reduction and flash counters (through the running server, or from the data directory)')
    .option('-d, --data-dir <dir>', 'data directory (env PSTORAGE_DATA_DIR)', dataDirOption())
    .option('--json', 'machine-readable output')
    .action(async (options: { dataDir: string; json?: boolean }) => statsCommand(options.dataDir, options.json ?? false));

  program
    .command('estimate')
    .description('estimate what the array would save on an existing raw image (reads it, writes nothing)')
    .argument('<file>', 'a raw image: a VM disk, a backup, a device')
    .option('--json', 'machine-readable output')
    .option('--compression <codec>', 'lz4, zstd or none', 'lz4')
    .option('--dedup <on|off>', 'count duplicate blocks as saved', 'on')
    .action(async (file: string, options: { json?: boolean; compression: string; dedup: string }) => {
      if (!['lz4', 'zstd', 'none'].includes(options.compression)) throw new InvalidArgumentError('--compression: use lz4, zstd or none');
      if (!['on', 'off'].includes(options.dedup)) throw new InvalidArgumentError('--dedup: use on or off');
      await estimateCommand(file, { json: options.json ?? false, compression: options.compression as 'lz4' | 'zstd' | 'none', dedup: options.dedup === 'on' });
    });

  const inspect = program.command('inspect').description('consistency checks and internals');
  inspect
    .command('audit')
    .description('check metadata against the NAND image (refcounts, records, valid counts); exit 1 on any problem')
    .option('-d, --data-dir <dir>', 'data directory (env PSTORAGE_DATA_DIR)', dataDirOption())
    .option('--json', 'machine-readable output')
    .action(async (options: { dataDir: string; json?: boolean }) => {
      process.exitCode = await auditCommand(options.dataDir, options.json ?? false);
    });

  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (error) {
    process.exitCode = exitCodeFor(error);
    if (!(error instanceof CommanderError)) {
      process.stderr.write(`pstorage: ${(error as Error).message}\n`);
    }
  }
}

function exitCodeFor(error: unknown): number {
  if (error instanceof CommanderError) {
    if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version' || error.code === 'commander.help') return 0;
    return EXIT_USAGE;
  }
  if (error instanceof InvalidArgumentError) return EXIT_USAGE;
  if (isStorageError(error) && error.code === 'BUSY') return EXIT_BUSY;
  if (isStorageError(error) && (error.code === 'INVALID_ARGUMENT' || error.code === 'NOT_FOUND')) return EXIT_USAGE;
  return EXIT_FAILURE;
}
