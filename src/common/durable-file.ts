/**
 * Small files a data directory keeps beside LevelDB (the catalog copy, the replication record):
 * replaced atomically and durably, so a crash leaves the old contents or the new, never a mix.
 * The new contents go to `NAME.tmp` (mode 0600), which is fsynced and renamed over `NAME`; then
 * the directory is fsynced, so the rename itself survives a power cut.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fromSystemError } from './errors.js';

/** Replaces `dataDir/name` with `contents`; a failure is a StorageError saying `writing WHAT`. */
export function replaceFileDurably(dataDir: string, name: string, contents: string | Uint8Array, what: string): void {
  const target = path.join(dataDir, name);
  const temporary = `${target}.tmp`;
  try {
    const fd = fs.openSync(temporary, 'w', 0o600);
    try {
      if (typeof contents === 'string') fs.writeSync(fd, contents);
      else fs.writeSync(fd, contents);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temporary, target);
    const directory = fs.openSync(dataDir, 'r');
    try {
      fs.fsyncSync(directory);
    } finally {
      fs.closeSync(directory);
    }
  } catch (error) {
    throw fromSystemError(error, `writing ${what}`);
  }
}
