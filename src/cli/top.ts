/**
 * `pstorage top`: the running server's volumes, refreshed like `top` or `iostat`. Each refresh
 * asks the management API for the stats document (`GET /api/v1/metrics`, whose volumes carry
 * `io` from the NBD server's counters, see server/io-stats.ts) and shows, per volume, the read and
 * write IOPS and MiB/s over the last interval (differences of the counters) and the latency
 * percentiles since the server started. On a terminal the screen is redrawn in place and q or
 * Ctrl-C quits; otherwise (a pipe, a log) one table per refresh is printed, and `--count` ends it.
 */
import { StorageError } from '../common/errors.js';
import { formatBytes } from '../common/size.js';
import type { IoSummary } from '../server/io-stats.js';
import { apiError, callApi } from './api-client.js';
import { percentiles } from './inspect.js';
import { table } from './output.js';

interface VolumeIo {
  name: string;
  sizeBytes: number;
  logicalBytes: number;
  io?: Record<'read' | 'write', IoSummary>;
}

interface Snapshot {
  atMs: number;
  volumes: VolumeIo[];
  physicalBytes: number;
  capacityBytes: number;
  dataReductionRatio: number;
}

export interface TopOptions {
  intervalSeconds: number;
  /** Refreshes before exiting; 0 runs until q or Ctrl-C. */
  count: number;
}

export async function topCommand(dataDir: string, options: TopOptions): Promise<void> {
  if (!(options.intervalSeconds >= 0.1 && options.intervalSeconds <= 3600)) throw StorageError.invalidArgument('--interval must be between 0.1 and 3600 seconds, e.g. --interval 1');
  if (!Number.isInteger(options.count) || options.count < 0) throw StorageError.invalidArgument('--count must be a whole number (0: until q or Ctrl-C), e.g. --count 5');
  const interactive = process.stdout.isTTY === true && process.stdin.isTTY === true;
  let quit = false;
  let wake: (() => void) | null = null;
  const stop = (): void => {
    quit = true;
    wake?.();
  };
  if (interactive) {
    process.stdin.setRawMode(true);
    process.stdin.resume();
    process.stdin.on('data', (key: Buffer) => {
      // q, Q, Ctrl-C (raw mode delivers it as a byte, not as SIGINT).
      if (key.includes(0x71) || key.includes(0x51) || key.includes(0x03)) stop();
    });
  }
  process.once('SIGINT', stop);
  let previous: Snapshot | null = null;
  try {
    for (let shown = 0; !quit && (options.count === 0 || shown < options.count); shown++) {
      const current = await snapshot(dataDir);
      const screen = render(current, previous, options.intervalSeconds);
      process.stdout.write(interactive ? `\x1b[H\x1b[2J${screen}\nq or Ctrl-C quits\n` : `${screen}\n`);
      previous = current;
      if (options.count !== 0 && shown + 1 >= options.count) break;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, options.intervalSeconds * 1000);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = null;
    }
  } finally {
    process.removeListener('SIGINT', stop);
    if (interactive) {
      process.stdin.setRawMode(false);
      process.stdin.pause();
    }
  }
}

async function snapshot(dataDir: string): Promise<Snapshot> {
  const response = await callApi(dataDir, 'GET', '/api/v1/metrics');
  if (response === null) throw StorageError.invalidArgument(`no server is running on ${dataDir}: pstorage top shows a running server's traffic (start it with pstorage serve --data-dir ${dataDir})`);
  if (response.status >= 400) throw apiError(response);
  const body = response.body as Omit<Snapshot, 'atMs'>;
  return { atMs: performance.now(), volumes: body.volumes, physicalBytes: body.physicalBytes, capacityBytes: body.capacityBytes, dataReductionRatio: body.dataReductionRatio };
}

/** The table of one refresh: rates over the time since `previous` (none on the first). */
export function render(current: Snapshot, previous: Snapshot | null, intervalSeconds: number): string {
  const seconds = previous === null ? intervalSeconds : Math.max(1e-3, (current.atMs - previous.atMs) / 1000);
  const rows = current.volumes.map((volume) => {
    const before = previous?.volumes.find((entry) => entry.name === volume.name)?.io;
    const rate = (op: 'read' | 'write'): [string, string] => {
      const now = volume.io?.[op];
      if (now === undefined || previous === null) return ['-', '-'];
      const then = before?.[op] ?? { requests: 0, bytes: 0 };
      const requests = Math.max(0, now.requests - then.requests) / seconds;
      const mib = Math.max(0, now.bytes - then.bytes) / seconds / 2 ** 20;
      return [requests >= 10 ? requests.toFixed(0) : requests.toFixed(1), mib.toFixed(1)];
    };
    const [readIops, readMib] = rate('read');
    const [writeIops, writeMib] = rate('write');
    return [volume.name, formatBytes(volume.logicalBytes), readIops, readMib, percentiles(volume.io?.read), writeIops, writeMib, percentiles(volume.io?.write)];
  });
  const summary = `pstorage top: ${current.volumes.length} volume(s), ${formatBytes(current.physicalBytes)} of ${formatBytes(current.capacityBytes)} used, data reduction ${current.dataReductionRatio}:1; rates over ${seconds.toFixed(1)} s, latency since the server started\n\n`;
  return summary + table(['VOLUME', 'MAPPED', 'READ/s', 'READ MiB/s', 'READ p50/p99/p99.9', 'WRITE/s', 'WRITE MiB/s', 'WRITE p50/p99/p99.9'], rows);
}
