/**
 * The rules every NAND implementation shares, kept in one place (as abstract-level does): the
 * public methods validate and keep the per-block state; narrow protected hooks (`doReadPages`,
 * `doProgramPages`, `doEraseBlock`, `doSync`, `doClose`) move the bytes.
 *
 * State it owns, per erase block, in typed arrays (6–7 bytes a block, so a 1 TiB device of 256 KiB
 * erase blocks costs about 30 MiB):
 *   - the issued state (`eraseCounts`, `writePointers`, `badFlags`): what `blockInfo` reports and
 *     what validation checks. A program advances the write pointer and an erase resets it the
 *     moment the call is made, before any I/O, so that the FTL may queue several in-order programs
 *     to one erase block without waiting for each.
 *   - the completed state (`completedEraseCounts`, `completedWritePointers`): the state once the
 *     I/O has finished. A sync makes this state durable, never the issued one, so a spare-area
 *     record never claims a page whose data had not been written when the sync began.
 *   - the dirty set: blocks whose completed state or bad flag changed since the last sync.
 *
 * Ordering: programs and erases of one erase block run one after the other in call order (a
 * per-block promise chain); operations on different blocks run concurrently. A read waits for the
 * programs and erases of its block that were called before it. Syncs run one at a time, and each
 * covers every program and erase that completed before it started.
 *
 * On failure: if the I/O of a program fails with a NAND fault, the pages of its range hold unknown
 * data and the write pointer stays past them; if an erase fails, the block's contents are unknown.
 * Either way the FTL should retire the block (`markBad`). If a program fails with a host error
 * (anything that is not a NAND fault: ENOSPC under a file image), the block is stalled at that
 * program's first page (`stalled`): the write pointer stays where the programs issued took it, so
 * that the FTL may go on issuing programs in order, but each program of the block that has not run
 * yet, and each one issued later, fails with the same error without being tried. A program that
 * ran after the failed one would leave unwritten pages below written ones, and its completed state
 * would claim them. `reprogramPages` ends the stall: it programs the whole stalled range again, in
 * one go, once nothing of the block is in flight; an erase ends it too (the pages are discarded).
 */
import { assert, fail } from '../common/assert.js';
import { StorageError } from '../common/errors.js';
import type { MappedImage, NandBlockInfo, NandCounters, NandDevice, NandGeometry } from './nand-device.js';
import { isNandFault, validateGeometry } from './nand-device.js';

/** Per-block state to start a device from (a reopened image, or the durable state after a crash). */
export interface NandBlockStates {
  eraseCounts: Uint32Array;
  writePointers: Uint16Array;
  badFlags: Uint8Array;
}

export function freshBlockStates(eraseBlockCount: number): NandBlockStates {
  return {
    eraseCounts: new Uint32Array(eraseBlockCount),
    writePointers: new Uint16Array(eraseBlockCount),
    badFlags: new Uint8Array(eraseBlockCount),
  };
}

export abstract class NandDeviceBase implements NandDevice {
  readonly geometry: NandGeometry;
  readonly counters: NandCounters = { pagesProgrammed: 0, pagesRead: 0, erases: 0, syncs: 0 };
  protected readonly eraseCounts: Uint32Array;
  protected readonly writePointers: Uint16Array;
  protected readonly badFlags: Uint8Array;
  protected readonly completedEraseCounts: Uint32Array;
  protected readonly completedWritePointers: Uint16Array;
  private readonly dirtyBlocks = new Set<number>();
  /** The last queued program/erase of each erase block that has one in flight. */
  private readonly mutationTails = new Map<number, Promise<void>>();
  /**
   * Programs and erases queued or running per erase block, counted down inside the operation
   * itself, so that whoever awaits an operation sees it finished here too.
   */
  private readonly mutationsPending = new Map<number, number>();
  private syncTail: Promise<void> = Promise.resolve();
  private closed = false;
  /** Stalled erase blocks (see the design note): the first page of the failed program, and its error. */
  private readonly stalled = new Map<number, { pageIndex: number; error: unknown }>();

