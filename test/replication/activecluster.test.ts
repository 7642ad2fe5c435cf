/**
 * ActiveCluster tests that break things, on loopback: etcd, two arrays and a link proxy are all
 * started by the tests themselves (cluster-harness.ts). Each scenario checks what each array did
 * (pod state, I/O accepted or refused) and the data (acknowledged writes read back; nbdcopy of
 * both copies byte-identical after a resync).
 */
import test from 'ava';
import { requireTools, run } from '../helpers/interop.js';
import { pstorage } from '../cli/cli-run.js';
import { startArray, cli, exportDigest, podIo, podStatus, startCluster, waitForState, type ArrayProcess, type Cluster } from './cluster-harness.js';

requireTools(['fio', 'nbdcopy', 'sha256sum', 'etcd']);

const MiB = 1024 * 1024;

async function digests(cluster: Cluster): Promise<[string, string]> {
  return [await exportDigest(cluster.a.server.tcpUri('vol')), await exportDigest(cluster.b.server.tcpUri('vol'))];
}

async function writeOk(array: ArrayProcess, offsetBytes: number, lengthBytes: number, byte: number): Promise<boolean> {
  const result = await podIo(['write', array.server.tcpUri('vol'), String(offsetBytes), String(lengthBytes), String(byte)]);
  return result.code === 0;
}

test.serial('writes through both arrays land on both; a cut link leaves exactly one array serving; after healing, a resync of the changed chunks only makes both copies byte-identical', async (t) => {
  const cluster = await startCluster(t, { volumeSize: '256M' });
  const { a, b, proxy } = cluster;
  const listed = await cli(b.dataDir, ['pod', 'list', '--json']);
  t.is((JSON.parse(listed) as Array<{ name: string; state: string; volumes: string[] }>)[0]!.volumes[0], 'vol', 'the pod volume exists on B too');
  t.true(await writeOk(a, 0, MiB, 0x11));
  t.true(await writeOk(b, MiB, MiB, 0x22));
  t.true(await writeOk(b, 0, 4096, 0x33), 'an overwrite through B of a block written through A');
  const [before1, before2] = await digests(cluster);
  t.is(before1, before2, 'in sync: both copies identical');
  const figures = [await podStatus(a), await podStatus(b)];
  const written = figures.reduce((sum, s) => sum + s.linkWriteBytes, 0);
  const sent = figures.reduce((sum, s) => sum + s.linkWriteBytesSent, 0);
  t.log(`synchronous writes over the link: ${written} bytes written, ${sent} bytes sent`);
  t.true(written >= 2 * MiB + 4096, 'every write crossed the link (a follower forwards it, the leader sends it back ordered)');
  t.true(sent * 20 < written, 'blocks of one repeated byte cross it LZ4-compressed');

  proxy.cut();
  const settled = await Promise.all([waitForState(a, ['degraded', 'suspended'], 15_000), waitForState(b, ['degraded', 'suspended'], 15_000)]);
  // Give the loser time to settle too (it may be asking the mediator when the winner has already won).
  await new Promise((resolve) => setTimeout(resolve, 500));
  const states = [await podStatus(a), await podStatus(b)];
  t.log(`link cut: A ${states[0]!.state} (${states[0]!.reason}); B ${states[1]!.state} (${states[1]!.reason})`);
  t.is(states.filter((s) => s.state === 'degraded').length, 1, 'exactly one array goes on');
  t.is(states.filter((s) => s.state === 'suspended').length, 1, 'the other is suspended');
  t.truthy(settled);
  const [winner, loser] = states[0]!.state === 'degraded' ? [a, b] : [b, a];
  t.true(await writeOk(winner, 4 * MiB, 2 * MiB, 0x44), 'the winner accepts writes alone');
  t.false(await writeOk(loser, 8 * MiB, 4096, 0x55), 'the loser refuses I/O (EIO)');

  proxy.heal();
  await Promise.all([waitForState(a, ['in-sync'], 30_000), waitForState(b, ['in-sync'], 30_000)]);
  const source = await podStatus(winner);
  t.log(`healed: resync of ${source.lastResyncChunks} chunk(s) of 64 KiB in ${source.lastResyncMs} ms`);
  t.true(source.lastResyncChunks >= 32 && source.lastResyncChunks <= 40, `the resync copied the changed chunks only (2 MiB written alone = 32 chunks), not the 4096 of the volume: ${source.lastResyncChunks}`);
  const [after1, after2] = await digests(cluster);
  t.is(after1, after2, 'after the resync both copies are byte-identical');
  t.true(await writeOk(loser, 8 * MiB, 4096, 0x66), 'the former loser serves again');

  // A pod volume is never deleted on one array alone; deleting the pod keeps the volumes.
  const refused = await pstorage(a.dataDir, ['volume', 'delete', 'vol']);
  t.is(refused.code, 1, refused.stderr);
  t.regex(refused.stderr, /belongs to pod pod: .*pstorage pod delete pod/);
  const deleted = JSON.parse(await cli(a.dataDir, ['pod', 'delete', 'pod', '--json'])) as { peerToo: boolean; volumesKeptAsLocal: string[] };
  t.like(deleted, { peerToo: true, volumesKeptAsLocal: ['vol'] });
  t.deepEqual(JSON.parse(await cli(b.dataDir, ['pod', 'list', '--json'])), [], 'gone from B too');
  t.true(await writeOk(b, 0, 4096, 0x77), 'the volume stays, as an ordinary volume of each array');
});

