/**
 * The memory bound of `pstorage serve` (issue 12, item 3), measured on the real process: its
 * resident set (VmRSS and the peak VmHWM of /proc/PID/status) stays within the budget
 * (--cache-mb) + 200 MiB under load, and falls back within the budget + 120 MiB once idle.
 *
 * One server at --cache-mb 64, two workloads in turn, each with its own peak (VmHWM is reset
 * between them through /proc/PID/clear_refs; where that is refused, the highest VmRSS sampled
 * every 50 ms stands in):
 *   (a) a unique, incompressible sequential write (fio, 1 MiB requests at QD8): new chunks, dedup
 *       entries, map and chunk-table pages, LevelDB's memtables, WRITE payloads in flight;
 *   (b) clients that send four 32 MiB READs of that data each and leave without reading the
 *       replies, 20 at a time: read replies in flight that nobody will take;
 *   (c) the clean shutdown that follows (SIGTERM): its checkpoint writes every dedup entry and
 *       dirty page back, in slices (one batch of it all took 2.6 GB at the default budget).
 * Before the bound (main at 4ef1df5): a 4 GiB unique write at --cache-mb 64 peaked at 716 MB and
 * stayed at 498 MB idle; 200 aborted clients took the process from 87 to 653 MB for good.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import * as C from '../../src/protocol/constants.js';
import { describeRun, requireTools, run, startServer, tempDir } from '../helpers/interop.js';
import { clientFlags, option, request } from '../protocol/fixtures.js';

const MiB = 1024 * 1024;
const CACHE_MB = 64;
const PEAK_LIMIT_BYTES = (CACHE_MB + 200) * MiB;
const IDLE_LIMIT_BYTES = (CACHE_MB + 120) * MiB;
/** How long the process may take to give memory back once quiet (it waits 2 s for quiet). */
const IDLE_WAIT_MS = 20_000;
/** V8 unmaps what its idle collection freed in the background: the idle figure is taken this long after. */
const RECLAIM_SETTLE_MS = 500;
/** The shutdown writes the dedup index back (about 25 µs an entry here, 262,144 entries). */
const STOP_WAIT_MS = 60_000;
const WRITE_BYTES = 1024 * MiB;
const ABORTED_CLIENTS = 200;
const CLIENTS_AT_ONCE = 20;
const READS_PER_CLIENT = 4;
const READ_BYTES = 32 * MiB;
const LEAVE_AFTER_MS = 300;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** VmRSS and VmHWM of a process, in bytes. */
function residentBytes(pid: number): { rss: number; hwm: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'latin1');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rss: field('VmRSS'), hwm: field('VmHWM') };
}

/** Samples the resident set while `work` runs; returns the peak (VmHWM, reset first, or the highest sample). */
async function peakDuring(pid: number, work: () => Promise<void>): Promise<number> {
  let hwmReset = true;
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    hwmReset = false;
  }
  let sampled = 0;
  let last = { rss: 0, hwm: 0 };
  const sample = () => {
    try {
      const now = residentBytes(pid);
      // An exited process not yet reaped has a status without VmRSS.
      if (Number.isNaN(now.rss)) return;
      last = now;
      sampled = Math.max(sampled, now.rss);
    } catch {
      // The process has exited (the shutdown phase): its last sample stands.
    }
  };
  sample();
  const timer = setInterval(sample, 50);
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  sample();
  return Math.max(sampled, hwmReset ? last.hwm : 0);
}

/**
 * The resident set once the server has gone idle and given memory back (its debug log says
 * "idle: memory given back" after 2 s of quiet; requests of clients that left may still run a
 * while before that), or after `IDLE_WAIT_MS` if it never says so.
 */
async function idleResident(pid: number, logs: () => string): Promise<{ bytes: number; afterMs: number }> {
  const started = Date.now();
  const reclaims = () => logs().split('idle: memory given back').length;
  const before = reclaims();
  while (reclaims() === before && Date.now() - started < IDLE_WAIT_MS) await sleep(100);
  await sleep(RECLAIM_SETTLE_MS);
  return { bytes: residentBytes(pid).rss, afterMs: Date.now() - started };
}

/**
 * A raw NBD client that attaches (NBD_OPT_EXPORT_NAME), sends READs and leaves once the first
 * reply bytes arrive (the server is then writing replies nobody will read), or after
 * `LEAVE_AFTER_MS` (its READs are then still waiting for room, or being served).
 */
function abortedClient(socketPath: string, offsets: number[]): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath);
    let received = 0;
    let sent = false;
    const leave = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve();
    };
    const timer = setTimeout(leave, LEAVE_AFTER_MS);
    socket.on('error', leave);
    socket.on('close', leave);
    socket.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (!sent && received >= 18 + 10) {
        // Greeting (18 bytes) and the export's size and flags (10, NO_ZEROES): attached.
        sent = true;
        socket.write(Buffer.concat(offsets.map((offset, i) => request(C.NBD_CMD_READ, { cookie: BigInt(i + 1), offset: BigInt(offset), length: READ_BYTES }))));
      } else if (sent && received > 28) {
        leave();
      }
    });
    socket.write(Buffer.concat([clientFlags(), option(C.NBD_OPT_EXPORT_NAME, Buffer.from('default'))]));
  });
}

