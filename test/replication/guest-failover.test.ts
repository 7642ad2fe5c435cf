/**
 * ActiveCluster seen from a Linux guest: scripts/vm-failover-test.sh --quick starts etcd and
 * arrays A and B with a pod volume, boots the qemu guest of the kernel NBD test, and SIGKILLs A
 * while the guest writes to an ext4 mounted on a dm-multipath device over its two NBD connections.
 * The guest must go on writing through B with ext4 still read-write and no kernel warning;
 * afterwards B alone must hold a filesystem e2fsck -fn finds clean, and every file the guest had
 * synced (before and after the kill) must read back with its sha256. Two ways to use the paths:
 * A first and B only after A failed; and both by turns (--both-paths), so that writes sent
 * through B may be on their way to A, the pod's leader, when it dies.
 *
 * Like test/vm, this never skips: it is the only test of a failover under a real kernel client.
 */
import test, { type ExecutionContext } from 'ava';
import { runVmScript } from '../helpers/vm-script.js';

/** Guest timeout handed to the script (a quick run takes 20-40 s), inside ava's 10-minute timeout. */
const GUEST_TIMEOUT_S = 400;
const TEST_TIMEOUT_MS = 8 * 60_000;

/** The lines worth keeping in a passing run's report: the failover as the guest's kernel and B saw it, fsck, timings. */
const SUMMARY_LINE = /PSTORAGE-GUEST-INFO|pstorage-guest: (dm table|e2fsck: \/dev|dmsetup status after|dmesg: .*(nbd0: (Receive|Send|Connection)|Failing path))|^vm-failover-test: (failover:|guest steps|host steps|array B|PASS)|^server\| /;

async function failover(t: ExecutionContext, extraArgs: string[]): Promise<void> {
  t.timeout(TEST_TIMEOUT_MS, 'scripts/vm-failover-test.sh did not finish');
  const { code, output } = await runVmScript(t, 'scripts/vm-failover-test.sh', ['--quick', '--timeout', String(GUEST_TIMEOUT_S), ...extraArgs], SUMMARY_LINE);

  t.is(code, 0, 'scripts/vm-failover-test.sh failed (log tail above)');
  t.regex(output, /^guest\| PSTORAGE-GUEST-RESULT: PASS$/m);
  t.regex(output, /^vm-failover-test: failover: B degraded \(serving alone\)/m, 'B did not go on alone after the kill');
  t.regex(output, /^guest\| PSTORAGE-GUEST-STEP: paths-switched /m, 'the guest did not see path A fail and path B serve');
  t.regex(output, /^guest\| PSTORAGE-GUEST-INFO: kernel warnings=0$/m);
  t.regex(output, /^guest\| PSTORAGE-GUEST-INFO: failover pause_s=\d+\.\d+ path_a_failed_s=[1-9]/m, 'the guest did not measure the pause around the path switch');
  // e2fsck -fn's closing summary, with nothing to fix (the guest fails the step on any other exit status).
  t.regex(output, /^guest\| PSTORAGE-GUEST-STEP: fsck-b /m);
  t.regex(output, /^guest\| pstorage-guest: e2fsck: \/dev\/nbd1: \d+\/\d+ files .*blocks$/m);
  const verified = /^guest\| PSTORAGE-GUEST-INFO: verified files=(\d+) synced_after_kill_request=(\d+) bad=(\d+)$/m.exec(output);
  t.truthy(verified, 'no verification line from the guest');
  if (verified !== null) {
    const [files, afterKill, bad] = verified.slice(1).map(Number) as [number, number, number];
    t.is(bad, 0, 'files synced through the failover read back wrong from B');
    t.true(afterKill >= 12, `files synced after the kill request: ${afterKill}`);
    t.true(files > afterKill, 'files synced before the kill were checked too');
  }
}

test.serial('a guest ext4 on a pod volume through dm-multipath (A, then B) survives SIGKILL of array A mid-write: fsck -n clean on B, every synced file intact', (t) => failover(t, []));

test.serial('the same with the guest writing through A and B by turns (writes sent through B may be on their way to the leader A when it dies)', (t) => failover(t, ['--both-paths']));
