/**
 * Logging never takes the array down (issue 12, item 1): `pstorage serve` with its log on a full
 * device (/dev/full: every write fails with ENOSPC), or with stdout and stderr on a pipe whose
 * reader has gone (`2>&1 | head -c 200`), keeps serving; and the log sink drops what it cannot
 * write, counts it, and says so once when it can write again.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { createLogger, safeLineWriter } from '../../src/common/log.js';
import { PSTORAGE_BIN, makeTempDir } from '../helpers/pstorage-process.js';

function nbdinfoSize(socketPath: string): string | null {
  const result = spawnSync('nbdinfo', ['--size', `nbd+unix:///default?socket=${socketPath}`], { encoding: 'utf8', timeout: 10_000 });
  return result.status === 0 ? result.stdout.trim() : null;
}

async function waitServing(socketPath: string, child: ChildProcess): Promise<boolean> {
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null || child.signalCode !== null) return false;
    if (fs.existsSync(socketPath) && nbdinfoSize(socketPath) !== null) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return false;
}

function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

function serveArgs(directory: string): { args: string[]; socketPath: string } {
  const socketPath = path.join(directory, 'nbd.sock');
  return { args: [PSTORAGE_BIN, 'serve', '--data-dir', path.join(directory, 'data'), '--socket', socketPath], socketPath };
}

test('serve with its log on a full device keeps serving and stops cleanly', async (t) => {
  const directory = makeTempDir('pstorage-log-');
  const full = fs.openSync('/dev/full', 'w');
  const { args, socketPath } = serveArgs(directory);
  const child = spawn(process.execPath, args, { stdio: ['ignore', full, full], env: { ...process.env, PSTORAGE_LOG: 'debug', PSTORAGE_LISTEN: 'none' } });
  fs.closeSync(full);
  try {
    t.true(await waitServing(socketPath, child), 'the export is served although every log write fails');
    // Each connection logs; the server must survive all of them.
    for (let i = 0; i < 5; i++) t.is(nbdinfoSize(socketPath), String(16 * 1024 ** 3), `connection ${i}`);
    t.is(child.exitCode, null, 'still running');
    child.kill('SIGTERM');
    t.deepEqual(await exitOf(child), { code: 0, signal: null }, 'a clean shutdown');
  } finally {
    child.kill('SIGKILL');
    fs.rmSync(directory, { recursive: true, force: true });
  }
});

test('serve whose stdout and stderr reader went away (2>&1 | head -c 200) keeps serving', async (t) => {
  const directory = makeTempDir('pstorage-log-');
  const { args, socketPath } = serveArgs(directory);
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PSTORAGE_LOG: 'debug', PSTORAGE_LISTEN: 'none' } });
  // Like head -c 200: read a little of each, then close the read ends.
  child.stdout!.once('data', () => child.stdout!.destroy());
  child.stderr!.once('data', () => child.stderr!.destroy());
  try {
    t.true(await waitServing(socketPath, child), 'served');
    for (let i = 0; i < 5; i++) t.is(nbdinfoSize(socketPath), String(16 * 1024 ** 3), `connection ${i} after the reader left`);
    t.is(child.exitCode, null, 'still running');
    child.kill('SIGTERM');
    t.deepEqual(await exitOf(child), { code: 0, signal: null });
  } finally {
    child.kill('SIGKILL');
    fs.rmSync(directory, { recursive: true, force: true });
  }
});

test('the log sink drops and counts lines it cannot write, and says so once when it can again', (t) => {
  const written: string[] = [];
  let failures = 3;
  const sink = safeLineWriter((line) => {
    if (failures > 0) {
      failures -= 1;
      throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
    }
    written.push(line);
  });
  const logger = createLogger({ component: 'test' }, sink);
  for (let i = 0; i < 3; i++) t.notThrows(() => logger.warn('lost', { i }));
  logger.warn('kept');
  logger.warn('kept too');
  t.is(written.length, 3, 'the notice, then the two lines');
  const notice = JSON.parse(written[0]!) as { level: string; msg: string; dropped: number; reason: string };
  t.is(notice.level, 'warn');
  t.is(notice.dropped, 3);
  t.is(notice.reason, 'ENOSPC');
  t.regex(notice.msg, /could not be written/);
  t.regex(written[1]!, /"msg":"kept"/);
  t.regex(written[2]!, /"msg":"kept too"/);
});