test.serial('etcd down while both arrays are healthy: I/O goes on; then the link cut too: both suspend; etcd back: exactly one goes on', async (t) => {
  const cluster = await startCluster(t, { volumeSize: '64M' });
  const { a, b, proxy, etcd } = cluster;
  await etcd.stop();
  t.true(await writeOk(a, 0, MiB, 0x11), 'writes through A with etcd down');
  t.true(await writeOk(b, MiB, MiB, 0x22), 'writes through B with etcd down');
  t.is((await podStatus(a)).state, 'in-sync');
  t.is((await podStatus(b)).state, 'in-sync');

  proxy.cut();
  const [sa, sb] = await Promise.all([waitForState(a, ['suspended'], 15_000), waitForState(b, ['suspended'], 15_000)]);
  t.log(`peer and mediator gone: A ${sa.state} (${sa.reason}); B ${sb.state} (${sb.reason})`);
  t.regex(sa.reason, /mediator/);
  t.false(await writeOk(a, 0, 4096, 0x33), 'A refuses I/O while suspended');
  t.false(await writeOk(b, 0, 4096, 0x33), 'B refuses I/O while suspended');

  await etcd.start();
  await Promise.race([waitForState(a, ['degraded'], 20_000), waitForState(b, ['degraded'], 20_000)]);
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const states = [await podStatus(a), await podStatus(b)];
  t.log(`etcd back: A ${states[0]!.state}; B ${states[1]!.state}`);
  t.is(states.filter((s) => s.state === 'degraded').length, 1, 'exactly one array goes on once the mediator answers');
  proxy.heal();
  await Promise.all([waitForState(a, ['in-sync'], 30_000), waitForState(b, ['in-sync'], 30_000)]);
  const [one, two] = await digests(cluster);
  t.is(one, two, 'byte-identical after the resync');
});

