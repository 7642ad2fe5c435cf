/**
 * The `pstorage` command line. Exit codes: 0 success, 1 the operation failed, 2 bad usage,
 * 3 the data directory is in use by another process (EXIT_CODES_HELP, shown by --help).
 *
 * Every command that works on an array takes `-d/--data-dir` (env PSTORAGE_DATA_DIR) and goes
 * through the running server's management API, or opens the directory itself when none runs.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { readKeyFile } from '../volume/array-key.js';
import { rotateArrayKey } from '../volume/key-rotation.js';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { isStorageError } from '../common/errors.js';
import { defaultBudgetMiB } from '../common/memory-budget.js';
import { parseSizeBytes } from '../common/size.js';
import { isLoopback } from '../mgmt/api-server.js';
import { DataDirectoryInUse, OperationConflict } from './api-client.js';
import { exportCommand, importCommand } from './data-commands.js';
import { DEFAULT_LISTEN, parseListen, type TcpAddress } from './listen-address.js';
import { estimateCommand } from './estimate.js';
import { analyticsCommand } from './analytics.js';
import { auditCommand, repairCommand, statsCommand } from './inspect.js';
import { topCommand } from './top.js';
import { serve } from './serve.js';
import { loadTlsConfig } from './tls-files.js';
import * as volumes from './volume-commands.js';
import * as pods from './pod-commands.js';

export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_BUSY = 3;

export const EXIT_CODES_HELP = `
Exit codes:
  0  success
  1  the operation failed or was refused (I/O error, array full, name already taken,
     clones or snapshots depend on the target, audit found problems)
  2  bad usage: unknown command or option, bad size or name, no such volume or snapshot,
     an image larger than its volume
  3  the data directory is in use by another process (a server whose API socket is unreachable)
  4  inspect repair: the array was repaired, but some blocks were lost (listed; they read as EIO)

Every command that works on an array takes -d/--data-dir DIR (env PSTORAGE_DATA_DIR, default
./pstorage-data). It talks to the running "pstorage serve" through DIR/pstorage.sock, or opens
DIR itself when no server runs. Sizes take K, M, G or T suffixes (binary: 1G = 1073741824).
Run "pstorage COMMAND --help" for each command.`;

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

/** `--api-listen` needs a loopback address and a token; both are checked before the array opens. */
function apiListenFrom(text: string | undefined, token: string | undefined): { address: TcpAddress; token: string } | null {
  if (text === undefined || text === '' || text === 'none') return null;
  const address = asListen(text);
  if (address === null) return null;
  if (!isLoopback(address.host)) throw new InvalidArgumentError(`--api-listen ${text}: the management API listens on loopback addresses only (127.0.0.1:PORT or [::1]:PORT)`);
  if (token === undefined || token === '') {
    throw new InvalidArgumentError('--api-listen needs a bearer token so that other local users cannot manage the array: pass --api-token TOKEN or set PSTORAGE_API_TOKEN');
  }
  return { address, token };
}

