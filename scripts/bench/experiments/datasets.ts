/**
 * The data sets of the reduction experiment, generated on this machine from a seed so that a rerun
 * with the same seed on the same host makes the same bytes:
 *
 * - `stageSystemFiles`: a directory of copies of system files (/usr/share, the multiarch library
 *   directory), whole top-level entries picked in a seeded order until a byte budget is met, plus
 *   a second copy of some of them under `backup/` (the duplicate files a real filesystem holds:
 *   backups, vendored copies), so there is real 4 KiB dedup once they sit in a filesystem.
 * - `makeExt4Image`: an ext4 image of that directory built with `mke2fs -d` (no mount needed),
 *   4 KiB filesystem blocks so file data is aligned to the array's logical blocks, fixed UUID and
 *   hash seed. The files' contents depend on the host's packages; inode timestamps are the
 *   copies' own, so the image is not byte-identical across runs, its data is.
 * - `writeLogs`: synthetic but realistic text logs (an nginx access log, a syslog, a JSON
 *   application log) from a seeded generator: increasing timestamps, a skewed pool of client
 *   addresses, paths with ids, weighted status codes, random request and trace ids.
 * - `makeTarGz`: a .tar.gz of the staged files (already-compressed data, reduction about 1).
 *
 * Every data set file is padded with zeroes to a whole number of 4 KiB logical blocks, as the
 * last block would be on a volume. Nothing here imports pstorage's code.
 */
import fs from 'node:fs';
import path from 'node:path';
import { runChecked } from '../processes.js';

export const LOGICAL_BLOCK_BYTES = 4096;

/** mulberry32: a small, fast, seedable generator; good enough to pick files and fake log fields. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffle<T>(items: T[], random: () => number): T[] {
  for (let index = items.length - 1; index > 0; index--) {
    const other = Math.floor(random() * (index + 1));
    [items[index], items[other]] = [items[other]!, items[index]!];
  }
  return items;
}

/** Pads `filePath` with zeroes to a multiple of 4 KiB; returns its new size in bytes. */
export function padToLogicalBlocks(filePath: string): number {
  const sizeBytes = fs.statSync(filePath).size;
  const paddedBytes = Math.ceil(sizeBytes / LOGICAL_BLOCK_BYTES) * LOGICAL_BLOCK_BYTES;
  if (paddedBytes !== sizeBytes) fs.truncateSync(filePath, paddedBytes);
  return paddedBytes;
}

// ---------------------------------------------------------------------------------------------
// System files

export const SYSTEM_FILE_ROOTS = ['/usr/share', '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu'];

export interface StagedFiles {
  dir: string;
  /** Top-level entries copied, as absolute source paths, in the order picked. */
  entries: string[];
  files: number;
  fileBytes: number;
  /** Bytes of files copied a second time under backup/. */
  duplicateBytes: number;
  /** Files that could not be read (permissions, vanished) and were left out. */
  skippedFiles: number;
}

interface SourceFile {
  source: string;
  sizeBytes: number;
}

/** Regular files under `entry` (itself, if it is one), sorted; symlinks and devices are skipped. */
function regularFilesUnder(entry: string): SourceFile[] {
  const found: SourceFile[] = [];
  const pending = [entry];
  while (pending.length > 0 && found.length < 200_000) {
    const current = pending.pop()!;
    let stat: fs.Stats;
    try {
      stat = fs.lstatSync(current);
    } catch {
      continue;
    }
    if (stat.isFile()) found.push({ source: current, sizeBytes: stat.size });
    else if (stat.isDirectory()) {
      try {
        for (const name of fs.readdirSync(current).sort().reverse()) pending.push(path.join(current, name));
      } catch {
        // An unreadable directory is simply not part of the data set.
      }
    }
  }
  return found;
}

/** Copies `files` under `targetDir`, keeping their absolute paths as relative ones. */
function copyFiles(files: readonly SourceFile[], targetDir: string): { copiedBytes: number; copied: number; skipped: number } {
  let copiedBytes = 0;
  let copied = 0;
  let skipped = 0;
  for (const file of files) {
    const target = path.join(targetDir, file.source);
    try {
      fs.mkdirSync(path.dirname(target), { recursive: true });
      fs.copyFileSync(file.source, target);
      copiedBytes += file.sizeBytes;
      copied += 1;
    } catch {
      skipped += 1;
    }
  }
  return { copiedBytes, copied, skipped };
}

/**
 * Copies whole top-level entries of the system roots, in a seeded order, until `uniqueBytes` of
 * file data; an entry larger than a quarter of the budget is passed over so the set is a mix.
 * Then copies entries again under backup/ until `duplicateBytes` more.
 */
