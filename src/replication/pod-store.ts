/**
 * Where an array keeps its replication settings: DATA_DIR/replication.json, holding the array's
 * id (random, made once) and the configuration of every pod it belongs to (pod.ts PodConfig).
 *
 * The file is small and changes only on pod create/delete, volume create, state changes that
 * matter for safety (out of date, survivor), and each asynchronous replication run (its base). A save writes a temporary file, fsyncs it and renames
 * it over the old one, then fsyncs the directory, so a crash leaves the old or the new file whole.
 * (It is a plain file beside the LevelDB directory rather than keys in it: the control plane of
 * replication never shares a batch with the data path, and a file is readable by an operator.)
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { replaceFileDurably } from '../common/durable-file.js';
import { fromSystemError, StorageError } from '../common/errors.js';
import type { PodConfig } from './pod.js';

export const REPLICATION_FILE = 'replication.json';

export interface ReplicationRecord {
  arrayId: string;
  pods: PodConfig[];
  /** Asynchronous replication: "VOLUME->HOST:PORT" to the last snapshot that target confirmed. */
  async?: Record<string, string>;
}

export function loadReplicationRecord(dataDir: string): ReplicationRecord {
  const file = path.join(dataDir, REPLICATION_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { arrayId: randomUUID(), pods: [] };
    throw fromSystemError(error, `reading ${file}`);
  }
  try {
    const record = JSON.parse(text) as ReplicationRecord;
    if (typeof record.arrayId !== 'string' || !Array.isArray(record.pods)) throw new Error('missing arrayId or pods');
    return record;
  } catch (error) {
    throw StorageError.corrupt(`${file} is damaged (${(error as Error).message}); restore it from a backup, or move it away to leave all pods`, error);
  }
}

export function saveReplicationRecord(dataDir: string, record: ReplicationRecord): void {
  replaceFileDurably(dataDir, REPLICATION_FILE, JSON.stringify(record, null, 2) + '\n', path.join(dataDir, REPLICATION_FILE));
}