/** `--metrics-listen HOST:PORT` (or `none`); checked before the array opens. */
function metricsListenFrom(text: string | undefined): TcpAddress | null {
  if (text === undefined || text === '' || text === 'none' || text === 'off') return null;
  try {
    return parseListen(text, '--metrics-listen');
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
}

/** `--replication-listen` and its secret file, read and checked before the array opens. */
function replicationFrom(listenText: string | undefined, secretFile: string | undefined): { listen: TcpAddress | null; secret: Buffer | null } {
  const listen = listenText === undefined || listenText === '' ? null : asListen(listenText);
  if (listen === null) return { listen: null, secret: null };
  if (secretFile === undefined || secretFile === '') {
    throw new InvalidArgumentError('--replication-listen needs --replication-secret-file FILE (env PSTORAGE_REPLICATION_SECRET_FILE): the same secret on both arrays, made with e.g. "openssl rand -out FILE 32"');
  }
  let secret: Buffer;
  try {
    secret = readFileSync(secretFile);
  } catch (error) {
    throw new InvalidArgumentError(`cannot read the replication secret file ${secretFile}: ${(error as Error).message}`);
  }
  if (secret.length < 16) throw new InvalidArgumentError(`the replication secret file ${secretFile} holds ${secret.length} bytes; it needs at least 16 (e.g. "openssl rand -out FILE 32")`);
  return { listen, secret };
}

export function buildProgram(): Command {
  const program = new Command('pstorage')
    .description('A software-defined all-flash storage array, served to Linux over NBD.')
    .version(packageJson.version, '-V, --version')
    .showHelpAfterError('(run "pstorage --help" for usage)')
    .exitOverride()
    .addHelpText('after', EXIT_CODES_HELP);

  program
    .command('serve')
    .description('serve the volumes of a data directory over NBD (creates it, with a 16 GiB "default" volume, on first start)')
    .option('-d, --data-dir <dir>', 'data directory (env PSTORAGE_DATA_DIR)', process.env.PSTORAGE_DATA_DIR ?? './pstorage-data')
    .option('-l, --listen <host:port>', 'TCP address for NBD, or "none" (env PSTORAGE_LISTEN)', asListen, asListen(process.env.PSTORAGE_LISTEN ?? DEFAULT_LISTEN))
    .option('-s, --socket <path>', 'also serve NBD on this Unix socket (env PSTORAGE_SOCKET)', process.env.PSTORAGE_SOCKET)
    .option('--capacity <size>', 'NAND capacity of a new array (sparse), e.g. 8G (env PSTORAGE_CAPACITY)', asSize, process.env.PSTORAGE_CAPACITY ? asSize(process.env.PSTORAGE_CAPACITY) : undefined)
    .option('--cache-mb <mib>', 'memory budget in MiB: metadata caches and mapped data; default 1/8 of memory, 256 to 4096 (env PSTORAGE_CACHE_MB)', asPositiveInt, process.env.PSTORAGE_CACHE_MB ? asPositiveInt(process.env.PSTORAGE_CACHE_MB) : defaultBudgetMiB())
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
    .option('--api-listen <host:port>', 'also serve the management API on this loopback TCP address; needs a token (env PSTORAGE_API_LISTEN)', process.env.PSTORAGE_API_LISTEN)
    .option('--api-token <token>', 'bearer token the TCP management API requires (env PSTORAGE_API_TOKEN)', process.env.PSTORAGE_API_TOKEN)
    .option('--metrics-listen <host:port>', 'serve Prometheus metrics at http://HOST:PORT/metrics, no token (env PSTORAGE_METRICS_LISTEN)', process.env.PSTORAGE_METRICS_LISTEN)
    .option('--tls <mode>', 'NBD over TLS (STARTTLS): off, on (offered) or require (TLS only) (env PSTORAGE_TLS)', (value: string) => {
      if (value !== 'off' && value !== 'on' && value !== 'require') throw new InvalidArgumentError('use off, on or require');
      return value;
    }, process.env.PSTORAGE_TLS ?? 'off')
    .option('--tls-certificates <dir>', 'directory with ca-cert.pem, server-cert.pem and server-key.pem, as for nbdkit and qemu (env PSTORAGE_TLS_CERTIFICATES)', process.env.PSTORAGE_TLS_CERTIFICATES)
    .option('--tls-verify-peer', 'require a client certificate signed by ca-cert.pem (or a PSK) (env PSTORAGE_TLS_VERIFY_PEER=1)', ['1', 'true', 'on', 'yes'].includes(process.env.PSTORAGE_TLS_VERIFY_PEER ?? ''))
    .option('--tls-psk <file>', 'pre-shared keys, psktool format (username:hexkey lines) (env PSTORAGE_TLS_PSK)', process.env.PSTORAGE_TLS_PSK)
    .option('--replication-listen <host:port>', 'ActiveCluster: listen for the peer array of pods on this address (env PSTORAGE_REPLICATION_LISTEN)', process.env.PSTORAGE_REPLICATION_LISTEN)
    .option('--replication-secret-file <file>', 'ActiveCluster: the secret both arrays of a pod share (>= 16 bytes, e.g. "openssl rand -out FILE 32"; the same file on both) (env PSTORAGE_REPLICATION_SECRET_FILE)', process.env.PSTORAGE_REPLICATION_SECRET_FILE)
    .option('--key-file <file>', 'encryption at rest: a new array given a key file (>= 32 bytes, e.g. "openssl rand -out FILE 32") is encrypted, and then needs it to open (env PSTORAGE_KEY_FILE)', process.env.PSTORAGE_KEY_FILE)
    .action(async (options: { replicationListen?: string; replicationSecretFile?: string; keyFile?: string; dataDir: string; listen: ReturnType<typeof parseListen> | ''; socket?: string; capacity?: number; cacheMb: number; gcPolicy: 'cost-benefit' | 'greedy'; compression: 'lz4' | 'zstd' | 'none'; dedup: 'on' | 'off'; apiListen?: string; apiToken?: string; metricsListen?: string; tls: 'off' | 'on' | 'require'; tlsCertificates?: string; tlsVerifyPeer: boolean; tlsPsk?: string }) => {
      // commander turns a parser's null ("--listen none") into ''.
      const listen = options.listen === '' ? null : options.listen;
      if (listen === null && options.socket === undefined) {
        throw new InvalidArgumentError('nothing to listen on: give --listen HOST:PORT or --socket PATH');
      }
      // Credentials are read and checked before the array opens or anything listens.
      const tls = loadTlsConfig({ mode: options.tls, certificatesDir: options.tlsCertificates ?? null, verifyPeer: options.tlsVerifyPeer, pskFile: options.tlsPsk ?? null });
      const keyFileBytes = options.keyFile === undefined || options.keyFile === '' ? undefined : readKeyFile(options.keyFile);
      const replication = replicationFrom(options.replicationListen, options.replicationSecretFile);
      await serve({
        replication,
        tls,
        dataDir: options.dataDir,
        listen,
        socketPath: options.socket ?? null,
        apiListen: apiListenFrom(options.apiListen, options.apiToken),
        metricsListen: metricsListenFrom(options.metricsListen),
        array: {
          capacityBytes: options.capacity,
          cacheBytes: options.cacheMb * 1024 * 1024,
          ftl: { victimPolicy: options.gcPolicy },
          compression: options.compression,
          dedup: options.dedup === 'on',
          keyFileBytes,
        },
      });
    });

  const key = program.command('key').description('encryption at rest: the key file that unlocks an encrypted array');
  key
    .command('rotate')
    .description('rewrap the array\'s data key under a new key file (offline: stop the server first; no data is rewritten)')
    .option('-d, --data-dir <dir>', 'data directory (env PSTORAGE_DATA_DIR)', process.env.PSTORAGE_DATA_DIR ?? './pstorage-data')
    .requiredOption('--key-file <file>', 'the current key file')
    .requiredOption('--new-key-file <file>', 'the new key file (>= 32 bytes, e.g. "openssl rand -out FILE 32")')
    .addHelpText('after', '\nExample: pstorage key rotate -d /srv/pstorage --key-file old.key --new-key-file new.key')
    .action(async (options: { dataDir: string; keyFile: string; newKeyFile: string }) => {
      const result = await rotateArrayKey(path.resolve(options.dataDir), readKeyFile(options.keyFile), readKeyFile(options.newKeyFile));
      process.stdout.write(result.rotated ? `key rotated: ${options.newKeyFile} now unlocks ${options.dataDir}\n` : `the rotation was already committed; the catalog copy is now in step\n`);
    });

  const dataDirOption = () => process.env.PSTORAGE_DATA_DIR ?? './pstorage-data';

  program
    .command('stats')
    .description('capacity, data reduction and flash counters (through the running server, or from the data directory)')
    .option('-d, --data-dir <dir>', 'data directory (env PSTORAGE_DATA_DIR)', dataDirOption())
    .option('--json', 'machine-readable output')
    .action(async (options: { dataDir: string; json?: boolean }) => statsCommand(options.dataDir, options.json ?? false));

  program
    .command('analytics')
    .description('capacity forecast (fill rate, days until full over 7/30/90 days), health score, and per-volume hot/cold shares')
    .option('-d, --data-dir <dir>', 'data directory (env PSTORAGE_DATA_DIR)', dataDirOption())
    .option('--json', 'machine-readable output')
    .action(async (options: { dataDir: string; json?: boolean }) => analyticsCommand(options.dataDir, options.json ?? false));

  program
    .command('top')
    .description("the running server's volumes refreshed every second: IOPS, MiB/s and latency percentiles (q or Ctrl-C quits)")
    .option('-d, --data-dir <dir>', 'data directory (env PSTORAGE_DATA_DIR)', dataDirOption())
    .option('-i, --interval <seconds>', 'seconds between refreshes', '1')
    .option('-n, --count <n>', 'refreshes before exiting (0: until q or Ctrl-C)', '0')
    .action(async (options: { dataDir: string; interval: string; count: string }) => topCommand(options.dataDir, { intervalSeconds: Number(options.interval), count: Number(options.count) }));

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

  addVolumeCommands(program, dataDirOption);
  addPodCommands(program, dataDirOption);
  addDataCommands(program, dataDirOption);

  const inspect = program.command('inspect').description('consistency checks and internals');
  inspect
    .command('audit')
    .description('check metadata against the NAND image (refcounts, records, valid counts); exit 1 on any problem')
    .option('-d, --data-dir <dir>', 'data directory (env PSTORAGE_DATA_DIR)', dataDirOption())
    .option('--json', 'machine-readable output')
    .option('--key-file <file>', 'an encrypted array\'s key file, when no server runs (env PSTORAGE_KEY_FILE)', process.env.PSTORAGE_KEY_FILE)
    .action(async (options: { dataDir: string; json?: boolean; keyFile?: string }) => {
      process.exitCode = await auditCommand(options.dataDir, options.json ?? false, options.keyFile);
    });

  inspect
    .command('repair')
    .description('rebuild damaged metadata (LevelDB) from what survives and the NAND image; lists exactly which blocks were lost (they then read as EIO); the server must be stopped')
    .option('-d, --data-dir <dir>', 'data directory (env PSTORAGE_DATA_DIR)', dataDirOption())
    .option('--json', 'machine-readable output')
    .option('--key-file <file>', 'an encrypted array\'s key file (env PSTORAGE_KEY_FILE)', process.env.PSTORAGE_KEY_FILE)
    .addHelpText('after', '\nExit codes: 0 repaired, nothing lost; 4 repaired, blocks lost (listed); 1 failed or the audit still finds problems; 3 a server is running.\nThe damaged metadata directory is kept as DATA_DIR/meta.damaged-TIME.')
    .action(async (options: { dataDir: string; json?: boolean; keyFile?: string }) => {
      process.exitCode = await repairCommand(options.dataDir, options.json ?? false, options.keyFile);
    });

  return program;
}

type DataDirOptions = { dataDir: string; json?: boolean };
const out = (options: DataDirOptions) => ({ json: options.json ?? false });

/** A subcommand with the shared -d/--data-dir and (for most) --json options. */
function arrayCommand(parent: Command, name: string, description: string, dataDir: () => string, json = true): Command {
  const command = parent.command(name).description(description).option('-d, --data-dir <dir>', 'data directory (env PSTORAGE_DATA_DIR)', dataDir());
  return json ? command.option('--json', 'machine-readable output') : command;
}

function addVolumeCommands(program: Command, dataDir: () => string): void {
  const volume = program.command('volume').description('create, list, resize and delete thin volumes');
  arrayCommand(volume, 'create', 'create a thin volume (costs nothing until written)', dataDir)
    .argument('<name>', 'volume name: 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit')
    .requiredOption('--size <size>', 'virtual size, e.g. 10G (a multiple of 512 bytes)', asSize)
    .option('--pod <pod>', 'ActiveCluster: create the volume in this pod, on both arrays')
    .addHelpText('after', '\nExample: pstorage volume create db --size 100G')
    .action((name: string, options: DataDirOptions & { size: number; pod?: string }) =>
      options.pod === undefined ? volumes.volumeCreate(options.dataDir, name, options.size, out(options)) : pods.podVolumeCreate(options.dataDir, options.pod, name, options.size, out(options)),
    );
  arrayCommand(volume, 'list', 'list volumes: size, mapped bytes, snapshots, origin', dataDir).action((options: DataDirOptions) => volumes.volumeList(options.dataDir, out(options)));
  arrayCommand(volume, 'show', 'one volume: size, mapped bytes, snapshots, origin, access list', dataDir)
    .argument('<name>', 'volume name')
    .action((name: string, options: DataDirOptions) => volumes.volumeShow(options.dataDir, name, out(options)));
  arrayCommand(volume, 'access', 'show or set which TLS clients may attach a volume and its snapshots over NBD', dataDir)
    .argument('<name>', 'volume name')
    .option('--allow <identities>', 'comma-separated client identities: certificate common names or PSK usernames', (value: string) => value.split(',').map((identity) => identity.trim()).filter((identity) => identity !== ''))
    .option('--clear', 'remove the access list: every client may attach the volume')
    .addHelpText('after', '\nA volume with an access list is served over TLS only (pstorage serve --tls on|require), to the listed\nidentities; every other client is told it does not exist. Example: pstorage volume access db --allow alice,bob')
    .action((name: string, options: DataDirOptions & { allow?: string[]; clear?: boolean }) => {
      if (options.allow !== undefined && options.clear) throw new InvalidArgumentError('give --allow or --clear, not both');
      return volumes.volumeAccess(options.dataDir, name, { allow: options.allow, clear: options.clear ?? false }, out(options));
    });
  arrayCommand(volume, 'delete', 'delete a volume; frees what no snapshot, clone or dedup sharer still references', dataDir)
    .argument('<name>', 'volume name')
    .option('--force', 'also delete its snapshots (clones must be deleted first)')
    .action((name: string, options: DataDirOptions & { force?: boolean }) => volumes.volumeDelete(options.dataDir, name, options.force ?? false, out(options)));
  arrayCommand(volume, 'resize', 'grow a volume, or shrink it with --force (discards data past the new end)', dataDir)
    .argument('<name>', 'volume name')
    .requiredOption('--size <size>', 'new virtual size, e.g. 20G', asSize)
    .option('--force', 'allow shrinking')
    .action((name: string, options: DataDirOptions & { size: number; force?: boolean }) => volumes.volumeResize(options.dataDir, name, options.size, options.force ?? false, out(options)));

  const snapshot = program.command('snapshot').description('read-only point-in-time copies of a volume (O(1) to take)');
  arrayCommand(snapshot, 'create', 'take a snapshot; it is exported read-only over NBD as VOLUME@SNAPSHOT', dataDir)
    .argument('<volume>', 'volume name')
    .argument('<snapshot>', 'snapshot name (same rules as volume names)')
    .action((volumeName: string, name: string, options: DataDirOptions) => volumes.snapshotCreate(options.dataDir, volumeName, name, out(options)));
  arrayCommand(snapshot, 'list', 'list snapshots (of one volume, or all) with the bytes deleting each would free', dataDir)
    .argument('[volume]', 'only this volume\'s snapshots')
    .action((volumeName: string | undefined, options: DataDirOptions) => volumes.snapshotList(options.dataDir, volumeName, out(options)));
  arrayCommand(snapshot, 'delete', 'delete a snapshot (refused while clones of it exist)', dataDir)
    .argument('<volume>', 'volume name')
    .argument('<snapshot>', 'snapshot name')
    .action((volumeName: string, name: string, options: DataDirOptions) => volumes.snapshotDelete(options.dataDir, volumeName, name, out(options)));
  arrayCommand(snapshot, 'restore', 'roll a volume back to a snapshot (discards what was written since; the snapshot stays)', dataDir)
    .argument('<volume>', 'volume name')
    .argument('<snapshot>', 'snapshot name')
    .action((volumeName: string, name: string, options: DataDirOptions) => volumes.snapshotRestore(options.dataDir, volumeName, name, out(options)));

  arrayCommand(program, 'clone', 'create a writable volume whose content starts as a snapshot (O(1), shares all data)', dataDir)
    .argument('<source>', 'VOLUME@SNAPSHOT')
    .argument('<name>', 'name of the new volume')
    .addHelpText('after', '\nExample: pstorage clone db@monday db-test')
    .action((source: string, name: string, options: DataDirOptions) => volumes.cloneCreate(options.dataDir, source, name, out(options)));
  arrayCommand(program, 'diff', 'byte ranges written between two snapshots of a volume (for incremental backup)', dataDir)
    .argument('<from>', 'the older snapshot, VOLUME@SNAPSHOT')
    .argument('<to>', 'the newer snapshot, VOLUME@SNAPSHOT, or VOLUME for its current state')
    .addHelpText('after', '\nThe same ranges are served over NBD as the "pstorage:changed:OLDER" meta context of VOLUME@NEWER.')
    .action((from: string, to: string, options: DataDirOptions) => volumes.diffCommand(options.dataDir, from, to, out(options)));
}

function addPodCommands(program: Command, dataDir: () => string): void {
  const pod = program.command('pod').description('ActiveCluster pods: volumes stretched across two arrays, written synchronously on both');
  arrayCommand(pod, 'create', 'create a pod with the peer array (both arrays run "pstorage serve --replication-listen ... --replication-secret-file ...")', dataDir)
    .argument('<pod>', 'pod name: 1-63 letters, digits, ".", "_" or "-"')
    .requiredOption('--peer <host:port>', "the peer array's --replication-listen address")
    .requiredOption('--mediator <url>', 'etcd URL that decides which array goes on when the two lose each other, e.g. http://127.0.0.1:2379')
    .addHelpText('after', '\nExample: pstorage pod create web --peer 10.0.0.2:7001 --mediator http://10.0.0.9:2379\nThen: pstorage volume create db --size 100G --pod web')
    .action((name: string, options: DataDirOptions & { peer: string; mediator: string }) => pods.podCreate(options.dataDir, name, options.peer, options.mediator, out(options)));
  arrayCommand(pod, 'status', "one pod's state (in-sync, resyncing, degraded, suspended), link, role and resync progress", dataDir)
    .argument('<pod>', 'pod name')
    .action((name: string, options: DataDirOptions) => pods.podStatus(options.dataDir, name, out(options)));
  arrayCommand(pod, 'list', 'the pods of this array and their states', dataDir).action((options: DataDirOptions) => pods.podList(options.dataDir, out(options)));
  arrayCommand(program, 'replicate', 'asynchronous replication for disaster recovery: snapshot VOLUME and send what changed since the last run to another array, which keeps it as a snapshot', dataDir)
    .argument('<volume>', 'volume name')
    .requiredOption('--to <host:port>', "the target array's --replication-listen address (same --replication-secret-file on both)")
    .option('--every <interval>', 'run again every interval, e.g. 30s, 5m, 1h (RPO = the interval); without it, one run')
    .addHelpText('after', '\nExample: pstorage replicate db --to 10.0.0.3:7001 --every 5m')
    .action((volume: string, options: DataDirOptions & { to: string; every?: string }) => pods.replicateCommand(options.dataDir, volume, options.to, options.every === undefined ? null : pods.parseIntervalMs(options.every), out(options)));
  arrayCommand(pod, 'delete', 'delete a pod on both arrays (its volumes stay, as ordinary volumes of each array)', dataDir)
    .argument('<pod>', 'pod name')
    .action((name: string, options: DataDirOptions) => pods.podDelete(options.dataDir, name, out(options)));
}

function addDataCommands(program: Command, dataDir: () => string): void {
  arrayCommand(program, 'import', 'copy a raw image into a volume from offset 0 (zero blocks are unmapped)', dataDir)
    .argument('<file>', 'raw image file, or "-" for standard input')
    .argument('<volume>', 'target volume (at least as large as the image; grow it with "volume resize")')
    .action((file: string, volumeName: string, options: DataDirOptions) => importCommand(options.dataDir, file, volumeName, out(options)));
  arrayCommand(program, 'export', 'copy a volume or snapshot out to a raw image file (sparse: zero blocks stay holes)', dataDir)
    .argument('<source>', 'VOLUME or VOLUME@SNAPSHOT (a snapshot gives a consistent image of a volume in use)')
    .argument('<file>', 'image file to write (replaced), or "-" for standard output')
    .action((source: string, file: string, options: DataDirOptions) => exportCommand(options.dataDir, source, file, out(options)));
}

export async function main(argv: string[]): Promise<void> {
  // `pstorage stats | head` closes our stdout early: that is not an error worth a stack trace.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw error;
  });
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (error) {
    process.exitCode = exitCodeFor(error);
    // commander prints its own parse errors; an InvalidArgumentError thrown by an action is ours.
    if (!(error instanceof CommanderError) || error instanceof InvalidArgumentError) {
      process.stderr.write(`pstorage: ${(error as Error).message}\n`);
    }
  }
}

function exitCodeFor(error: unknown): number {
  if (error instanceof CommanderError) {
    if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version') return 0;
    // 'commander.help' with a non-zero code: help shown because a subcommand was missing.
    if (error.code === 'commander.help') return error.exitCode === 0 ? 0 : EXIT_USAGE;
    return EXIT_USAGE;
  }
  if (error instanceof OperationConflict) return EXIT_FAILURE;
  if (error instanceof DataDirectoryInUse || (isStorageError(error) && error.code === 'BUSY')) return EXIT_BUSY;
  if (isStorageError(error) && (error.code === 'INVALID_ARGUMENT' || error.code === 'NOT_FOUND' || error.code === 'OUT_OF_RANGE')) return EXIT_USAGE;
  return EXIT_FAILURE;
}
