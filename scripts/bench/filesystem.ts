/**
 * Filesystem end to end (issue item 2): a kernel filesystem on each NBD export, without an nbd
 * kernel module. The stack per server, bottom up:
 *
 *   NBD server <- nbdfuse (FUSE file DIR/fuse/disk) <- loop device (direct I/O) <- ext4 <- fio
 *
 * The loop device uses direct I/O so the page cache sits only in ext4 and not twice; fio uses
 * libaio with O_DIRECT on a file in the mount. ext4 is made over the first `filesystemBytes` of
 * the export with its inode tables and journal written at mkfs time (no lazy init running in the
 * background during the measurements) and without discard. Teardown unmounts, checks the
 * filesystem with `e2fsck -fn` (a failed check is a problem in the report), detaches the loop
 * device and unmounts the FUSE file.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { isRunning, runChecked, runCommand, sleep, stopChild } from './processes.js';
import type { RunningServer } from './servers.js';

export interface FilesystemStack {
  server: RunningServer;
  fuseDir: string;
  mountDir: string;
  loopDevice: string;
  nbdfuse: ChildProcess;
  testFile: string;
  setupSeconds: number;
}

export interface TeardownResult {
  fsckClean: boolean;
  fsckOutput: string;
}

async function waitForFile(filePath: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (fs.existsSync(filePath) && fs.statSync(filePath).size > 0) return;
    if (!isRunning(child)) throw new Error(`nbdfuse exited while starting (code ${child.exitCode})`);
    await sleep(50);
  }
  throw new Error(`nbdfuse did not start within ${timeoutMs / 1000} s`);
}

/**
 * Builds the stack for one server. `onUndo` receives each undo step as soon as the step it undoes
 * has succeeded, so a failure half-way still leaves nothing behind.
 */
export async function setupFilesystem(server: RunningServer, baseDir: string, filesystemBytes: number, onUndo: (label: string, undo: () => Promise<void>) => void): Promise<FilesystemStack> {
  const startedAt = Date.now();
  const dir = path.join(baseDir, `fs-${server.id}`);
  const fuseDir = path.join(dir, 'fuse');
  const mountDir = path.join(dir, 'mnt');
  fs.mkdirSync(fuseDir, { recursive: true });
  fs.mkdirSync(mountDir, { recursive: true });
  const pidFile = path.join(dir, 'nbdfuse.pid');
  const nbdfuse = spawn('nbdfuse', ['-P', pidFile, path.join(fuseDir, 'disk'), server.uri], { stdio: ['ignore', 'ignore', 'pipe'] });
  onUndo(`nbdfuse for ${server.id}`, async () => {
    await runCommand('fusermount3', ['-u', fuseDir], { timeoutMs: 30_000 });
    await stopChild(nbdfuse, 10_000);
  });
  await waitForFile(pidFile, nbdfuse, 30_000);
  const loopDevice = (await runChecked('losetup', ['-f', '--show', '--direct-io=on', path.join(fuseDir, 'disk')])).trim();
  onUndo(`loop device ${loopDevice}`, async () => void (await runChecked('losetup', ['-d', loopDevice])));
  await runChecked('mkfs.ext4', ['-F', '-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0,nodiscard', loopDevice, `${filesystemBytes / 1024}k`], 600_000);
  await runChecked('mount', ['-o', 'noatime', loopDevice, mountDir]);
  onUndo(`mount ${mountDir}`, () => unmount(mountDir));
  return { server, fuseDir, mountDir, loopDevice, nbdfuse, testFile: path.join(mountDir, 'fio-test.dat'), setupSeconds: (Date.now() - startedAt) / 1000 };
}

/** umount, retrying while something still holds the mount (a just-killed fio, say). */
async function unmount(mountDir: string): Promise<void> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const result = await runCommand('umount', [mountDir], { timeoutMs: 60_000 });
    if (result.code === 0 || /not mounted/.test(result.stderr)) return;
    await sleep(250);
  }
  throw new Error(`could not unmount ${mountDir}`);
}

/** Unmounts and checks the filesystem; the caller's undo steps detach the rest. */
export async function unmountAndCheck(stack: FilesystemStack): Promise<TeardownResult> {
  await unmount(stack.mountDir);
  const fsck = await runCommand('e2fsck', ['-fn', stack.loopDevice], { timeoutMs: 600_000 });
  return { fsckClean: fsck.code === 0, fsckOutput: (fsck.stdout + fsck.stderr).trim().split('\n').slice(-3).join(' | ') };
}
