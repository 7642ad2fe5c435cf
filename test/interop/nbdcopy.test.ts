/**
 * nbdcopy with 4 connections: 256 MiB of random data into the export and back out, identical
 * sha256. Copying out reads the whole 16 GiB export; nbdcopy skips what BLOCK_STATUS reports as
 * holes, so the rest of the output must read as zeroes.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { DEFAULT_EXPORT_BYTES, GiB, MiB, mustRun, requireTools, seededBytes, sha256, sha256File, startServer, stopServer, tempDir } from '../helpers/interop.js';

const COPY_BYTES = 256 * MiB;

test('nbdcopy --connections 4: 256 MiB in and out, same sha256', async (t) => {
  requireTools(['nbdcopy']);
  const dir = tempDir(t);
  const server = await startServer(t);
  const source = path.join(dir, 'source.img');
  const seed = Date.now() >>> 0;
  t.log(`data seed ${seed}`);
  const data = seededBytes(COPY_BYTES, seed);
  fs.writeFileSync(source, data);
  const sourceHash = sha256(data);

  await mustRun('nbdcopy', ['--connections', '4', '--flush', source, server.unixUri()], { timeoutMs: 120_000 });

  const output = path.join(dir, 'output.img');
  await mustRun('nbdcopy', ['--connections', '4', server.unixUri(), output], { timeoutMs: 180_000 });
  t.is(fs.statSync(output).size, DEFAULT_EXPORT_BYTES, 'nbdcopy copied the whole export');
  t.is(await sha256File(output, 0, COPY_BYTES), sourceHash, 'the first 256 MiB copied out match what was copied in');
  // Samples of the never-written rest must be zero.
  const zeroes = sha256(Buffer.alloc(MiB));
  for (const offset of [COPY_BYTES, 4 * GiB + 12345, DEFAULT_EXPORT_BYTES - MiB]) {
    t.is(await sha256File(output, offset, MiB), zeroes, `never-written MiB at ${offset} reads as zeroes`);
  }
  await stopServer(t, server);
});
