/**
 * `pstorage key rotate`: rewraps an encrypted array's data-encryption key under a new key file,
 * offline (the server stopped: LevelDB's lock says so). The DEK does not change (array-key.ts),
 * so no data is re-encrypted and the command takes milliseconds whatever the array holds.
 *
 * Order, and what a crash at each point leaves:
 * 1. The old key file is checked against LevelDB's format record (the authority), before anything
 *    is written; a wrong one stops here.
 * 2. The catalog copy is rewritten with the new record and the old one beside it
 *    (`previousEncryption`), so that the check flash-array.ts makes against the copy before it
 *    opens LevelDB accepts either key while the rotation is in flight.
 * 3. One LevelDB batch (sync) replaces the format record: this is the commit point.
 * 4. The catalog copy is rewritten with the new record alone.
 * After a crash before 3 the old key opens the array; after 3 the new one does. Running the same
 * command again finishes an interrupted rotation (a record the new key already opens is only
 * copied to the catalog).
 */
import path from 'node:path';
import { StorageError } from '../common/errors.js';
import { LevelMetaStore } from '../meta/level-store.js';
import { unwrapDek, wrapDek } from './array-key.js';
import { readCatalogCopy, writeCatalogCopy, type FormatRecord } from './catalog-copy.js';
import { FORMAT_KEY } from './flash-array.js';

export async function rotateArrayKey(dataDir: string, oldKeyBytes: Buffer, newKeyBytes: Buffer): Promise<{ rotated: boolean }> {
  const meta = await LevelMetaStore.open(path.join(dataDir, 'meta'));
  try {
    const bytes = await meta.get('super', FORMAT_KEY);
    if (bytes === undefined) throw StorageError.notFound(`no pstorage array in ${dataDir}`);
    const format = JSON.parse(bytes.toString()) as FormatRecord;
    if (format.encryption === undefined) throw StorageError.invalidArgument(`the array in ${dataDir} is not encrypted: there is no key to rotate`);
    let dek: Buffer;
    try {
      dek = unwrapDek(format.encryption, oldKeyBytes, dataDir);
    } catch (error) {
      // An interrupted rotation already committed: the new key opens it; bring the copy in step.
      unwrapDek(format.encryption, newKeyBytes, dataDir);
      updateCopy(dataDir, format, undefined);
      return { rotated: false };
    }
    const rotated: FormatRecord = { ...format, encryption: wrapDek(dek, newKeyBytes) };
    updateCopy(dataDir, rotated, format.encryption);
    await meta.batch([{ type: 'put', sublevel: 'super', key: FORMAT_KEY, value: Buffer.from(JSON.stringify(rotated)) }], { sync: true });
    updateCopy(dataDir, rotated, undefined);
    return { rotated: true };
  } finally {
    await meta.close();
  }
}

/** Replaces the catalog copy's format record (the rest of the copy stays); nothing when there is no copy. */
function updateCopy(dataDir: string, format: FormatRecord, previous: FormatRecord['encryption']): void {
  const copy = readCatalogCopy(dataDir);
  if (copy === null) return;
  const { copyVersion: _version, writtenAt: _at, ...rest } = copy;
  writeCatalogCopy(dataDir, { ...rest, format: previous === undefined ? format : { ...format, previousEncryption: previous } });
}
