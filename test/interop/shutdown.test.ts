/**
 * Graceful shutdown with clients connected: SIGTERM while one client is idle after writing and
 * flushing, one is still in the handshake, and one is writing back to back. The server must exit
 * 0 promptly (an idle or negotiating client must not hold it up), close every connection, and
 * after a restart on the same data directory hold the flushed data and every write it
 * acknowledged.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { INTEROP_DIR, SYSTEM_PYTHON, cleanupOnExit, describeRun, requireTools, runPython, startServer, stopServer, tempDir } from '../helpers/interop.js';

/** A python client whose JSON lines on stdout can be awaited one at a time. */
interface Client {
  child: ChildProcess;
  nextMessage(): Promise<Record<string, unknown>>;
  output(): string;
  exited: Promise<number | null>;
}

function startClient(t: ExecutionContext, mode: string, uri: string): Client {
  const child = spawn(SYSTEM_PYTHON, [path.join(INTEROP_DIR, 'shutdown_client.py'), mode, uri], { stdio: ['pipe', 'pipe', 'pipe'] });
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  const unregister = cleanupOnExit(kill);
  t.teardown(() => {
    unregister();
    kill();
  });
  child.stdin!.on('error', () => {}); // a client that already exited: its result says why
  let stdout = '';
  let stderr = '';
  let consumed = 0;
  const waiters: Array<() => void> = [];
  child.stdout!.setEncoding('utf8').on('data', (text: string) => {
    stdout += text;
    for (const wake of waiters.splice(0)) wake();
  });
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const exited = new Promise<number | null>((resolve) =>
    child.once('close', (code) => {
      resolve(code);
      for (const wake of waiters.splice(0)) wake();
    }),
  );
  const output = () => `${mode} client stdout:\n${stdout}\nstderr:\n${stderr}`;
  return {
    child,
    exited,
    output,
    async nextMessage() {
      const deadline = Date.now() + 30_000;
      for (;;) {
        const end = stdout.indexOf('\n', consumed);
        if (end >= 0) {
          const line = stdout.slice(consumed, end);
          consumed = end + 1;
          return JSON.parse(line) as Record<string, unknown>;
        }
        if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
          throw new Error(`no message from the ${mode} client (exit ${child.exitCode})\n${output()}`);
        }
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 1000);
        });
      }
    },
  };
}

test('SIGTERM with clients connected: exit 0, connections closed, data kept', async (t) => {
  requireTools([SYSTEM_PYTHON]);
  const dataDir = path.join(tempDir(t), 'data');
  const server = await startServer(t, { dataDir });
  const uri = server.unixUri();

  const idle = startClient(t, 'idle', uri);
  const negotiating = startClient(t, 'negotiating', uri);
  const busy = startClient(t, 'busy', uri);
  t.true((await idle.nextMessage()).ready, idle.output());
  t.deepEqual((await negotiating.nextMessage()).exports, ['default'], negotiating.output());
  t.true((await busy.nextMessage()).ready, busy.output());

  const started = Date.now();
  await stopServer(t, server, 15_000);
  const shutdownMs = Date.now() - started;
  t.log(`server exited ${shutdownMs} ms after SIGTERM`);
  // The server gives a client 1 s to close after its FIN; far longer means something held it up.
  t.true(shutdownMs < 8_000, `shutdown took ${shutdownMs} ms with idle clients connected`);
  t.regex(server.logs(), /"msg":"stopped cleanly"/);

  // Every client must find its connection closed.
  const busyResult = await busy.nextMessage();
  t.true(typeof busyResult.acked === 'number' && busyResult.acked >= 16, `busy client: ${JSON.stringify(busyResult)}`);
  for (const client of [idle, negotiating]) {
    client.child.stdin!.end('go\n');
    const after = await client.nextMessage();
    t.is(after.after, 'error', `the server should have closed this connection: ${JSON.stringify(after)}\n${client.output()}`);
  }
  for (const client of [idle, negotiating, busy]) t.is(await client.exited, 0, client.output());

  // After a restart: the flushed data and every acknowledged write are there.
  const restarted = await startServer(t, { dataDir });
  const verify = await runPython('shutdown_client.py', ['verify', restarted.unixUri(), String(busyResult.acked)], { timeoutMs: 120_000 });
  t.is(verify.code, 0, describeRun(verify));
  t.deepEqual(JSON.parse(verify.stdout.trim().split('\n').pop()!), { ok: true, problems: [] }, describeRun(verify));
  await stopServer(t, restarted);
});
