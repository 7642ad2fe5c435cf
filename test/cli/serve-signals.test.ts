/**
 * A SIGTERM sent the moment `pstorage serve` logs "listening" gets a clean shutdown: the signal
 * handlers are installed before that line. They used to be installed just after it, and a
 * supervisor that stopped the server on seeing it got Node's default action (an exit by signal,
 * no clean shutdown) 12 times in 20 here; a CI run failed on it.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { PSTORAGE_BIN, makeTempDir } from '../helpers/pstorage-process.js';

test('SIGTERM as soon as "listening" is logged: a clean shutdown every time', async (t) => {
  const outcomes: string[] = [];
  for (let i = 0; i < 10; i++) {
    const directory = makeTempDir('pstorage-signal-');
    try {
      const child = spawn(process.execPath, [PSTORAGE_BIN, 'serve', '--data-dir', path.join(directory, 'data'), '--socket', path.join(directory, 'nbd.sock')], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, PSTORAGE_LISTEN: 'none', PSTORAGE_LOG: 'info' },
      });
      child.stdout!.resume();
      let log = '';
      let signalled = false;
      child.stderr!.setEncoding('utf8');
      child.stderr!.on('data', (text: string) => {
        log += text;
        if (!signalled && log.includes('"msg":"listening"')) {
          signalled = true;
          child.kill('SIGTERM');
        }
      });
      const { code, signal } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (c, s) => resolve({ code: c, signal: s })));
      outcomes.push(code === 0 && log.includes('stopped cleanly') ? 'clean' : `code ${code} signal ${signal}`);
    } finally {
      fs.rmSync(directory, { recursive: true, force: true });
    }
  }
  t.deepEqual(outcomes, new Array(10).fill('clean'));
});