export function stageSystemFiles(dir: string, options: { uniqueBytes: number; duplicateBytes: number; seed: number }): StagedFiles {
  const random = seededRandom(options.seed);
  const candidates = SYSTEM_FILE_ROOTS.filter((root) => fs.existsSync(root)).flatMap((root) => fs.readdirSync(root).sort().map((name) => path.join(root, name)));
  const picked: { entry: string; files: SourceFile[]; bytes: number }[] = [];
  let pickedBytes = 0;
  for (const entry of shuffle(candidates, random)) {
    if (pickedBytes >= options.uniqueBytes * 0.99) break;
    const files = regularFilesUnder(entry);
    const bytes = files.reduce((sum, file) => sum + file.sizeBytes, 0);
    if (bytes === 0 || bytes > options.uniqueBytes / 4 || pickedBytes + bytes > options.uniqueBytes) continue;
    picked.push({ entry, files, bytes });
    pickedBytes += bytes;
  }
  const filesDir = path.join(dir, 'files');
  const first = copyFiles(
    picked.flatMap((item) => item.files),
    filesDir,
  );
  const duplicates: SourceFile[] = [];
  let duplicateBytes = 0;
  for (const item of shuffle([...picked], random)) {
    if (duplicateBytes + item.bytes > options.duplicateBytes) continue;
    duplicates.push(...item.files);
    duplicateBytes += item.bytes;
  }
  const second = copyFiles(duplicates, path.join(filesDir, 'backup'));
  return {
    dir: filesDir,
    entries: picked.map((item) => item.entry),
    files: first.copied + second.copied,
    fileBytes: first.copiedBytes + second.copiedBytes,
    duplicateBytes: second.copiedBytes,
    skippedFiles: first.skipped + second.skipped,
  };
}

// The UUID and directory-hash seed of the image, fixed so that two runs differ only in timestamps.
const IMAGE_UUID = '5a7e0d5e-7b1c-4c1e-9a3b-2f0c0ffee000';
const IMAGE_HASH_SEED = '0b5e55ed-1dea-4bad-8c0d-5eed00000003';
/** 2024-03-12T00:00:00Z, for mke2fs's own timestamps (superblock, root inode). */
export const FIXED_EPOCH_SECONDS = 1_710_201_600;

/** An ext4 image of `sourceDir`, `imageBytes` large (a whole number of MiB), built without mounting. */
export async function makeExt4Image(sourceDir: string, imagePath: string, imageBytes: number): Promise<number> {
  fs.rmSync(imagePath, { force: true });
  fs.writeFileSync(imagePath, '');
  fs.truncateSync(imagePath, imageBytes);
  const args = ['-q', '-F', '-t', 'ext4', '-b', String(LOGICAL_BLOCK_BYTES), '-I', '256', '-U', IMAGE_UUID, '-E', `hash_seed=${IMAGE_HASH_SEED},root_owner=0:0,nodiscard`, '-d', sourceDir, imagePath];
  await runCheckedWithEnv('mke2fs', args, { E2FSPROGS_FAKE_TIME: String(FIXED_EPOCH_SECONDS) });
  return padToLogicalBlocks(imagePath);
}

async function runCheckedWithEnv(command: string, args: string[], env: Record<string, string>): Promise<void> {
  // runChecked has no environment parameter; `env` (the program) sets it for this one command.
  const assignments = Object.entries(env).map(([key, value]) => `${key}=${value}`);
  await runChecked('env', [...assignments, command, ...args], 10 * 60_000);
}

/** A .tar.gz of `sourceDir` (sorted, fixed owners and mtimes, gzip -6 without name or time). */
export async function makeTarGz(sourceDir: string, archivePath: string): Promise<number> {
  const script = 'set -o pipefail; tar --sort=name --mtime="@$3" --owner=0 --group=0 --numeric-owner -cf - -C "$1" . | gzip -n -6 > "$2"';
  await runChecked('bash', ['-c', script, 'bash', sourceDir, archivePath, String(FIXED_EPOCH_SECONDS)], 20 * 60_000);
  return padToLogicalBlocks(archivePath);
}

