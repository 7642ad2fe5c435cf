/**
 * Volume-map pages: `lba → chunk reference` for 1024 consecutive logical blocks (4 MiB of volume).
 *
 * A map is a layer (see snapshots.ts); each entry is one of:
 *   absent              this layer says nothing: look in the parent layer (none: a hole)
 *   chunk(id)           the block's data is chunk `id` in the chunk table
 *   pattern(word)       the block is one 8-byte word repeated (all-zero blocks are pattern 0);
 *                       stored in the entry itself, costing no NAND
 *   hole                trimmed or zeroed in this layer, hiding whatever a parent layer holds
 *
 * Value format (LevelDB 'map' sublevel, key = u32 layer id + u64 page index): 1024 entries of
 * 9 bytes (u8 kind, u32 high, u32 low), big-endian. An all-absent page is deleted instead.
 */
import { assert } from '../common/assert.js';
import type { CachedPage } from './page-cache.js';

export const LBAS_PER_MAP_PAGE = 1024;
const ENTRY_BYTES = 9;

export const enum EntryKind {
  Absent = 0,
  Chunk = 1,
  Pattern = 2,
  Hole = 3,
}

export class MapPage implements CachedPage {
  version = 0;
  persistedVersion = 0;
  pins = 0;
  readonly kinds = new Uint8Array(LBAS_PER_MAP_PAGE);
  readonly high = new Uint32Array(LBAS_PER_MAP_PAGE);
  readonly low = new Uint32Array(LBAS_PER_MAP_PAGE);
  mappedCount = 0;

  get sizeBytes(): number {
    return LBAS_PER_MAP_PAGE * ENTRY_BYTES + 200;
  }

  static decode(bytes: Buffer | undefined): MapPage {
    const page = new MapPage();
    if (bytes === undefined) return page;
    assert(bytes.length === LBAS_PER_MAP_PAGE * ENTRY_BYTES, `map page of ${bytes.length} bytes`);
    for (let i = 0; i < LBAS_PER_MAP_PAGE; i++) {
      const at = i * ENTRY_BYTES;
      page.kinds[i] = bytes[at]!;
      page.high[i] = bytes.readUInt32BE(at + 1);
      page.low[i] = bytes.readUInt32BE(at + 5);
      if (page.kinds[i] !== EntryKind.Absent) page.mappedCount += 1;
    }
    return page;
  }

  encode(): Buffer | null {
    if (this.mappedCount === 0) return null;
    const out = Buffer.alloc(LBAS_PER_MAP_PAGE * ENTRY_BYTES);
    for (let i = 0; i < LBAS_PER_MAP_PAGE; i++) {
      const at = i * ENTRY_BYTES;
      out[at] = this.kinds[i]!;
      out.writeUInt32BE(this.high[i]!, at + 1);
      out.writeUInt32BE(this.low[i]!, at + 5);
    }
    return out;
  }

  kind(slot: number): EntryKind {
    return this.kinds[slot]! as EntryKind;
  }

  chunkId(slot: number): number {
    return this.high[slot]! * 0x100000000 + this.low[slot]!;
  }

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

  setChunk(slot: number, chunkId: number): void {
    this.set(slot, EntryKind.Chunk, Math.floor(chunkId / 0x100000000), chunkId >>> 0);
  }
}
