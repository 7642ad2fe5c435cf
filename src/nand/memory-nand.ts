/**
 * NAND in memory, with a precise crash model, for tests and simulations.
 *
 * What it owns: the current pages of every erase block (programmed pages only; a missing page
 * reads as zeros), and a durable copy: the pages, erase counts, write pointers and bad flags of
 * every block as of the last completed `sync()`. Programmed page buffers are never changed after
 * they are stored, so the durable copy shares them with the current state and a sync costs one
 * array copy per erase block touched since the previous sync.
 *
 * Crash model (`crash()`): the device is abandoned (later calls on it fail with `SHUTTING_DOWN`)
 * and a fresh `MemoryNand` is returned that holds the durable state:
 *   - every program and erase not covered by a completed sync is lost; an unsynced erase is undone,
 *     so the block's old pages come back;
 *   - erase counts, write pointers and bad flags are those of the last sync;
 *   - with `tornLastPage`, the last page of the most recent unsynced program survives torn: its
 *     first `tearBytes` bytes hold the new data and the rest zeros. `tearBytes` is half a page, or,
 *     when `random` is given, a random whole number of 512-byte sectors strictly inside the page.
 *     That page lies at or above its block's (durable) write pointer, where the FTL must treat
 *     content as garbage. If the block had been erased since the sync, before that program, the
 *     erase is taken to have reached the media: the block reads as zeros apart from the torn page,
 *     although its write pointer and erase count still say what they said at the sync. This is the
 *     "record says written, block is in fact erased" case that a file image can also produce.
 * Nothing else is torn and no bits flip here; `FaultyNand` adds device failures and bit flips.
 *
 * Host space (`hostSpacePages`): a file image lives on a file system that can fill up. Set it, and
 * the device holds at most that many programmed pages: a program that needs more fails with
 * `NO_SPACE` and writes nothing (a host error, not a NAND fault: see nand-device.ts); an erase
 * gives its pages back. Tests raise it again to model space coming back.
 */
import { assert } from '../common/assert.js';
import { StorageError } from '../common/errors.js';
import type { NandBlockInfo, NandGeometry } from './nand-device.js';
import { NandDeviceBase, type NandBlockStates, freshBlockStates } from './nand-device-base.js';

export interface CrashOptions {
  /** Keep the last unsynced programmed page, half written. */
  tornLastPage?: boolean;
  /** Source of randomness in [0, 1) for where the torn page tears; half a page without it. */
  random?: () => number;
}

/** Programmed pages of one erase block, by page index; `undefined` reads as zeros. */
type BlockPages = Array<Buffer | undefined>;

interface DurableImage {
  states: NandBlockStates;
  pages: Array<BlockPages | undefined>;
}

interface UnsyncedProgram {
  eraseBlockIndex: number;
  pageIndex: number;
  page: Buffer;
  /** The block was erased after the last sync and before this program. */
  afterUnsyncedErase: boolean;
}

const SECTOR_BYTES = 512;

export class MemoryNand extends NandDeviceBase {
  private readonly pages: Array<BlockPages | undefined>;
  private readonly durable: DurableImage;
  private readonly erasedSinceSync = new Set<number>();
  private lastUnsyncedProgram: UnsyncedProgram | undefined;
  /** Programmed pages the simulated host file system may hold; null: no limit (see the design note). */
  hostSpacePages: number | null = null;
  /** Programmed pages held now (what `hostSpacePages` limits). */
  get hostPagesHeld(): number {
    return this.heldPages;
  }
  private heldPages = 0;

  constructor(geometry: NandGeometry);
  /** @internal Restores a durable image (used by `crash`). */
  constructor(geometry: NandGeometry, restored: DurableImage);
  constructor(geometry: NandGeometry, restored?: DurableImage) {
    const states = restored?.states ?? freshBlockStates(geometry.eraseBlockCount);
    super(geometry, states);
    this.pages = restored?.pages ?? new Array<BlockPages | undefined>(geometry.eraseBlockCount);
    this.durable = {
      states: { eraseCounts: states.eraseCounts.slice(), writePointers: states.writePointers.slice(), badFlags: states.badFlags.slice() },
      pages: this.pages.map((blockPages) => blockPages?.slice()),
    };
    for (const blockPages of this.pages) this.heldPages += countPages(blockPages);
  }

  /** Abandons this device and returns a new one holding what had been made durable (see above). */
  crash(options: CrashOptions = {}): MemoryNand {
    this.abandon();
    const { states } = this.durable;
    const image: DurableImage = {
      states: { eraseCounts: states.eraseCounts.slice(), writePointers: states.writePointers.slice(), badFlags: states.badFlags.slice() },
      pages: this.durable.pages.map((blockPages) => blockPages?.slice()),
    };
    const torn = this.lastUnsyncedProgram;
    if (options.tornLastPage === true && torn !== undefined) {
      const blockPages = torn.afterUnsyncedErase ? [] : (image.pages[torn.eraseBlockIndex] ?? []);
      blockPages[torn.pageIndex] = tearPage(torn.page, options.random);
      image.pages[torn.eraseBlockIndex] = blockPages;
    }
    return new MemoryNand(this.geometry, image);
  }

