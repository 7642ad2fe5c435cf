/**
 * nbdinfo (libnbd) against a real pstorage process: the advertised export, flags, block sizes and
 * meta contexts as a real client sees them, the export list, and the empty (default) export name.
 */
import test from 'ava';
import { DEFAULT_EXPORT_BYTES, MiB, mustRun, requireTools, run, startServer, stopServer, describeRun } from '../helpers/interop.js';

interface NbdinfoExport {
  'export-name': string;
  description?: string;
  'export-size': number;
  contexts?: string[];
  is_read_only: boolean;
  is_rotational: boolean;
  can_cache: boolean;
  can_df: boolean;
  can_fast_zero: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_multi_conn: boolean;
  can_trim: boolean;
  can_zero: boolean;
  block_size_minimum: number;
  block_size_preferred: number;
  block_size_maximum: number;
}

interface NbdinfoJson {
  protocol: string;
  TLS: boolean;
  structured: boolean;
  exports: NbdinfoExport[];
}

const EXPECTED_FLAGS = {
  is_read_only: false,
  can_cache: true,
  can_df: true,
  can_fast_zero: true,
  can_flush: true,
  can_fua: true,
  can_multi_conn: true,
  can_trim: true,
  can_zero: true,
};

function assertDefaultExport(t: import('ava').ExecutionContext, info: NbdinfoExport, label: string): void {
  t.is(info['export-name'], 'default', `${label}: export name`);
  t.is(info['export-size'], DEFAULT_EXPORT_BYTES, `${label}: size is 16 GiB`);
  const flags = Object.fromEntries(Object.keys(EXPECTED_FLAGS).map((key) => [key, info[key as keyof NbdinfoExport]]));
  t.deepEqual(flags, EXPECTED_FLAGS, `${label}: advertised flags`);
  t.deepEqual(
    [info.block_size_minimum, info.block_size_preferred, info.block_size_maximum],
    [1, 4096, 64 * MiB],
    `${label}: block sizes (minimum, preferred, maximum)`,
  );
  t.true(info.contexts?.includes('base:allocation'), `${label}: base:allocation in contexts ${JSON.stringify(info.contexts)}`);
  t.truthy(info.description, `${label}: a description`);
}

test('nbdinfo --json, --list, --can and the empty export name', async (t) => {
  requireTools(['nbdinfo']);
  const server = await startServer(t);

  const json = JSON.parse((await mustRun('nbdinfo', ['--json', server.unixUri('default')])).stdout) as NbdinfoJson;
  t.is(json.protocol, 'newstyle-fixed');
  t.true(json.structured, 'structured replies negotiated');
  t.is(json.exports.length, 1);
  assertDefaultExport(t, json.exports[0]!, 'nbdinfo --json');

  const listed = JSON.parse((await mustRun('nbdinfo', ['--list', '--json', server.unixUri('')])).stdout) as NbdinfoJson;
  t.deepEqual(listed.exports.map((e) => e['export-name']), ['default'], 'nbdinfo --list names exactly the default export');
  assertDefaultExport(t, listed.exports[0]!, 'nbdinfo --list');

  // The empty export name ('nbd+unix:///?socket=...') is the default export.
  const empty = JSON.parse((await mustRun('nbdinfo', ['--json', server.unixUri('')])).stdout) as NbdinfoJson;
  assertDefaultExport(t, empty.exports[0]!, 'empty export name');
  t.is((await mustRun('nbdinfo', ['--size', server.unixUri('')])).stdout.trim(), String(DEFAULT_EXPORT_BYTES));

  // --can / --is answer through the exit code: 0 true, 2 false.
  for (const feature of ['flush', 'fua', 'trim', 'zero', 'fast-zero', 'df', 'multi-conn', 'cache']) {
    const result = await run('nbdinfo', ['--can', feature, server.unixUri()]);
    t.is(result.code, 0, `nbdinfo --can ${feature}\n${describeRun(result)}`);
  }
  const readOnly = await run('nbdinfo', ['--is', 'read-only', server.unixUri()]);
  t.is(readOnly.code, 2, `nbdinfo --is read-only must say false\n${describeRun(readOnly)}`);

  // An unknown export is refused (NBD_REP_ERR_UNKNOWN), not served.
  const unknown = await run('nbdinfo', ['--json', server.unixUri('no-such-export')]);
  t.not(unknown.code, 0, 'nbdinfo of an unknown export must fail');
  t.regex(unknown.stderr, /no-such-export|unknown|not found|No such file/i, describeRun(unknown));

  await stopServer(t, server);
});