// ---------------------------------------------------------------------------------------------
// Text logs

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const METHODS: [string, number][] = [['GET', 0.82], ['POST', 0.12], ['PUT', 0.03], ['DELETE', 0.01], ['HEAD', 0.02]];
const STATUSES: [number, number][] = [[200, 0.83], [304, 0.06], [301, 0.02], [404, 0.05], [403, 0.01], [500, 0.01], [502, 0.01], [201, 0.01]];
const PATHS = ['/', '/index.html', '/api/v1/orders/{id}', '/api/v1/users/{id}/cart', '/api/v1/products?page={n}&sort=price', '/static/js/app.{hex}.js', '/static/css/main.{hex}.css', '/images/products/{id}.jpg', '/search?q={word}&page={n}', '/login', '/logout', '/healthz', '/api/v1/checkout', '/favicon.ico', '/robots.txt', '/wp-login.php'];
const WORDS = ['shoes', 'laptop', 'coffee', 'garden', 'lamp', 'backpack', 'headphones', 'desk', 'bike', 'kettle', 'jacket', 'phone+case'];
const AGENTS = [
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36',
  'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 Safari/605.1.15',
  'Mozilla/5.0 (X11; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0',
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 Mobile/15E148 Safari/604.1',
  'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.6261.105 Mobile Safari/537.36',
  'curl/7.88.1',
  'Googlebot/2.1 (+http://www.google.com/bot.html)',
  'kube-probe/1.28',
];
const REFERERS = ['-', 'https://shop.example.com/', 'https://shop.example.com/cart', 'https://www.google.com/', 'https://shop.example.com/search?q=lamp'];
const UNITS = ['logrotate.service', 'apt-daily.service', 'man-db.service', 'certbot.service', 'fstrim.service', 'systemd-tmpfiles-clean.service'];
const HOSTS = ['web-01', 'web-02', 'web-03'];
const SERVICES = ['checkout', 'catalog', 'auth', 'search'];
const MESSAGES = ['order placed', 'payment authorized', 'cache miss', 'user logged in', 'inventory reserved', 'slow query', 'retrying upstream call'];

class LogFaker {
  readonly random: () => number;
  private readonly clients: string[];
  /** Milliseconds since the epoch of the current line. */
  private timeMs = FIXED_EPOCH_SECONDS * 1000;

  constructor(seed: number) {
    this.random = seededRandom(seed);
    this.clients = Array.from({ length: 5000 }, () => `${this.int(1, 223)}.${this.int(0, 255)}.${this.int(0, 255)}.${this.int(1, 254)}`);
  }

  int(low: number, high: number): number {
    return low + Math.floor(this.random() * (high - low + 1));
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.random() * items.length)]!;
  }

  weighted<T>(table: readonly [T, number][]): T {
    let left = this.random();
    for (const [value, weight] of table) if ((left -= weight) < 0) return value;
    return table[table.length - 1]![0];
  }

  hex(digits: number): string {
    let text = '';
    while (text.length < digits) text += Math.floor(this.random() * 2 ** 32).toString(16).padStart(8, '0');
    return text.slice(0, digits);
  }

  /** A client address, heavily skewed towards a few busy clients, as real traffic is. */
  client(): string {
    return this.clients[Math.floor(this.clients.length * this.random() ** 3)]!;
  }

  /** Back to the start of the logged period, for the next log file (they cover the same hours). */
  restartClock(): void {
    this.timeMs = FIXED_EPOCH_SECONDS * 1000;
  }

  /** Advances the clock by an exponential gap of `meanMs` on average; returns the new time. */
  tick(meanMs: number): Date {
    this.timeMs += -Math.log(1 - this.random()) * meanMs;
    return new Date(Math.floor(this.timeMs));
  }
}

const two = (value: number): string => String(value).padStart(2, '0');

function nginxLine(fake: LogFaker): string {
  const time = fake.tick(4);
  const stamp = `${two(time.getUTCDate())}/${MONTHS[time.getUTCMonth()]}/${time.getUTCFullYear()}:${two(time.getUTCHours())}:${two(time.getUTCMinutes())}:${two(time.getUTCSeconds())} +0000`;
  const requestPath = fake
    .pick(PATHS)
    .replace('{id}', String(fake.int(1000, 99999)))
    .replace('{n}', String(fake.int(1, 40)))
    .replace('{hex}', fake.hex(8))
    .replace('{word}', fake.pick(WORDS));
  const status = fake.weighted(STATUSES);
  const bytes = status === 304 ? 0 : Math.floor(Math.exp(6 + fake.random() * 6));
  const upstreamSeconds = (Math.exp(fake.random() * 6) / 1000).toFixed(3);
  return `${fake.client()} - - [${stamp}] "${fake.weighted(METHODS)} ${requestPath} HTTP/1.1" ${status} ${bytes} "${fake.pick(REFERERS)}" "${fake.pick(AGENTS)}" rt=${upstreamSeconds} uct="0.000" urt="${upstreamSeconds}" req_id=${fake.hex(32)}\n`;
}

