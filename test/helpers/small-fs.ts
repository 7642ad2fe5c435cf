/**
 * Small file systems that a test can fill up: a tmpfs, or an ext4 image on a loop device (a real
 * block file system: delayed allocation, a journal, 4 KiB blocks), mounted under a fresh temporary
 * directory. Mounting needs root. The mount is undone at teardown, even when the test fails, and
 * also if the worker process exits first (`cleanupOnExit`), so no mount outlives its test.
 *
 * `fill` takes all the free space but `leaveBytes` with a filler file of the test's own, which the
 * test deletes to give the space back; `space` reads the free space as `df` does.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { cleanupOnExit } from './interop.js';
import { makeTempDir } from './pstorage-process.js';

export interface SmallFs {
  /** Where it is mounted. */
  mountPoint: string;
  /** Bytes free for an unprivileged writer (statfs f_bavail; ext4 is made without a root reserve). */
  space(): { totalBytes: number; availableBytes: number };
  /** Fills the file system with `name` (a file in the mount) until `leaveBytes` at most are free. */
  fill(name: string, leaveBytes?: number): number;
}

export function mountSmallFs(t: ExecutionContext, kind: 'tmpfs' | 'ext4', sizeBytes: number): SmallFs {
  if (process.getuid?.() !== 0) throw new Error(`this test mounts a ${kind} file system and must run as root`);
  const base = makeTempDir('pstorage-smallfs-');
  const mountPoint = path.join(base, 'mnt');
  fs.mkdirSync(mountPoint);
  const image = path.join(base, 'fs.img');
  if (kind === 'tmpfs') {
    mustSucceed('mount', ['-t', 'tmpfs', '-o', `size=${sizeBytes}`, 'tmpfs', mountPoint]);
  } else {
    fs.writeFileSync(image, '');
    fs.truncateSync(image, sizeBytes);
    // No root reserve (-m 0): the free space the array sees is the free space there is.
    mustSucceed('mkfs.ext4', ['-q', '-F', '-m', '0', '-b', '4096', image]);
    mustSucceed('mount', ['-o', 'loop', image, mountPoint]);
  }
  let mounted = true;
  const unmount = (): void => {
    if (!mounted) return;
    // A process killed just before may still hold files open for a moment: retry, then lazily.
    for (let attempt = 0; attempt < 20 && spawnSync('umount', [mountPoint]).status !== 0; attempt++) spawnSync('sleep', ['0.1']);
    if (spawnSync('mountpoint', ['-q', mountPoint]).status === 0) spawnSync('umount', ['-l', mountPoint]);
    mounted = false;
    fs.rmSync(base, { recursive: true, force: true });
  };
  const unregister = cleanupOnExit(unmount);
  t.teardown(() => {
    unregister();
    unmount();
  });
  const space = (): { totalBytes: number; availableBytes: number } => {
    const stats = fs.statfsSync(mountPoint);
    return { totalBytes: stats.blocks * stats.bsize, availableBytes: stats.bavail * stats.bsize };
  };
  const fill = (name: string, leaveBytes = 0): number => {
    const chunk = Buffer.alloc(1024 * 1024, 0x5a);
    const fd = fs.openSync(path.join(mountPoint, name), 'a');
    let written = 0;
    try {
      for (;;) {
        const room = space().availableBytes - leaveBytes;
        if (room <= 0) break;
        written += fs.writeSync(fd, chunk, 0, Math.min(chunk.length, room));
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
    } finally {
      fs.closeSync(fd);
    }
    return written;
  };
  return { mountPoint, space, fill };
}

function mustSucceed(program: string, args: string[]): void {
  const result = spawnSync(program, args, { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`${program} ${args.join(' ')} failed (${result.status ?? result.signal}): ${result.stderr || result.error?.message}`);
}
