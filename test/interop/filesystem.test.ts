/**
 * A real kernel filesystem on a pstorage export. There is no nbd kernel module on these machines
 * (see TESTING.md), so the export becomes a block device through nbdfuse (a FUSE file backed by
 * libnbd) and a loop device: mkfs, mount, write files with known sha256, umount, fsck clean; then
 * restart pstorage on the same data directory, attach again, mount, and verify every checksum.
 * Done with ext4 (e2fsck -fn) and xfs (xfs_repair -n).
 *
 * Needs root, /dev/fuse and loop devices. When they are missing the test fails and says so; it
 * never skips silently.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { DEFAULT_EXPORT_BYTES, KiB, MiB, cleanupOnExit, describeRun, mustRun, requireTools, run, seededBytes, sha256, startServer, stopServer, tempDir, waitFor } from '../helpers/interop.js';
import type { PstorageProcess } from '../helpers/pstorage-process.js';

type FsType = 'ext4' | 'xfs';

// mkfs discards the whole device first (TRIM of never-written space costs almost nothing).
const MKFS: Record<FsType, string[]> = { ext4: ['mkfs.ext4', '-q'], xfs: ['mkfs.xfs', '-q', '-f'] };
const FSCK: Record<FsType, string[]> = { ext4: ['e2fsck', '-f', '-n'], xfs: ['xfs_repair', '-n'] };

function requireKernelSupport(): void {
  const problems: string[] = [];
  if (process.getuid?.() !== 0) problems.push('it must run as root (mount, losetup)');
  if (!fs.existsSync('/dev/fuse')) problems.push('/dev/fuse is missing (load the fuse module, or give the container --device /dev/fuse)');
  if (!fs.existsSync('/dev/loop-control')) problems.push('/dev/loop-control is missing (load the loop module, or give the container loop devices)');
  if (problems.length > 0) throw new Error(`filesystem interop test cannot run: ${problems.join('; ')}`);
}

/** Runs cleanup steps that may legitimately fail (nothing to undo); never throws. */
async function bestEffort(program: string, args: string[]): Promise<void> {
  try {
    await run(program, args, { timeoutMs: 20_000 });
  } catch {
    // The tool is missing; nothing more to do.
  }
}

interface AttachedDisk {
  loopDevice: string;
  /** losetup -d, fusermount3 -u, and nbdfuse must exit 0. */
  detach(): Promise<void>;
}

