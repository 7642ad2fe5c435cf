/**
 * What the crash workload writes, and how a sector read back after a crash is classified.
 *
 * Every 512-byte sector the workload writes names itself: a data sector starts with a header
 * (magic "PSCR", seed, lba, sector index, version) followed by bytes derived from that header with
 * SHAKE-256; a pattern block is one 8-byte word (0xA5 tag | lba, version) repeated, which a
 * pattern-eliminating engine keeps in its map instead of on NAND; a shared block (magic "PSSH",
 * seed, pool key, sector index) comes from a small pool used by the whole run, so that a
 * deduplicating engine shares its chunk between logical blocks. So any sector read back can be
 * told apart as: zeroes, exactly one known content, another block's data, or garbage. This file
 * must stay identical in behaviour to data_sector/shared_sector/pattern_block in crash_workload.py
 * (the unit test crash-checker.test.ts checks the two against each other).
 *
 * A sector's content is summarised as a number, its "descriptor": 0 for zeroes,
 * version * 4 + 1 for a data sector, version * 4 + 2 for a pattern sector, key * 4 + 3 for a
 * shared sector. A block's state is the list of its 8 sector descriptors.
 */
import { createHash } from 'node:crypto';

export const SECTOR_BYTES = 512;
export const LBA_BYTES = 4096;
export const SECTORS_PER_LBA = LBA_BYTES / SECTOR_BYTES;
export const VERSION_CYCLE_SHIFT = 20;
const DATA_MAGIC = Buffer.from('PSCR');
const SHARED_MAGIC = Buffer.from('PSSH');
const DATA_HEADER_BYTES = 20;
const PATTERN_TAG = 0xa5000000;

export const ZERO_SECTOR = 0;
export const dataDescriptor = (version: number): number => version * 4 + 1;
export const patternDescriptor = (version: number): number => version * 4 + 2;
export const sharedDescriptor = (key: number): number => key * 4 + 3;

export function versionOf(cycle: number, opId: number): number {
  return cycle * 2 ** VERSION_CYCLE_SHIFT + opId;
}

/** "c3#120" for version 3·2^20 + 120: the cycle and the journal id of the request that wrote it. */
export function formatVersion(version: number): string {
  return `c${Math.floor(version / 2 ** VERSION_CYCLE_SHIFT)}#${version % 2 ** VERSION_CYCLE_SHIFT}`;
}

export function formatDescriptor(descriptor: number): string {
  if (descriptor === ZERO_SECTOR) return 'zero';
  const value = Math.floor(descriptor / 4);
  if (descriptor % 4 === 3) return `shared k${value}`;
  return `${descriptor % 4 === 1 ? 'data' : 'pattern'} ${formatVersion(value)}`;
}

/** Compact text for a block state: runs of equal sectors, e.g. "data c3#12 x5, zero x3". */
export function formatState(state: readonly number[]): string {
  const runs: string[] = [];
  for (let i = 0; i < state.length; ) {
    let j = i;
    while (j < state.length && state[j] === state[i]) j++;
    runs.push(`${formatDescriptor(state[i]!)}${j - i > 1 ? ` x${j - i}` : ''}`);
    i = j;
  }
  return runs.join(', ');
}

export function dataSector(seed: number, lba: number, sector: number, version: number): Buffer {
  return derivedSector(DATA_MAGIC, seed, lba, sector, version, version % 3 === 0);
}

export function sharedSector(seed: number, key: number, sector: number): Buffer {
  return derivedSector(SHARED_MAGIC, seed, key, sector, 0, key % 2 === 1);
}

function derivedSector(magic: Buffer, seed: number, name: number, sector: number, version: number, compressible: boolean): Buffer {
  const out = Buffer.alloc(SECTOR_BYTES);
  magic.copy(out, 0);
  out.writeUInt32BE(seed, 4);
  out.writeUInt32BE(name, 8);
  out.writeUInt32BE(sector, 12);
  out.writeUInt32BE(version, 16);
  const header = out.subarray(0, DATA_HEADER_BYTES);
  const bodyBytes = SECTOR_BYTES - DATA_HEADER_BYTES;
  if (compressible) {
    const stretch = createHash('shake256', { outputLength: 41 }).update(header).digest();
    for (let at = DATA_HEADER_BYTES; at < SECTOR_BYTES; at += stretch.length) stretch.copy(out, at, 0, Math.min(stretch.length, SECTOR_BYTES - at));
  } else {
    createHash('shake256', { outputLength: bodyBytes }).update(header).digest().copy(out, DATA_HEADER_BYTES);
  }
  return out;
}

export function patternSector(lba: number, version: number): Buffer {
  const word = Buffer.alloc(8);
  word.writeUInt32BE((PATTERN_TAG | lba) >>> 0, 0);
  word.writeUInt32BE(version, 4);
  return Buffer.alloc(SECTOR_BYTES, word);
}

export type SectorReading =
  | { type: 'ok'; descriptor: number }
  | { type: 'foreign'; lba: number; sector: number; descriptor: number }
  | { type: 'garbage'; why: string };

/** Classifies one sector read from (`lba`, `sector`) of a run with `seed`. */
export function classifySector(bytes: Buffer, seed: number, lba: number, sector: number): SectorReading {
  if (isAllZero(bytes)) return { type: 'ok', descriptor: ZERO_SECTOR };
  if (bytes.subarray(0, 4).equals(DATA_MAGIC)) {
    const [hSeed, hLba, hSector, version] = [4, 8, 12, 16].map((at) => bytes.readUInt32BE(at)) as [number, number, number, number];
    if (!dataSector(hSeed, hLba, hSector, version).equals(bytes)) return { type: 'garbage', why: `a data header for lba ${hLba} sector ${hSector} ${formatVersion(version)} with a damaged body (torn inside the sector)` };
    if (hSeed !== seed) return { type: 'garbage', why: `a data sector of another run (seed ${hSeed})` };
    if (hLba !== lba || hSector !== sector) return { type: 'foreign', lba: hLba, sector: hSector, descriptor: dataDescriptor(version) };
    return { type: 'ok', descriptor: dataDescriptor(version) };
  }
  if (bytes.subarray(0, 4).equals(SHARED_MAGIC)) {
    const [hSeed, key, hSector] = [4, 8, 12].map((at) => bytes.readUInt32BE(at)) as [number, number, number];
    if (!sharedSector(hSeed, key, hSector).equals(bytes)) return { type: 'garbage', why: `a shared-block header for key ${key} sector ${hSector} with a damaged body (torn inside the sector)` };
    if (hSeed !== seed) return { type: 'garbage', why: `a shared sector of another run (seed ${hSeed})` };
    if (hSector !== sector) return { type: 'foreign', lba, sector: hSector, descriptor: sharedDescriptor(key) };
    return { type: 'ok', descriptor: sharedDescriptor(key) };
  }
  const high = bytes.readUInt32BE(0);
  if (high >>> 24 === PATTERN_TAG >>> 24) {
    const patternLba = high & 0xffffff;
    const version = bytes.readUInt32BE(4);
    if (!patternSector(patternLba, version).equals(bytes)) return { type: 'garbage', why: `a pattern word for lba ${patternLba} ${formatVersion(version)} that does not fill the sector` };
    if (patternLba !== lba) return { type: 'foreign', lba: patternLba, sector, descriptor: patternDescriptor(version) };
    return { type: 'ok', descriptor: patternDescriptor(version) };
  }
  return { type: 'garbage', why: `unrecognised bytes ${bytes.subarray(0, 16).toString('hex')}…` };
}

function isAllZero(bytes: Buffer): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}