  protected constructor(geometry: NandGeometry, states: NandBlockStates = freshBlockStates(geometry.eraseBlockCount)) {
    this.geometry = Object.freeze({ ...validateGeometry(geometry) });
    const count = geometry.eraseBlockCount;
    assert(states.eraseCounts.length === count && states.writePointers.length === count && states.badFlags.length === count);
    this.eraseCounts = states.eraseCounts;
    this.writePointers = states.writePointers;
    this.badFlags = states.badFlags;
    this.completedEraseCounts = states.eraseCounts.slice();
    this.completedWritePointers = states.writePointers.slice();
  }

  /** Reads pages into a new buffer that the caller owns. */
  protected abstract doReadPages(eraseBlockIndex: number, firstPageIndex: number, pageCount: number): Promise<Buffer>;
  /** Reads pages synchronously into `target` from its start. */
  protected abstract doReadPagesSync(eraseBlockIndex: number, firstPageIndex: number, pageCount: number, target: Buffer): void;
  protected abstract doProgramPages(eraseBlockIndex: number, firstPageIndex: number, data: Buffer): Promise<void>;
  protected abstract doEraseBlock(eraseBlockIndex: number): Promise<void>;
  /** Makes durable the data written so far and the given completed states of the dirty blocks. */
  protected abstract doSync(eraseBlockIndexes: readonly number[], states: readonly NandBlockInfo[]): Promise<void>;
  protected abstract doClose(): Promise<void>;

  async readPages(eraseBlockIndex: number, firstPageIndex: number, pageCount: number): Promise<Buffer> {
    this.checkOpen();
    validateRead(this.geometry, eraseBlockIndex, firstPageIndex, pageCount);
    const pending = this.mutationTails.get(eraseBlockIndex);
    if (pending !== undefined) await pending;
    const data = await this.doReadPages(eraseBlockIndex, firstPageIndex, pageCount);
    this.counters.pagesRead += pageCount;
    return data;
  }

  readPagesSync(eraseBlockIndex: number, firstPageIndex: number, pageCount: number, target?: Buffer): Buffer {
    this.checkOpen();
    validateRead(this.geometry, eraseBlockIndex, firstPageIndex, pageCount);
    if (!(!this.mutationsPending.has(eraseBlockIndex))) fail(`synchronous read of erase block ${eraseBlockIndex} while a program or erase of it is in flight`);
    const bytes = pageCount * this.geometry.pageBytes;
    assert(target === undefined || target.length >= bytes, 'read target too small');
    const data = target === undefined ? Buffer.allocUnsafe(bytes) : target.subarray(0, bytes);
    this.doReadPagesSync(eraseBlockIndex, firstPageIndex, pageCount, data);
    this.counters.pagesRead += pageCount;
    return data;
  }

  viewPagesSync(eraseBlockIndex: number, firstPageIndex: number, pageCount: number): Buffer | null {
    this.checkOpen();
    validateRead(this.geometry, eraseBlockIndex, firstPageIndex, pageCount);
    if (!(!this.mutationsPending.has(eraseBlockIndex))) fail(`synchronous read of erase block ${eraseBlockIndex} while a program or erase of it is in flight`);
    const view = this.doViewPagesSync(eraseBlockIndex, firstPageIndex, pageCount);
    if (view !== null) this.counters.pagesRead += pageCount;
    return view;
  }

  get mappedImage(): MappedImage | null {
    return null;
  }

  mapPagesSync(eraseBlockIndex: number, firstPageIndex: number, pageCount: number): number {
    this.checkOpen();
    validateRead(this.geometry, eraseBlockIndex, firstPageIndex, pageCount);
    if (this.mutationsPending.has(eraseBlockIndex)) fail(`synchronous read of erase block ${eraseBlockIndex} while a program or erase of it is in flight`);
    const at = this.doMapPagesSync(eraseBlockIndex, firstPageIndex, pageCount);
    if (at >= 0) this.counters.pagesRead += pageCount;
    return at;
  }

  /** The pages' offset in `mappedImage`, or -1 (the default: no mapping). */
  protected doMapPagesSync(_eraseBlockIndex: number, _firstPageIndex: number, _pageCount: number): number {
    return -1;
  }

