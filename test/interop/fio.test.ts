/**
 * fio's NBD engine (libnbd): 4 jobs, so 4 connections, each random-writing its own 64 MiB region
 * at queue depth 32 with crc32c verification, then reading it all back and verifying.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { GiB, MiB, describeRun, requireTools, run, startServer, stopServer, tempDir } from '../helpers/interop.js';

const JOBS = 4;
const REGION_BYTES = 64 * MiB;

interface FioJob {
  jobname: string;
  error: number;
  write: { io_bytes: number };
  read: { io_bytes: number };
}

test('fio --ioengine=nbd randwrite with crc32c verify, iodepth 32, 4 jobs', async (t) => {
  requireTools(['fio']);
  const dir = tempDir(t);
  const server = await startServer(t);
  const output = path.join(dir, 'fio.json');
  // Engine options (--uri) are accepted only after --ioengine=nbd.
  const result = await run(
    'fio',
    [
      '--name=pstorage-interop',
      '--ioengine=nbd',
      `--uri=${server.unixUri()}`,
      '--rw=randwrite',
      '--bsrange=4k-64k',
      '--iodepth=32',
      `--numjobs=${JOBS}`,
      `--size=${REGION_BYTES}`,
      `--offset=${1 * GiB}`,
      `--offset_increment=${REGION_BYTES}`,
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--verify_backlog=0',
      '--randrepeat=0',
      // fio would otherwise drop local-*-verify.state files into its working directory.
      '--verify_state_save=0',
      '--output-format=json',
      `--output=${output}`,
    ],
    { timeoutMs: 180_000, cwd: dir },
  );
  t.is(result.code, 0, describeRun(result));
  t.false(/verify|bad magic|crc32c/i.test(result.stderr), `fio reported verify problems\n${describeRun(result)}`);
  const report = JSON.parse(fs.readFileSync(output, 'utf8')) as { jobs: FioJob[] };
  t.is(report.jobs.length, JOBS);
  for (const job of report.jobs) {
    t.is(job.error, 0, `job error ${job.error}`);
    t.is(job.write.io_bytes, REGION_BYTES, 'each job wrote its whole region');
    t.is(job.read.io_bytes, REGION_BYTES, 'each job read its whole region back for verification');
  }
  await stopServer(t, server);
});
