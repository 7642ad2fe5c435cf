/**
 * The soak's bad inputs (scripts/soak_bad_inputs.py) against a real pstorage process, a short run
 * on every test run so the script cannot rot: garbage handshakes, oversized options, garbage after
 * GO, and well-formed but invalid requests, each answered by the protocol's rules, with a fresh
 * connection served and the script's own data intact after every session.
 */
import path from 'node:path';
import test from 'ava';
import { describeRun, requireTools, run, startServer, stopServer } from '../helpers/interop.js';
import { REPO_ROOT } from '../helpers/pstorage-process.js';

test('bad inputs: 60 sessions of malformed and invalid NBD traffic, each answered by the rules, nothing else harmed', async (t) => {
  requireTools(['/usr/bin/python3']);
  const server = await startServer(t);
  const seed = Math.floor(Math.random() * 2 ** 31);
  t.log(`seed ${seed}`);
  const result = await run('/usr/bin/python3', [path.join(REPO_ROOT, 'scripts/soak_bad_inputs.py'), server.socketPath, String(512 * 1024 * 1024), '60', String(seed)], { timeoutMs: 120_000 });
  t.is(result.code, 0, describeRun(result));
  const summary = JSON.parse(result.stdout.trim().split('\n').pop()!) as { sessions: number; requests: number; errors_answered: number; closed: number; failures: string[] };
  t.log(`${summary.requests} bad requests in ${summary.sessions} sessions: ${summary.errors_answered} error replies, ${summary.closed} connections closed by the rules`);
  t.deepEqual(summary.failures, [], `seed ${seed}`);
  t.is(summary.sessions, 60);
  t.true(summary.errors_answered > 0 && summary.requests > summary.sessions);
  t.notRegex(server.logs(), /"level":"error"/, 'no error logged');
  await stopServer(t, server);
});