  noteMappedRead(_startedMs: number, _pageCount: number): void {}

  /** A view of the pages in the device's own memory, or null (the default: no such memory). */
  protected doViewPagesSync(_eraseBlockIndex: number, _firstPageIndex: number, _pageCount: number): Buffer | null {
    return null;
  }

  get preferAsyncReads(): boolean {
    return false;
  }

  programPages(eraseBlockIndex: number, firstPageIndex: number, data: Buffer): Promise<void> {
    try {
      this.checkOpen();
      validateProgram(this.geometry, this.blockInfo(eraseBlockIndex), eraseBlockIndex, firstPageIndex, data);
    } catch (error) {
      return Promise.reject(error);
    }
    this.writePointers[eraseBlockIndex] = firstPageIndex + data.length / this.geometry.pageBytes;
    return this.enqueueProgram(eraseBlockIndex, firstPageIndex, data);
  }

  reprogramPages(eraseBlockIndex: number, firstPageIndex: number, data: Buffer): Promise<void> {
    try {
      this.checkOpen();
      const info = this.blockInfo(eraseBlockIndex);
      const stall = this.stalled.get(eraseBlockIndex);
      if (stall === undefined || stall.pageIndex !== firstPageIndex || this.mutationsPending.has(eraseBlockIndex)) {
        const why = stall === undefined ? 'it is not stalled' : this.mutationsPending.has(eraseBlockIndex) ? 'a program or erase of it is in flight' : `its stall starts at page ${stall.pageIndex}`;
        throw StorageError.invalidArgument(`reprogram of erase block ${eraseBlockIndex} page ${firstPageIndex} rejected: ${why}`);
      }
      // Checked as a program at the stall page, which must end at the write pointer.
      validateProgram(this.geometry, { ...info, writePointer: firstPageIndex }, eraseBlockIndex, firstPageIndex, data);
      if (firstPageIndex + data.length / this.geometry.pageBytes !== info.writePointer) {
        throw StorageError.invalidArgument(`reprogram of erase block ${eraseBlockIndex} rejected: it must run up to the write pointer (page ${info.writePointer})`);
      }
    } catch (error) {
      return Promise.reject(error);
    }
    this.stalled.delete(eraseBlockIndex);
    return this.enqueueProgram(eraseBlockIndex, firstPageIndex, data);
  }

  private enqueueProgram(eraseBlockIndex: number, firstPageIndex: number, data: Buffer): Promise<void> {
    const pageCount = data.length / this.geometry.pageBytes;
    const eraseCount = this.eraseCounts[eraseBlockIndex]!;
    const writePointer = firstPageIndex + pageCount;
    return this.enqueueMutation(eraseBlockIndex, async () => {
      const stall = this.stalled.size === 0 ? undefined : this.stalled.get(eraseBlockIndex);
      if (stall !== undefined) throw stall.error;
      try {
        await this.doProgramPages(eraseBlockIndex, firstPageIndex, data);
      } catch (error) {
        if (!isNandFault(error) && !this.stalled.has(eraseBlockIndex)) this.stalled.set(eraseBlockIndex, { pageIndex: firstPageIndex, error });
        throw error;
      }
      this.counters.pagesProgrammed += pageCount;
      this.complete(eraseBlockIndex, eraseCount, writePointer);
    });
  }

  eraseBlock(eraseBlockIndex: number): Promise<void> {
    try {
      this.checkOpen();
      validateErase(this.geometry, this.blockInfo(eraseBlockIndex), eraseBlockIndex);
    } catch (error) {
      return Promise.reject(error);
    }
    const eraseCount = this.eraseCounts[eraseBlockIndex]! + 1;
    this.eraseCounts[eraseBlockIndex] = eraseCount;
    this.writePointers[eraseBlockIndex] = 0;
    // The stalled pages are being discarded; programs after the erase start a new use of the block.
    this.stalled.delete(eraseBlockIndex);
    return this.enqueueMutation(eraseBlockIndex, async () => {
      await this.doEraseBlock(eraseBlockIndex);
      this.counters.erases += 1;
      this.complete(eraseBlockIndex, eraseCount, 0);
    });
  }

