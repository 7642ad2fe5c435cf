/**
 * The real Linux kernel NBD client against pstorage. Runs scripts/vm-test.sh, which boots Debian's
 * cloud kernel under qemu (TCG) with an initramfs holding nbd-client, ext4 and XFS tools, fstrim
 * and fio, and passes only when the guest test passes, every fstrim gave space back to the array
 * and pstorage stopped cleanly. The XFS round runs over TLS (nbd-client -cacertfile -certfile
 * -keyfile -tlshostname, certificates made by the script) on a volume only that client's
 * certificate may attach: the guest checks that a plain attach of it is refused, and the script
 * that pstorage logged a TLS session with the guest's identity for every attach of it.
 *
 * This test never skips: a host where qemu is missing or cannot boot fails it, since it is the
 * only test of the kernel path. PSTORAGE_VM_QUICK=1 leaves out the fio jobs.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { REPO_ROOT, makeTempDir } from '../helpers/pstorage-process.js';

/** Guest timeout handed to the script, well inside ava's 10-minute inactivity timeout. */
const GUEST_TIMEOUT_S = 520;
const TEST_TIMEOUT_MS = 9.5 * 60_000;
const LOG_TAIL_LINES = 150;

/** The lines worth keeping in a passing run's report: timings, negotiation, fio, trim, server. */
const SUMMARY_LINE = /PSTORAGE-GUEST-INFO|pstorage-guest: fio .*(IOPS|err=)|^vm-test: (trim:|tls:|guest steps|host steps|pstorage log|pstorage logged|warning|PASS)|^(server|stats)\| /;

test('the Linux kernel NBD client runs ext4, XFS over TLS, fstrim and fio against pstorage', async (t) => {
  t.timeout(TEST_TIMEOUT_MS, 'scripts/vm-test.sh did not finish');
  const args = [path.join(REPO_ROOT, 'scripts/vm-test.sh'), '--timeout', String(GUEST_TIMEOUT_S)];
  if (process.env.PSTORAGE_VM_QUICK === '1') args.push('--quick');

  const logDir = makeTempDir('pstorage-vm-log-');
  const logPath = path.join(logDir, 'vm-test.log');
  const logFile = fs.createWriteStream(logPath);
  const child = spawn('bash', args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  // On a test timeout, SIGTERM makes the script stop qemu and pstorage by their PIDs.
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  });

  let output = '';
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding('utf8');
    stream.on('data', (text: string) => {
      output += text;
      logFile.write(text);
    });
  }
  const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  await new Promise<void>((resolve) => logFile.end(resolve));

  const lines = output.split('\n');
  if (exit.code !== 0) {
    t.log(`scripts/vm-test.sh exited with code ${exit.code} (signal ${exit.signal}); full log: ${logPath}`);
    t.log(lines.slice(-LOG_TAIL_LINES).join('\n'));
  } else {
    for (const line of lines.filter((text) => SUMMARY_LINE.test(text))) t.log(line);
    fs.rmSync(logDir, { recursive: true, force: true });
  }
  t.is(exit.code, 0, 'scripts/vm-test.sh failed (log tail above)');
  t.regex(output, /^guest\| PSTORAGE-GUEST-RESULT: PASS$/m);
  t.regex(output, /^vm-test: trim: ext4: \d+ -> \d+ bytes, freed \d+/m);
  t.regex(output, /^guest\| PSTORAGE-GUEST-STEP: xfs-plain-attach-refused /m, 'the guest did not check that a plain attach of the TLS volume is refused');
  t.regex(output, /^vm-test: tls: [1-9]\d* attaches of guest-tls, each over TLS as pstorage-guest /m, 'no TLS session for the TLS round');
});
