/**
 * Space on the host file system: how much there is (statfs of the data directory), and a reserve
 * set aside for the metadata.
 *
 * The reserve is one file in the data directory (`space-reserve`) whose blocks are really taken (a
 * sparse or merely truncated file would hold nothing back): allocated by util-linux `fallocate`
 * (Node has no fallocate; the allocation writes nothing, so a 64 MiB reserve costs no disk I/O),
 * or, where that program or the file system's support is missing, written out with zeros.
 * It exists to be given up: when the file system fills, the array deletes it, and LevelDB, whose
 * background work (writing its memtable out, compacting) and reopening need room, finds some. The
 * array takes it back (`hold`) before it accepts new data again, so the next time the file system
 * fills the reserve is there to give. Its size is a share of the file system (`reserveBytesFor`).
 *
 * On crash: the file is whatever the last `hold` left (possibly short, or absent after a
 * release); `hold` at the next open writes it out to the size wanted. Nothing reads its contents.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { open, rm, stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import { StorageError, fromSystemError } from '../common/errors.js';

export const RESERVE_FILE_NAME = 'space-reserve';
const MiB = 1024 * 1024;
const RESERVE_SHARE = 0.05;
const RESERVE_MIN_BYTES = 8 * MiB;
const RESERVE_MAX_BYTES = 64 * MiB;
/** Zeros written per I/O when the reserve is taken. */
const WRITE_CHUNK_BYTES = MiB;

/** The host file system's size and the space an unprivileged writer may still take (f_bavail). */
export interface FileSystemSpace {
  totalBytes: number;
  availableBytes: number;
}

/** statfs of `directory`'s file system. */
export async function fileSystemSpace(directory: string): Promise<FileSystemSpace> {
  try {
    const stats = await statfs(directory);
    return { totalBytes: stats.blocks * stats.bsize, availableBytes: stats.bavail * stats.bsize };
  } catch (error) {
    throw fromSystemError(error, `reading the free space of ${directory}`);
  }
}

/** The reserve for a file system of `totalBytes`: 5 %, at least 8 MiB and at most 64 MiB. */
export function reserveBytesFor(totalBytes: number): number {
  return Math.min(RESERVE_MAX_BYTES, Math.max(RESERVE_MIN_BYTES, Math.round((totalBytes * RESERVE_SHARE) / MiB) * MiB));
}

export class SpaceReserve {
  /** Bytes the reserve file holds now (0 after a release, or when it could not be taken). */
  heldBytes = 0;
  readonly filePath: string;
  /** `hold` and `release` run one after the other, in call order. */
  private tail: Promise<unknown> = Promise.resolve();

  constructor(directory: string) {
    this.filePath = path.join(directory, RESERVE_FILE_NAME);
  }

  /** Looks at what the file holds already (from an earlier run): sets and returns `heldBytes`. */
  async load(): Promise<number> {
    this.heldBytes = await allocatedFileBytes(this.filePath);
    return this.heldBytes;
  }

  /**
   * Takes `bytes` for the reserve, writing the file out to that size; true when it is held. On
   * ENOSPC the file is deleted again (half a reserve would only fill the disk further) and the
   * answer is false; any other failure throws.
   */
  hold(bytes: number): Promise<boolean> {
    const run = this.tail.then(() => this.doHold(bytes));
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Gives the reserve back to the file system (deletes the file). */
  release(): Promise<void> {
    const run = this.tail.then(() => this.doRelease());
    this.tail = run.catch(() => undefined);
    return run;
  }

  private async doHold(bytes: number): Promise<boolean> {
    const held = await allocatedFileBytes(this.filePath);
    if (held >= bytes) {
      this.heldBytes = held;
      return true;
    }
    try {
      if (!(await fallocate(this.filePath, bytes))) await writeZeros(this.filePath, bytes);
    } catch (error) {
      const failure = fromSystemError(error, `setting aside ${bytes} bytes in ${this.filePath}`);
      await this.doRelease();
      if (failure.code === 'NO_SPACE') return false;
      throw failure;
    }
    this.heldBytes = bytes;
    return true;
  }

  private async doRelease(): Promise<void> {
    await rm(this.filePath, { force: true });
    this.heldBytes = 0;
  }
}

/**
 * Allocates the file's blocks with util-linux `fallocate`: true when done, false when the program
 * or the file system cannot (then zeros are written instead); throws NO_SPACE on ENOSPC.
 */
function fallocate(filePath: string, bytes: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    execFile('fallocate', ['--length', String(bytes), filePath], { timeout: 30_000 }, (error, _stdout, stderr) => {
      if (error === null) resolve(true);
      else if (/No space left on device|Disk quota exceeded|File too large/.test(stderr)) reject(StorageError.hostFull(`fallocate of ${filePath}: ${stderr.trim()}`, error));
      else resolve(false);
    });
  });
}

async function writeZeros(filePath: string, bytes: number): Promise<void> {
  const handle = await open(filePath, fs.constants.O_WRONLY | fs.constants.O_CREAT);
  try {
    const zeros = Buffer.alloc(Math.min(WRITE_CHUNK_BYTES, bytes));
    for (let at = 0; at < bytes; ) at += (await handle.write(zeros, 0, Math.min(zeros.length, bytes - at), at)).bytesWritten;
    await handle.truncate(bytes);
  } finally {
    await handle.close();
  }
}

/** Disk space a file takes (0 when there is none). */
async function allocatedFileBytes(filePath: string): Promise<number> {
  try {
    const stats = await stat(filePath);
    return Math.min(stats.size, stats.blocks * 512);
  } catch {
    return 0;
  }
}
