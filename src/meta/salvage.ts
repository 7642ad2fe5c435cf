/**
 * Salvage of a damaged metadata store: which values of each sublevel can be proven current, and
 * which key ranges of each sublevel may have lost their current value. Used by
 * `pstorage inspect repair` (volume/repair.ts); reads files only, writes nothing.
 *
 * The rule: a key's value is the newest intact version found (a deletion removes it), unless the
 * key falls in the key range of a damaged table block and that version is not certainly newer
 * than the damaged block (`newerSource`): the block may have held a newer version or a deletion,
 * so an older surviving version would bring back stale metadata (an old map page reads an old
 * block's content as the current one). Such keys are dropped and counted. A damaged write-ahead
 * log loses whole batches whose keys cannot be known: that is reported as `logDamaged`, and the
 * caller must treat every sublevel as possibly stale.
 */
import { type LostKeyRange, type SalvagedDirectory, inLostRange, newerSource, readLevelDbDirectory } from './leveldb-files.js';
import { SUBLEVELS, type Sublevel } from './meta-store.js';

export interface SublevelSalvage {
  /** Current values by key (hex of the engine key). */
  values: Map<string, { key: Buffer; value: Buffer }>;
  /** Ranges of engine keys (sublevel prefix removed) that may have lost their current value. */
  lost: LostKeyRange[];
}

export interface Salvage {
  sublevels: Map<Sublevel, SublevelSalvage>;
  /** Keys dropped because a damaged block may have held a newer version of them. */
  suspectKeys: number;
  /** Damaged table blocks, for the report. */
  damagedBlocks: string[];
  logDamaged: string[];
  manifestDamage: string[];
  files: SalvagedDirectory['files'];
  /** Intact entries found in all files (every version). */
  versions: number;
}

const PREFIXES = SUBLEVELS.map((name) => ({ name, start: Buffer.from(`!${name}!`, 'latin1'), end: Buffer.from(`!${name}"`, 'latin1') }));

export function salvageMetadata(directory: string): Salvage {
  const found = readLevelDbDirectory(directory);
  const newest = new Map<string, (typeof found.versions)[number]>();
  for (const version of found.versions) {
    const id = version.key.toString('hex');
    const current = newest.get(id);
    if (current === undefined || version.sequence > current.sequence) newest.set(id, version);
  }
  let suspectKeys = 0;
  for (const [id, version] of newest) {
    if (found.lost.some((range) => inLostRange(version.key, range) && !newerSource(version.source, range.source))) {
      newest.delete(id);
      suspectKeys += 1;
    }
  }
  const sublevels = new Map<Sublevel, SublevelSalvage>(SUBLEVELS.map((name) => [name, { values: new Map(), lost: [] }]));
  for (const version of newest.values()) {
    if (version.type !== 1) continue;
    const prefix = PREFIXES.find((candidate) => startsWith(version.key, candidate.start));
    if (prefix === undefined) continue; // outside every sublevel (the sync barrier key)
    const key = version.key.subarray(prefix.start.length);
    sublevels.get(prefix.name)!.values.set(key.toString('hex'), { key, value: version.value });
  }
  for (const range of found.lost) {
    for (const prefix of PREFIXES) {
      const local = localRange(range, prefix.start, prefix.end);
      if (local !== null) sublevels.get(prefix.name)!.lost.push(local);
    }
  }
  return {
    sublevels,
    suspectKeys,
    damagedBlocks: found.lost.map((range) => range.where),
    logDamaged: found.logDamage.map((item) => `${item.file} offset ${item.offsetBytes}: ${item.reason}`),
    manifestDamage: found.manifestDamage,
    files: found.files,
    versions: found.versions.length,
  };
}

function startsWith(key: Buffer, prefix: Buffer): boolean {
  return key.length >= prefix.length && key.subarray(0, prefix.length).equals(prefix);
}

/**
 * The part of a lost range that falls in one sublevel's keys [start, end), with the sublevel
 * prefix removed from its bounds, or null when they do not meet.
 */
export function localRange(range: LostKeyRange, start: Buffer, end: Buffer): LostKeyRange | null {
  if (range.gt !== undefined && Buffer.compare(range.gt, end) >= 0) return null;
  if (range.lte !== undefined && Buffer.compare(range.lte, start) < 0) return null;
  const local: LostKeyRange = { where: range.where };
  if (range.gt !== undefined && Buffer.compare(range.gt, start) >= 0) local.gt = Buffer.from(range.gt.subarray(start.length));
  if (range.lte !== undefined && Buffer.compare(range.lte, end) < 0) local.lte = Buffer.from(range.lte.subarray(start.length));
  return local;
}

/** True when some lost range of the sublevel may hold `key` (an engine key). */
export function mayBeLost(salvage: SublevelSalvage, key: Buffer): boolean {
  return salvage.lost.some((range) => inLostRange(key, range));
}
