/**
 * Runs the python3-libnbd conformance script (test/interop/nbd_conformance.py) against a real
 * pstorage process, one ava test per group of checks, each on its own server:
 * - handshake: opt mode (opt_list, opt_info on default/empty/unknown exports, meta contexts,
 *   opt_go with base:allocation, opt_abort), structured reads with holes and DF;
 * - raw-protocol: what libnbd cannot send (unknown options and commands, SET_META_CONTEXT on its
 *   own, INFO versus GO, EXPORT_NAME with padding, DISC, bad client flags);
 * - bad-requests: strict mode off, the spec's errno for every bad request, and after each one
 *   the same connection (and a second one) still round-trips data;
 * - multi-conn: write on one connection, FLUSH on another, read on a third;
 * - simple-replies: a client that refuses structured replies, as the Linux kernel does.
 */
import test from 'ava';
import { describeRun, requireTools, runPython, startServer, stopServer } from '../helpers/interop.js';

const GROUPS = ['handshake', 'raw-protocol', 'bad-requests', 'multi-conn', 'simple-replies'];

for (const group of GROUPS) {
  test(`nbd_conformance.py ${group}`, async (t) => {
    requireTools(['/usr/bin/python3']);
    const server = await startServer(t);
    const result = await runPython('nbd_conformance.py', [server.socketPath, group], { timeoutMs: 120_000 });
    t.log(result.stdout.split('\n').filter((line) => line.startsWith('SUMMARY')).join('\n'));
    t.is(result.code, 0, `conformance group ${group} failed\n${describeRun(result)}\n--- server log ---\n${server.logs()}`);
    t.regex(result.stdout, /SUMMARY: (\d+) of \1 checks passed/, describeRun(result));
    t.notRegex(result.stdout, /^FAIL /m);
    await stopServer(t, server);
  });
}