test.serial('SIGKILL of A while fio --verify=crc32c writes through B and a writer through A: every acknowledged write reads back from B; RTO; A rejoins, an interrupted resync resumes, both byte-identical', async (t) => {
  const cluster = await startCluster(t, { volumeSize: '256M' });
  const { a, b, proxy, dir } = cluster;
  const log = `${dir}/acked.log`;
  // fio through B, over the failover: writes every block of 32 MiB once, then verifies them all.
  const fioRun = run('fio', [
    '--name=through-b', '--ioengine=nbd', `--uri=${b.server.tcpUri('vol')}`, '--rw=randwrite', '--bs=4k', '--offset=128M', '--size=32M',
    '--iodepth=8', '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', '--refill_buffers=1', '--randrepeat=0',
  ], { timeoutMs: 120_000 });
  const writer = podIo(['acked-writer', a.server.tcpUri('vol'), '0', String(64 * MiB), log, '20']);
  const probe = podIo(['probe', b.server.tcpUri('vol'), String(200 * MiB), '6']);
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const killedMs = Date.now();
  await a.server.stop('SIGKILL');
  const [fioResult, writerResult, probeResult] = await Promise.all([fioRun, writer, probe]);
  t.is(fioResult.code, 0, `fio through B failed:\n${fioResult.stdout}\n${fioResult.stderr}`);
  t.notRegex(fioResult.stdout + fioResult.stderr, /verify.*(bad|fail)/i);
  const written = JSON.parse(writerResult.stdout) as { written: number; error: string | null };
  t.truthy(written.error, 'the writer through A stopped with A');
  const status = await waitForState(b, ['degraded'], 10_000);
  t.is(status.state, 'degraded', 'B goes on alone');
  const checked = JSON.parse((await podIo(['check', b.server.tcpUri('vol'), log])).stdout) as { checked: number; bad: number };
  t.log(`writer through A: ${written.written} writes acknowledged before the kill; ${checked.checked} distinct blocks checked on B, ${checked.bad} bad`);
  t.true(checked.checked > 50, 'enough writes were acknowledged through A to mean something');
  t.is(checked.bad, 0, 'every write acknowledged through A reads back from B');
  const probed = JSON.parse(probeResult.stdout) as { gaps: Array<[number, number]>; errors: number; writes: number };
  // RTO: the gap between acknowledged writes on B that spans the kill (0 when B never stalled).
  const spanning = probed.gaps.find(([startMs, gapMs]) => startMs <= killedMs + 5 && startMs + gapMs >= killedMs);
  const rtoMs = spanning === undefined ? 0 : spanning[0] + spanning[1] - killedMs;
  t.log(`RTO seen by a QD1 writer on B: ${Math.round(rtoMs)} ms from the SIGKILL to its next acknowledged write (gap ${Math.round(spanning?.[1] ?? 0)} ms); ${probed.writes} writes, ${probed.errors} errors`);
  t.is(probed.errors, 0, 'B held I/O during the failover instead of failing it');
  t.true(rtoMs < 5000, 'RTO under 5 s');

  // A comes back: it crashed, so its record is lost and it is resynced in full (4096 chunks);
  // the link is cut half-way, then healed: the resync resumes with what was left.
  const a2 = await startArray(t, 'a', dir, cluster.secretFile, a.replicationPort);
  cluster.a = a2;
  const resyncing = await waitForState(a2, ['resyncing'], 15_000);
  t.is(resyncing.state, 'resyncing');
  for (let i = 0; i < 100 && ((await podStatus(b)).state !== 'resyncing' || ((await podStatus(b)) as unknown as { resync: { doneChunks: number } | null }).resync?.doneChunks === 0); i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  proxy.cut();
  const [sa, sb] = await Promise.all([waitForState(a2, ['suspended', 'in-sync'], 10_000), waitForState(b, ['degraded', 'in-sync'], 10_000)]);
  t.log(`link cut during the resync: A ${sa.state} (${sa.reason}), B ${sb.state}, ${sb.changedChunks} chunk(s) left`);
  proxy.heal();
  await Promise.all([waitForState(a2, ['in-sync'], 60_000), waitForState(b, ['in-sync'], 60_000)]);
  const after = await podStatus(b);
  const skipped = (after as unknown as { lastResyncSkippedChunks: number }).lastResyncSkippedChunks;
  t.log(`resumed resync: ${after.lastResyncChunks} chunk(s) in ${after.lastResyncMs} ms; ${skipped} chunk(s) already on A (sums matched, data not sent)`);
  t.true(skipped > 0, 'chunks A already held were not sent again');
  if (sa.state === 'suspended') {
    // Nothing wrote to B between the cut and the heal, and A's record holds no chunk B finished
    // (A drops a chunk from its record before it answers for it): the resumed resync copies at
    // most what B had left.
    const resumed = after.lastResyncChunks <= sb.changedChunks;
    if (!resumed) {
      const podLines = (logs: string) => logs.split('\n').filter((line) => /"(pod |resync)/.test(line)).join('\n');
      t.log(`A's pod log:\n${podLines(a2.server.logs())}\nB's pod log:\n${podLines(b.server.logs())}`);
    }
    t.true(resumed, `the resync resumed with what was left (${sb.changedChunks} chunks) rather than copying more (${after.lastResyncChunks})`);
  }
  const [one, two] = await digests(cluster);
  t.is(one, two, 'A and B byte-identical after A rejoined');
  t.is(JSON.parse((await podIo(['check', a2.server.tcpUri('vol'), log])).stdout).bad, 0, 'A holds every acknowledged write too');
});