function syslogLine(fake: LogFaker): string {
  const time = fake.tick(40);
  const stamp = `${MONTHS[time.getUTCMonth()]} ${String(time.getUTCDate()).padStart(2, ' ')} ${two(time.getUTCHours())}:${two(time.getUTCMinutes())}:${two(time.getUTCSeconds())} ${fake.pick(HOSTS)}`;
  const pid = fake.int(300, 65000);
  switch (fake.int(0, 5)) {
    case 0:
      return `${stamp} sshd[${pid}]: Accepted publickey for deploy from ${fake.client()} port ${fake.int(1024, 65535)} ssh2: ED25519 SHA256:${fake.hex(43)}\n`;
    case 1:
      return `${stamp} CRON[${pid}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)\n`;
    case 2:
      return `${stamp} systemd[1]: ${fake.random() < 0.5 ? 'Starting' : 'Finished'} ${fake.pick(UNITS)} - ${fake.pick(['Daily apt download activities', 'Rotate log files', 'Discard unused blocks', 'Cleanup of Temporary Directories'])}.\n`;
    case 3:
      return `${stamp} kernel: [${(time.getTime() / 1000 - FIXED_EPOCH_SECONDS + 86400).toFixed(6)}] [UFW BLOCK] IN=eth0 OUT= MAC=${fake.hex(12)}:${fake.hex(12)}:08:00 SRC=${fake.client()} DST=10.0.0.${fake.int(2, 40)} LEN=${fake.int(40, 60)} TOS=0x00 PREC=0x00 TTL=${fake.int(30, 250)} ID=${fake.int(0, 65535)} PROTO=TCP SPT=${fake.int(1024, 65535)} DPT=${fake.pick([22, 23, 3389, 8080, 5432])} WINDOW=${fake.int(1000, 65535)} RES=0x00 SYN URGP=0\n`;
    case 4:
      return `${stamp} sshd[${pid}]: Invalid user ${fake.pick(['admin', 'test', 'oracle', 'ubuntu', 'git', 'user'])} from ${fake.client()} port ${fake.int(1024, 65535)}\n`;
    default:
      return `${stamp} postfix/smtp[${pid}]: ${fake.hex(10).toUpperCase()}: to=<user${fake.int(1, 9999)}@example.org>, relay=mx.example.org[192.0.2.${fake.int(1, 254)}]:25, delay=${(fake.random() * 3).toFixed(2)}, dsn=2.0.0, status=sent (250 2.0.0 OK)\n`;
  }
}

function jsonLine(fake: LogFaker): string {
  const time = fake.tick(15);
  const level = fake.weighted([['info', 0.9], ['warn', 0.07], ['error', 0.03]] as [string, number][]);
  return `{"ts":"${time.toISOString()}","level":"${level}","service":"${fake.pick(SERVICES)}","trace_id":"${fake.hex(32)}","span_id":"${fake.hex(16)}","msg":"${fake.pick(MESSAGES)}","user_id":${fake.int(1, 250000)},"order_id":${fake.int(100000, 999999)},"duration_ms":${(fake.random() * 250).toFixed(1)}}\n`;
}

export interface LogFile {
  name: string;
  bytes: number;
}

/** Appends lines from `line` to the open file until `bytes`, then zero-pads to a 4 KiB boundary. */
function writeLogStream(fd: number, fake: LogFaker, line: (fake: LogFaker) => string, bytes: number): number {
  let written = 0;
  while (written < bytes) {
    const lines: string[] = [];
    let chunkBytes = 0;
    while (chunkBytes < 1 << 20 && written + chunkBytes < bytes) {
      const next = line(fake);
      lines.push(next);
      chunkBytes += next.length; // ASCII only, so characters are bytes.
    }
    written += fs.writeSync(fd, lines.join(''));
  }
  const padding = (LOGICAL_BLOCK_BYTES - (written % LOGICAL_BLOCK_BYTES)) % LOGICAL_BLOCK_BYTES;
  if (padding > 0) fs.writeSync(fd, Buffer.alloc(padding));
  return written + padding;
}

/**
 * About `bytes` of logs in one file: 60 % nginx access log, 30 % syslog, 10 % JSON application
 * log, one after the other, each starting on a 4 KiB boundary as separate files in a filesystem
 * would.
 */
export function writeLogs(filePath: string, options: { bytes: number; seed: number }): LogFile[] {
  const fake = new LogFaker(options.seed);
  const parts: [string, (fake: LogFaker) => string, number][] = [
    ['nginx access.log', nginxLine, 0.6],
    ['syslog', syslogLine, 0.3],
    ['JSON application log', jsonLine, 0.1],
  ];
  const fd = fs.openSync(filePath, 'w');
  try {
    return parts.map(([name, line, share]) => {
      fake.restartClock();
      return { name, bytes: writeLogStream(fd, fake, line, Math.floor(options.bytes * share)) };
    });
  } finally {
    fs.closeSync(fd);
  }
}
