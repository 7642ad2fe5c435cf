/**
 * Volume-map pages: `lba → chunk reference` for 1024 consecutive logical blocks (4 MiB of volume).
 *
 * A map is a layer (see snapshots.ts); each entry is one of:
 *   absent              this layer says nothing: look in the parent layer (none: a hole)
 *   chunk(id)           the block's data is chunk `id` in the chunk table
 *   pattern(word)       the block is one 8-byte word repeated (all-zero blocks are pattern 0);
 *                       stored in the entry itself, costing no NAND
 *   hole                trimmed or zeroed in this layer, hiding whatever a parent layer holds
 *   lost                `pstorage inspect repair` could not prove what this block held: reads of
 *                       it fail with EIO (never other data) until it is written or trimmed again;
 *                       it counts as mapped and hides whatever a parent layer holds
 *
 * Value format (LevelDB 'map' sublevel, key = u32 layer id + u64 page index), format 2: the three
 * columns one after the other, 1024 u8 kinds, then 1024 u32 high words, then 1024 u32 low words,
 * little-endian (the host order of the typed arrays, asserted at start-up), so encoding and
 * decoding are three memory copies. An all-absent page is deleted instead.
 */
import { fail } from '../common/assert.js';
import type { CachedPage } from './page-cache.js';

export const LBAS_PER_MAP_PAGE = 1024;
const VALUE_BYTES = LBAS_PER_MAP_PAGE * 9;
/** Bytes of a stored map page. */
export const MAP_PAGE_VALUE_BYTES = VALUE_BYTES;
const HIGH_AT = LBAS_PER_MAP_PAGE;
const LOW_AT = LBAS_PER_MAP_PAGE * 5;

export const enum EntryKind {
  Absent = 0,
  Chunk = 1,
  Pattern = 2,
  Hole = 3,
  Lost = 4,
}

export class MapPage implements CachedPage {
  referenced = false;
  version = 0;
  persistedVersion = 0;
  pins = 0;
  readonly kinds = new Uint8Array(LBAS_PER_MAP_PAGE);
  readonly high = new Uint32Array(LBAS_PER_MAP_PAGE);
  readonly low = new Uint32Array(LBAS_PER_MAP_PAGE);
  mappedCount = 0;

  get sizeBytes(): number {
    return VALUE_BYTES + 200;
  }

  static decode(bytes: Buffer | undefined): MapPage {
    const page = new MapPage();
    if (bytes === undefined) return page;
    if (!(bytes.length === VALUE_BYTES)) fail(`map page of ${bytes.length} bytes`);
    page.kinds.set(bytes.subarray(0, HIGH_AT));
    new Uint8Array(page.high.buffer).set(bytes.subarray(HIGH_AT, LOW_AT));
    new Uint8Array(page.low.buffer).set(bytes.subarray(LOW_AT, VALUE_BYTES));
    for (let i = 0; i < LBAS_PER_MAP_PAGE; i++) if (page.kinds[i] !== EntryKind.Absent) page.mappedCount += 1;
    return page;
  }

  encode(): Buffer | null {
    if (this.mappedCount === 0) return null;
    const out = Buffer.allocUnsafe(VALUE_BYTES);
    out.set(this.kinds, 0);
    out.set(new Uint8Array(this.high.buffer), HIGH_AT);
    out.set(new Uint8Array(this.low.buffer), LOW_AT);
    return out;
  }

  kind(slot: number): EntryKind {
    return this.kinds[slot]! as EntryKind;
  }

  chunkId(slot: number): number {
    return this.high[slot]! * 0x100000000 + this.low[slot]!;
  }

  /** Changes one entry. Callers go through `MapTable`, which journals the change. */
  set(slot: number, kind: EntryKind, high: number, low: number): void {
    const before = this.kinds[slot]!;
    if (before === EntryKind.Absent && kind !== EntryKind.Absent) this.mappedCount += 1;
    if (before !== EntryKind.Absent && kind === EntryKind.Absent) this.mappedCount -= 1;
    this.kinds[slot] = kind;
    this.high[slot] = high >>> 0;
    this.low[slot] = low >>> 0;
  }

  /** Every chunk id this page names. */
  chunkIdsIn(): number[] {
    const ids: number[] = [];
    for (let slot = 0; slot < LBAS_PER_MAP_PAGE; slot++) if (this.kinds[slot] === EntryKind.Chunk) ids.push(this.chunkId(slot));
    return ids;
  }
}

/** The kind column of an encoded map page (a scan of stored pages needs nothing else). */
export function encodedKinds(value: Buffer): Buffer {
  if (!(value.length === VALUE_BYTES)) fail(`map page of ${value.length} bytes`);
  return value.subarray(0, HIGH_AT);
}