  protected async doReadPages(eraseBlockIndex: number, firstPageIndex: number, pageCount: number): Promise<Buffer> {
    const { pageBytes } = this.geometry;
    const data = Buffer.alloc(pageCount * pageBytes);
    const blockPages = this.pages[eraseBlockIndex];
    if (blockPages === undefined) return data;
    for (let i = 0; i < pageCount; i += 1) blockPages[firstPageIndex + i]?.copy(data, i * pageBytes);
    return data;
  }

  protected doReadPagesSync(eraseBlockIndex: number, firstPageIndex: number, pageCount: number, target: Buffer): void {
    const { pageBytes } = this.geometry;
    const blockPages = this.pages[eraseBlockIndex];
    for (let i = 0; i < pageCount; i += 1) {
      const page = blockPages?.[firstPageIndex + i];
      if (page === undefined) target.fill(0, i * pageBytes, (i + 1) * pageBytes);
      else page.copy(target, i * pageBytes);
    }
  }

  protected async doProgramPages(eraseBlockIndex: number, firstPageIndex: number, data: Buffer): Promise<void> {
    const { pageBytes } = this.geometry;
    // One private copy (not from Buffer's shared pool), sliced into pages that are never changed.
    const copy = Buffer.allocUnsafeSlow(data.length);
    data.copy(copy);
    let blockPages = this.pages[eraseBlockIndex];
    const pageCount = data.length / pageBytes;
    if (this.hostSpacePages !== null) {
      let added = 0;
      for (let i = 0; i < pageCount; i += 1) if (blockPages?.[firstPageIndex + i] === undefined) added += 1;
      if (this.heldPages + added > this.hostSpacePages) {
        throw StorageError.hostFull(`NAND program of erase block ${eraseBlockIndex}: no space left (the simulated host file system holds ${this.hostSpacePages} pages)`);
      }
    }
    if (blockPages === undefined) {
      blockPages = [];
      this.pages[eraseBlockIndex] = blockPages;
    }
    for (let i = 0; i < pageCount; i += 1) if (blockPages[firstPageIndex + i] === undefined) this.heldPages += 1;
    for (let i = 0; i < pageCount; i += 1) blockPages[firstPageIndex + i] = copy.subarray(i * pageBytes, (i + 1) * pageBytes);
    const lastPageIndex = firstPageIndex + pageCount - 1;
    this.lastUnsyncedProgram = {
      eraseBlockIndex,
      pageIndex: lastPageIndex,
      page: blockPages[lastPageIndex]!,
      afterUnsyncedErase: this.erasedSinceSync.has(eraseBlockIndex),
    };
  }

  protected async doEraseBlock(eraseBlockIndex: number): Promise<void> {
    this.heldPages -= countPages(this.pages[eraseBlockIndex]);
    this.pages[eraseBlockIndex] = undefined;
    this.erasedSinceSync.add(eraseBlockIndex);
  }

  /** Copies the touched blocks into the durable image, synchronously, so nothing can interleave. */
  protected async doSync(eraseBlockIndexes: readonly number[], states: readonly NandBlockInfo[]): Promise<void> {
    const { durable } = this;
    eraseBlockIndexes.forEach((eraseBlockIndex, i) => {
      const state = states[i]!;
      durable.states.eraseCounts[eraseBlockIndex] = state.eraseCount;
      durable.states.writePointers[eraseBlockIndex] = state.writePointer;
      durable.states.badFlags[eraseBlockIndex] = state.bad ? 1 : 0;
      durable.pages[eraseBlockIndex] = this.pages[eraseBlockIndex]?.slice();
    });
    this.erasedSinceSync.clear();
    this.lastUnsyncedProgram = undefined;
  }

  protected async doClose(): Promise<void> {}
}

function countPages(blockPages: BlockPages | undefined): number {
  let count = 0;
  for (const page of blockPages ?? []) if (page !== undefined) count += 1;
  return count;
}

/** The torn copy of `page`: its first bytes new, the rest zeros. */
function tearPage(page: Buffer, random: (() => number) | undefined): Buffer {
  const sectorCount = page.length / SECTOR_BYTES;
  let tearBytes = page.length / 2;
  if (random !== undefined && sectorCount >= 2) {
    // A whole number of sectors, at least one written and at least one not.
    tearBytes = SECTOR_BYTES * (1 + Math.floor(random() * (sectorCount - 1)));
  }
  assert(tearBytes > 0 && tearBytes < page.length);
  const torn = Buffer.alloc(page.length);
  page.copy(torn, 0, 0, tearBytes);
  return torn;
}