  sync(): Promise<void> {
    try {
      this.checkOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    return this.queueSync();
  }

  blockInfo(eraseBlockIndex: number): NandBlockInfo {
    this.checkOpen();
    validateEraseBlockIndex(this.geometry, eraseBlockIndex);
    return {
      eraseCount: this.eraseCounts[eraseBlockIndex]!,
      writePointer: this.writePointers[eraseBlockIndex]!,
      bad: this.badFlags[eraseBlockIndex] === 1,
    };
  }

  markBad(eraseBlockIndex: number): void {
    this.checkOpen();
    validateEraseBlockIndex(this.geometry, eraseBlockIndex);
    if (this.badFlags[eraseBlockIndex] === 1) return;
    this.badFlags[eraseBlockIndex] = 1;
    this.dirtyBlocks.add(eraseBlockIndex);
  }

  /** Waits for queued programs and erases, syncs, then releases the device. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await Promise.allSettled([...this.mutationTails.values()]);
      await this.queueSync();
    } finally {
      await this.doClose();
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Ends the device without syncing (a crash); later calls fail with `SHUTTING_DOWN`. */
  protected abandon(): void {
    this.closed = true;
  }

  /**
   * Queues device upkeep of one erase block (a deferred discard of its pages above the write
   * pointer) in the block's program/erase order: it runs after everything queued for the block
   * before it, and whatever is queued after it runs after it. It changes no block state, touches
   * no page a read may ask for, and so does not count as a program or erase in flight:
   * synchronous reads of the block's programmed pages go on meanwhile (asynchronous reads wait).
   */
  protected enqueueUpkeep(eraseBlockIndex: number, work: () => Promise<void>): Promise<void> {
    return this.enqueueMutation(eraseBlockIndex, work, false);
  }

  /** The state a sync would make durable for this block now. */
  protected completedBlockInfo(eraseBlockIndex: number): NandBlockInfo {
    return {
      eraseCount: this.completedEraseCounts[eraseBlockIndex]!,
      writePointer: this.completedWritePointers[eraseBlockIndex]!,
      bad: this.badFlags[eraseBlockIndex] === 1,
    };
  }

  private complete(eraseBlockIndex: number, eraseCount: number, writePointer: number): void {
    this.completedEraseCounts[eraseBlockIndex] = eraseCount;
    this.completedWritePointers[eraseBlockIndex] = writePointer;
    this.dirtyBlocks.add(eraseBlockIndex);
  }

  /** `pending`: the work counts as a program or erase in flight (synchronous reads of the block refuse meanwhile). */
  private enqueueMutation(eraseBlockIndex: number, work: () => Promise<void>, pending = true): Promise<void> {
    const previous = this.mutationTails.get(eraseBlockIndex);
    if (pending) this.mutationsPending.set(eraseBlockIndex, (this.mutationsPending.get(eraseBlockIndex) ?? 0) + 1);
    const counted = async () => {
      try {
        await work();
      } finally {
        if (!pending) return;
        const left = this.mutationsPending.get(eraseBlockIndex)! - 1;
        if (left > 0) this.mutationsPending.set(eraseBlockIndex, left);
        else this.mutationsPending.delete(eraseBlockIndex);
      }
    };
    // A failed earlier operation does not stop later ones: the FTL sees each failure itself.
    const run = previous === undefined ? counted() : previous.then(counted, counted);
    const tail = run.then(ignore, ignore);
    this.mutationTails.set(eraseBlockIndex, tail);
    void tail.then(() => {
      if (this.mutationTails.get(eraseBlockIndex) === tail) this.mutationTails.delete(eraseBlockIndex);
    });
    return run;
  }

  private queueSync(): Promise<void> {
    const run = this.syncTail.then(() => this.runSync());
    this.syncTail = run.then(ignore, ignore);
    return run;
  }

  private async runSync(): Promise<void> {
    const indexes = [...this.dirtyBlocks].sort((a, b) => a - b);
    const states = indexes.map((index) => this.completedBlockInfo(index));
    this.dirtyBlocks.clear();
    try {
      await this.doSync(indexes, states);
      this.counters.syncs += 1;
    } catch (error) {
      for (const index of indexes) this.dirtyBlocks.add(index);
      throw error;
    }
  }

  private checkOpen(): void {
    if (this.closed) throw StorageError.shuttingDown('the NAND device is closed');
  }
}

function ignore(): void {}

export function validateEraseBlockIndex(geometry: NandGeometry, eraseBlockIndex: number): void {
  if (!Number.isSafeInteger(eraseBlockIndex) || eraseBlockIndex < 0 || eraseBlockIndex >= geometry.eraseBlockCount) {
    throw StorageError.invalidArgument(
      `erase block index ${eraseBlockIndex} is out of range: the device has erase blocks 0 to ${geometry.eraseBlockCount - 1}`,
    );
  }
}

/** Checks a read of `pageCount` pages; reads of bad blocks are allowed (to relocate their data). */
export function validateRead(geometry: NandGeometry, eraseBlockIndex: number, firstPageIndex: number, pageCount: number): void {
  validateEraseBlockIndex(geometry, eraseBlockIndex);
  validatePageRange(geometry, eraseBlockIndex, firstPageIndex, pageCount, 'read');
}

export function validateProgram(
  geometry: NandGeometry,
  info: NandBlockInfo,
  eraseBlockIndex: number,
  firstPageIndex: number,
  data: Buffer,
): void {
  validateEraseBlockIndex(geometry, eraseBlockIndex);
  if (!Buffer.isBuffer(data) || data.length === 0 || data.length % geometry.pageBytes !== 0) {
    const length = Buffer.isBuffer(data) ? `${data.length} bytes` : 'not a Buffer';
    throw StorageError.invalidArgument(
      `program of erase block ${eraseBlockIndex} rejected: data (${length}) must be a Buffer of whole ${geometry.pageBytes}-byte pages`,
    );
  }
  validatePageRange(geometry, eraseBlockIndex, firstPageIndex, data.length / geometry.pageBytes, 'program');
  if (info.bad) throw StorageError.invalidArgument(`program of erase block ${eraseBlockIndex} rejected: the block is marked bad`);
  if (firstPageIndex < info.writePointer) {
    throw StorageError.invalidArgument(
      `program of erase block ${eraseBlockIndex} page ${firstPageIndex} rejected: the page was already programmed ` +
        `since the last erase (write pointer at page ${info.writePointer}); erase the block first`,
    );
  }
  if (firstPageIndex > info.writePointer) {
    throw StorageError.invalidArgument(
      `program of erase block ${eraseBlockIndex} page ${firstPageIndex} rejected: out of order, pages must be ` +
        `programmed in order and the next one is page ${info.writePointer}`,
    );
  }
}

export function validateErase(geometry: NandGeometry, info: NandBlockInfo, eraseBlockIndex: number): void {
  validateEraseBlockIndex(geometry, eraseBlockIndex);
  if (info.bad) throw StorageError.invalidArgument(`erase of erase block ${eraseBlockIndex} rejected: the block is marked bad`);
}

function validatePageRange(
  geometry: NandGeometry,
  eraseBlockIndex: number,
  firstPageIndex: number,
  pageCount: number,
  what: 'read' | 'program',
): void {
  const pages = geometry.pagesPerEraseBlock;
  if (!Number.isSafeInteger(firstPageIndex) || firstPageIndex < 0 || firstPageIndex >= pages) {
    throw StorageError.invalidArgument(
      `${what} of erase block ${eraseBlockIndex} rejected: page index ${firstPageIndex} is out of range 0 to ${pages - 1}`,
    );
  }
  if (!Number.isSafeInteger(pageCount) || pageCount < 1 || firstPageIndex + pageCount > pages) {
    throw StorageError.invalidArgument(
      `${what} of erase block ${eraseBlockIndex} rejected: ${pageCount} pages from page ${firstPageIndex} ` +
        `run past the end of the erase block (${pages} pages)`,
    );
  }
}