/** nbdfuse DIR/disk URI, then a loop device on DIR/disk. Cleanup is registered with the test. */
async function attachDisk(t: ExecutionContext, server: PstorageProcess, fuseDir: string): Promise<AttachedDisk> {
  fs.mkdirSync(fuseDir, { recursive: true });
  const pidFile = `${fuseDir}.pid`;
  fs.rmSync(pidFile, { force: true });
  const nbdfuse = spawn('nbdfuse', ['-P', pidFile, path.join(fuseDir, 'disk'), server.unixUri()], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  nbdfuse.stdout.setEncoding('utf8').on('data', (text: string) => (output += text));
  nbdfuse.stderr.setEncoding('utf8').on('data', (text: string) => (output += text));
  const exited = new Promise<number | null>((resolve) => nbdfuse.once('close', (code) => resolve(code)));
  let loopDevice: string | null = null;
  const running = () => nbdfuse.exitCode === null && nbdfuse.signalCode === null;
  const unregister = cleanupOnExit(() => {
    if (loopDevice !== null) spawnSync('losetup', ['-d', loopDevice]);
    if (running()) {
      spawnSync('fusermount3', ['-u', '-z', fuseDir]);
      nbdfuse.kill('SIGKILL');
    }
  });
  t.teardown(async () => {
    unregister();
    if (loopDevice !== null) await bestEffort('losetup', ['-d', loopDevice]);
    if (running()) {
      await bestEffort('fusermount3', ['-u', '-z', fuseDir]);
      nbdfuse.kill('SIGKILL');
    }
  });

  await waitFor(
    () => (fs.existsSync(pidFile) && fs.readFileSync(pidFile, 'utf8').trim() !== '') || nbdfuse.exitCode !== null,
    20_000,
    () => `nbdfuse did not become ready within 20 s:\n${output}`,
  );
  if (nbdfuse.exitCode !== null) throw new Error(`nbdfuse exited with code ${nbdfuse.exitCode}:\n${output}`);
  const diskFile = path.join(fuseDir, 'disk');
  const size = fs.statSync(diskFile).size;
  if (size !== DEFAULT_EXPORT_BYTES) throw new Error(`nbdfuse file is ${size} bytes, expected ${DEFAULT_EXPORT_BYTES}`);
  loopDevice = (await mustRun('losetup', ['-f', '--show', diskFile])).stdout.trim();
  if (!loopDevice.startsWith('/dev/loop')) throw new Error(`losetup printed ${JSON.stringify(loopDevice)}`);
  const device = loopDevice;

  return {
    loopDevice: device,
    detach: async () => {
      await mustRun('losetup', ['-d', device]);
      loopDevice = null;
      // The loop device lets go of the file asynchronously: retry while FUSE says it is busy.
      let unmounted = await run('fusermount3', ['-u', fuseDir]);
      for (let attempt = 0; unmounted.code !== 0 && attempt < 40; attempt++) {
        await new Promise((resolve) => setTimeout(resolve, 250));
        unmounted = await run('fusermount3', ['-u', fuseDir]);
      }
      if (unmounted.code !== 0) throw new Error(describeRun(unmounted));
      const code = await exited;
      if (code !== 0) throw new Error(`nbdfuse exited with code ${code} after fusermount3 -u:\n${output}`);
    },
  };
}

async function mount(t: ExecutionContext, device: string, mountPoint: string): Promise<() => Promise<void>> {
  fs.mkdirSync(mountPoint, { recursive: true });
  await mustRun('mount', [device, mountPoint]);
  let mounted = true;
  const unregister = cleanupOnExit(() => {
    if (mounted) spawnSync('umount', ['-l', mountPoint]);
  });
  t.teardown(async () => {
    unregister();
    if (mounted) await bestEffort('umount', ['-l', mountPoint]);
  });
  return async () => {
    await mustRun('umount', [mountPoint], { timeoutMs: 120_000 });
    mounted = false;
  };
}

/** Files of assorted sizes (empty, unaligned, multi-MiB, many small ones); returns name → sha256. */
function writeFiles(root: string, seed: number): Map<string, string> {
  const files = new Map<string, Buffer>();
  files.set('empty', Buffer.alloc(0));
  files.set('big.bin', seededBytes(24 * MiB, seed));
  files.set('odd-size.bin', seededBytes(MiB + 123, seed + 1));
  files.set('zeroes.bin', Buffer.alloc(3 * MiB + 1));
  for (let i = 0; i < 40; i++) files.set(path.join('dir', `small-${i}.txt`), Buffer.from(`file ${i} `.repeat(1 + i * 37)));
  files.set(path.join('dir', 'nested', 'deep.bin'), seededBytes(300 * KiB + 7, seed + 2));
  const sums = new Map<string, string>();
  for (const [name, data] of files) {
    fs.mkdirSync(path.dirname(path.join(root, name)), { recursive: true });
    fs.writeFileSync(path.join(root, name), data);
    sums.set(name, sha256(data));
  }
  return sums;
}

async function fsck(t: ExecutionContext, fsType: FsType, device: string, when: string): Promise<void> {
  const [program, ...args] = FSCK[fsType];
  const result = await run(program!, [...args, device], { timeoutMs: 120_000 });
  t.is(result.code, 0, `${program} ${when} found problems\n${describeRun(result)}`);
}

async function filesystemRoundTrip(t: ExecutionContext, fsType: FsType): Promise<void> {
  requireTools(['nbdfuse', 'fusermount3', 'losetup', 'mount', 'umount', MKFS[fsType][0]!, FSCK[fsType][0]!]);
  requireKernelSupport();
  const dir = tempDir(t);
  const dataDir = path.join(dir, 'data');
  const fuseDir = path.join(dir, 'fuse');
  const mountPoint = path.join(dir, 'mnt');
  const seed = Date.now() >>> 0;
  t.log(`data seed ${seed}`);

  let server = await startServer(t, { dataDir });
  let disk = await attachDisk(t, server, fuseDir);
  const [mkfs, ...mkfsArgs] = MKFS[fsType];
  await mustRun(mkfs!, [...mkfsArgs, disk.loopDevice], { timeoutMs: 120_000 });
  let unmount = await mount(t, disk.loopDevice, mountPoint);
  const sums = writeFiles(mountPoint, seed);
  await unmount();
  await fsck(t, fsType, disk.loopDevice, 'after writing');
  await disk.detach();
  await stopServer(t, server);

  // Everything below reads what the restarted server has on disk.
  server = await startServer(t, { dataDir });
  disk = await attachDisk(t, server, fuseDir);
  await fsck(t, fsType, disk.loopDevice, 'after restart');
  unmount = await mount(t, disk.loopDevice, mountPoint);
  for (const [name, sum] of sums) {
    const file = path.join(mountPoint, name);
    t.true(fs.existsSync(file), `${name} is missing after the restart`);
    if (fs.existsSync(file)) t.is(sha256(fs.readFileSync(file)), sum, `${name}: sha256 after the restart`);
  }
  t.deepEqual(fs.readdirSync(path.join(mountPoint, 'dir')).sort(), [...Array.from({ length: 40 }, (_, i) => `small-${i}.txt`), 'nested'].sort());
  await unmount();
  await disk.detach();
  await stopServer(t, server);
}

test.serial('ext4 on nbdfuse + loop: mkfs, write, e2fsck, restart pstorage, verify', (t) => filesystemRoundTrip(t, 'ext4'));
test.serial('xfs on nbdfuse + loop: mkfs, write, xfs_repair, restart pstorage, verify', (t) => filesystemRoundTrip(t, 'xfs'));