function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(0)} MiB`;
}

async function uniqueWrite(t: ExecutionContext, uri: string, dir: string): Promise<void> {
  const result = await run(
    'fio',
    ['--name=unique', '--ioengine=nbd', `--uri=${uri}`, '--rw=write', '--bs=1M', '--iodepth=8', `--size=${WRITE_BYTES}`, '--refill_buffers=1', '--randrepeat=0', '--output-format=json', `--output=${path.join(dir, 'fio.json')}`],
    { timeoutMs: 120_000, cwd: dir },
  );
  t.is(result.code, 0, describeRun(result));
}

test(`pstorage serve --cache-mb ${CACHE_MB} stays within the budget + 200 MiB under load and + 120 MiB idle`, async (t) => {
  requireTools(['fio']);
  const dir = tempDir(t);
  const server = await startServer(t, { args: ['--cache-mb', String(CACHE_MB), '--capacity', '8G'], env: { PSTORAGE_LOG: 'debug' } });
  const pid = server.child.pid!;
  t.log(`started: ${mib(residentBytes(pid).rss)} resident`);

  const writeStarted = Date.now();
  const writePeak = await peakDuring(pid, () => uniqueWrite(t, server.unixUri(), dir));
  const writeIdle = await idleResident(pid, () => server.logs());
  t.log(`(a) ${mib(WRITE_BYTES)} unique write in ${((Date.now() - writeStarted) / 1000).toFixed(1)} s: peak ${mib(writePeak)}, idle ${mib(writeIdle.bytes)} after ${writeIdle.afterMs} ms`);

  let seed = 1;
  const offsetOf = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return (seed % ((WRITE_BYTES - READ_BYTES) / MiB)) * MiB;
  };
  const abortStarted = Date.now();
  const abortPeak = await peakDuring(pid, async () => {
    for (let done = 0; done < ABORTED_CLIENTS; done += CLIENTS_AT_ONCE) {
      await Promise.all(Array.from({ length: CLIENTS_AT_ONCE }, () => abortedClient(server.socketPath, Array.from({ length: READS_PER_CLIENT }, offsetOf))));
    }
  });
  const abortIdle = await idleResident(pid, () => server.logs());
  t.log(`(b) ${ABORTED_CLIENTS} clients left with ${READS_PER_CLIENT} x ${mib(READ_BYTES)} READs in flight, in ${((Date.now() - abortStarted) / 1000).toFixed(1)} s: peak ${mib(abortPeak)}, idle ${mib(abortIdle.bytes)} after ${abortIdle.afterMs} ms`);

  t.true(server.child.exitCode === null, `the server exited:\n${server.logs()}`);
  // The server still serves after all that.
  const check = await run('/usr/bin/python3', ['-c', `import nbd; h = nbd.NBD(); h.connect_uri(${JSON.stringify(server.unixUri())}); assert len(h.pread(4096, 0)) == 4096`], { timeoutMs: 30_000 });
  t.is(check.code, 0, describeRun(check));

  const stopStarted = Date.now();
  let exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  const stopPeak = await peakDuring(pid, async () => {
    exit = await Promise.race([server.stop('SIGTERM'), sleep(STOP_WAIT_MS).then(() => null)]);
  });
  t.log(`(c) clean shutdown in ${((Date.now() - stopStarted) / 1000).toFixed(1)} s: peak ${mib(stopPeak)}`);

  t.true(writePeak <= PEAK_LIMIT_BYTES, `(a) peak ${mib(writePeak)} > ${mib(PEAK_LIMIT_BYTES)}`);
  t.true(writeIdle.bytes <= IDLE_LIMIT_BYTES, `(a) idle ${mib(writeIdle.bytes)} > ${mib(IDLE_LIMIT_BYTES)} after ${IDLE_WAIT_MS} ms`);
  t.true(abortPeak <= PEAK_LIMIT_BYTES, `(b) peak ${mib(abortPeak)} > ${mib(PEAK_LIMIT_BYTES)}`);
  t.true(abortIdle.bytes <= IDLE_LIMIT_BYTES, `(b) idle ${mib(abortIdle.bytes)} > ${mib(IDLE_LIMIT_BYTES)} after ${IDLE_WAIT_MS} ms`);
  t.true(stopPeak <= PEAK_LIMIT_BYTES, `(c) peak ${mib(stopPeak)} > ${mib(PEAK_LIMIT_BYTES)}`);
  t.deepEqual(exit, { code: 0, signal: null }, `no clean exit within ${STOP_WAIT_MS} ms of SIGTERM\n${server.logs().slice(-3000)}`);
});
