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
import { runVmScript } from '../helpers/vm-script.js';

/** Guest timeout handed to the script, well inside ava's 10-minute inactivity timeout. */
const GUEST_TIMEOUT_S = 520;
const TEST_TIMEOUT_MS = 9.5 * 60_000;

/** The lines worth keeping in a passing run's report: timings, negotiation, fio, trim, server. */
const SUMMARY_LINE = /PSTORAGE-GUEST-INFO|pstorage-guest: fio .*(IOPS|err=)|^vm-test: (trim:|tls:|guest steps|host steps|pstorage log|pstorage logged|warning|PASS)|^(server|stats)\| /;

test('the Linux kernel NBD client runs ext4, XFS over TLS, fstrim and fio against pstorage', async (t) => {
  t.timeout(TEST_TIMEOUT_MS, 'scripts/vm-test.sh did not finish');
  const args = ['--timeout', String(GUEST_TIMEOUT_S)];
  if (process.env.PSTORAGE_VM_QUICK === '1') args.push('--quick');
  const { code, output } = await runVmScript(t, 'scripts/vm-test.sh', args, SUMMARY_LINE);

  t.is(code, 0, 'scripts/vm-test.sh failed (log tail above)');
  t.regex(output, /^guest\| PSTORAGE-GUEST-RESULT: PASS$/m);
  t.regex(output, /^vm-test: trim: ext4: \d+ -> \d+ bytes, freed \d+/m);
  t.regex(output, /^guest\| PSTORAGE-GUEST-STEP: xfs-plain-attach-refused /m, 'the guest did not check that a plain attach of the TLS volume is refused');
  t.regex(output, /^vm-test: tls: [1-9]\d* attaches of guest-tls, each over TLS as pstorage-guest /m, 'no TLS session for the TLS round');
});
