/**
 * The NAND device seam: what the FTL may ask of flash, whatever holds it (memory, a sparse file, a
 * fault-injecting wrapper).
 *
 * The model is raw NAND as a flash translation layer sees it. The device is a row of erase blocks
 * of `pagesPerEraseBlock` pages of `pageBytes` each. Every implementation enforces the same rules
 * (see `NandDeviceBase` in `nand-device-base.ts`, where they live in one place):
 *
 * - Pages of an erase block are programmed in order, exactly at the block's write pointer, and
 *   once per erase. Programming below the pointer is a "program twice", above it is "out of
 *   order"; both are rejected. A multi-page program must fit in the erase block.
 * - Erase resets the write pointer to 0 and adds one to the block's P/E (erase) count.
 * - Pages that were never programmed since the last erase read as zero bytes, not 0xFF as on real
 *   flash: the file image is sparse, and holes read as zeros.
 * - Indexes out of range, lengths that are not whole pages, and programs or erases of a block marked
 *   bad are rejected with `StorageError` code `INVALID_ARGUMENT`. These are FTL bugs, but they stay
 *   errors rather than assertion crashes so that tests can assert them. Reads of a bad block are
 *   allowed, because the FTL must still be able to relocate the live data of a retired block.
 * - The device does not enforce `enduranceCycles`: retiring worn blocks is the FTL's policy.
 * - A device failure (an injected program, erase or read fault) is a `StorageError` with code `IO`
 *   whose `cause` is a `NandFault`; the FTL retires the block on that, and treats any other error
 *   as an error of the host or of the program.
 * - A program that fails with any other error (a host error: the file system under the image is
 *   full, say) leaves the block stalled: the pages from that program's first page up to the write
 *   pointer hold unknown data, and programs of the block queued behind it fail with the same error
 *   without being tried (they would leave a gap). `reprogramPages` writes those pages again, once
 *   the host has room; nothing of the block is lost as long as the caller keeps the data.
 *
 * Durability: a program or erase is durable once a `sync()` called after it resolved has
 * completed. After a crash, `blockInfo()` reports erase counts, write pointers and bad flags as of
 * the last completed `sync()`. Because operations after that sync may or may not have reached the
 * media, after a crash:
 *   - pages at or above a block's write pointer may hold leftovers of unsynced programs (possibly
 *     torn); programming at the write pointer simply replaces them;
 *   - a block whose write pointer is above 0 may in fact have been erased after the sync (its
 *     pages read as zeros).
 * So the FTL must trust its own durable metadata and page headers, never the pointer alone, and
 * must erase again any block it considers free whose `writePointer` is not 0 before programming
 * it (`needsEraseBeforeReuse`).
 */
import { StorageError } from '../common/errors.js';

export const DEFAULT_PAGE_BYTES = 4096;
export const DEFAULT_PAGES_PER_ERASE_BLOCK = 64;
export const DEFAULT_ENDURANCE_CYCLES = 3000;

/** Smallest page: one disk sector. */
export const MIN_PAGE_BYTES = 512;
export const MAX_PAGE_BYTES = 1024 * 1024;
export const MIN_PAGES_PER_ERASE_BLOCK = 2;
/** The spare-area record keeps the write pointer in 16 bits, and it may equal the page count. */
export const MAX_PAGES_PER_ERASE_BLOCK = 0xffff;
export const MIN_ERASE_BLOCK_COUNT = 8;
/** The spare-area record keeps the erase block index (inside its checksum) in 32 bits. */
export const MAX_ERASE_BLOCK_COUNT = 0xffffffff;

export interface NandGeometry {
  readonly pageBytes: number;
  readonly pagesPerEraseBlock: number;
  readonly eraseBlockCount: number;
  /** P/E cycles a block is rated for; the FTL retires blocks past it. */
  readonly enduranceCycles: number;
}

export interface NandBlockInfo {
  /** Completed erases (P/E cycles) of this block. */
  eraseCount: number;
  /** The next page index to program; `pagesPerEraseBlock` when the block is full. */
  writePointer: number;
  bad: boolean;
}

/** Work counters; `pagesProgrammed * pageBytes` is the NAND side of write amplification. */
export interface NandCounters {
  pagesProgrammed: number;
  pagesRead: number;
  erases: number;
  syncs: number;
}

/**
 * A device's memory as read-only segments of `segmentBytes` (the last may be shorter), and the
 * descriptor of the file behind them, for pages read without the mapping (see `mapPagesSync`).
 */
export interface MappedImage {
  readonly segments: readonly Buffer[];
  readonly segmentBytes: number;
  readonly descriptor: number;
}

/**
 * `mapPagesSync`'s answer for pages to be read from `MappedImage.descriptor` (pread) rather than
 * through the mapping, at image offset `directOffsetOf(answer)`: always below -1.
 */
export function directAnswer(offsetBytes: number): number {
  return -2 - offsetBytes;
}

export function directOffsetOf(answer: number): number {
  return -2 - answer;
}

export interface NandDevice {
  readonly geometry: NandGeometry;
  readonly counters: Readonly<NandCounters>;
  /** Reads `pageCount` whole pages; never-programmed pages read as zeros. */
  readPages(eraseBlockIndex: number, firstPageIndex: number, pageCount: number): Promise<Buffer>;
  /**
   * The same read, synchronously, into `target` (from its start; a new buffer when absent), and
   * returns the view of `target` holding the pages. The caller guarantees that no program or erase
   * of the block is in flight (the FTL serves such blocks from its own buffers). The FTL's hot
   * read path uses it while `preferAsyncReads` is false.
   */
  readPagesSync(eraseBlockIndex: number, firstPageIndex: number, pageCount: number, target?: Buffer): Buffer;
  /**
   * The pages as a read-only view of the device's own memory (a file image's memory mapping),
   * without a copy, or null when the device has none (the caller then uses `readPagesSync`). The
   * view is valid only until the caller returns to the event loop. Same conditions as
   * `readPagesSync`.
   */
  viewPagesSync(eraseBlockIndex: number, firstPageIndex: number, pageCount: number): Buffer | null;
  /**
   * The device's memory mapping, for reads of many records in one native call (the FTL's
   * `copyRecords` path), or null when it has none (every device but a mapped file image).
   */
  readonly mappedImage: MappedImage | null;
  /**
   * The batch form of `viewPagesSync`: the byte offset of the pages in `mappedImage`; or, when the
   * mapping should not take them in now (a file image keeps only so much mapped), a
   * `directAnswer` (below -1) saying where to pread them from `mappedImage.descriptor`; or -1 when
   * neither (the caller then uses `viewPagesSync` or `readPagesSync`). Same conditions; the caller
   * reads them before returning to the event loop and then reports how long that took with
   * `noteMappedRead`.
   */
  mapPagesSync(eraseBlockIndex: number, firstPageIndex: number, pageCount: number): number;
  /** How long reading `pageCount` pages through `mappedImage` (or its descriptor) took (a disk read is slow). */
  noteMappedRead(startedMs: number, pageCount: number): void;
  /**
   * True while synchronous reads would stall the caller: a file image whose recent synchronous
   * reads went to the disk instead of the page cache. Memory devices never say so.
   */
  readonly preferAsyncReads: boolean;
  /** Programs whole pages starting exactly at the write pointer. The device copies `data`. */
  programPages(eraseBlockIndex: number, firstPageIndex: number, data: Buffer): Promise<void>;
  /**
   * Programs again the pages of a stalled block (see above): `firstPageIndex` is the first page of
   * the program that failed, and `data` runs up to the block's write pointer. None of the block's
   * programs may be in flight. Rejected with `INVALID_ARGUMENT` otherwise.
   */
  reprogramPages(eraseBlockIndex: number, firstPageIndex: number, data: Buffer): Promise<void>;
  eraseBlock(eraseBlockIndex: number): Promise<void>;
  /** Makes every program, erase and `markBad` that completed before the call durable. */
  sync(): Promise<void>;
  blockInfo(eraseBlockIndex: number): NandBlockInfo;
  /** Retires a block: later programs and erases of it are rejected. Durable at the next sync. */
  markBad(eraseBlockIndex: number): void;
  /** Syncs, then releases resources; later calls fail with `SHUTTING_DOWN`. */
  close(): Promise<void>;
  /**
   * Devices that keep erased blocks' old pages on the host for reuse (FileNand's warm pool): give
   * that space back now and keep none until `resumeWarm` (the host file system is full).
   */
  releaseWarm?(): Promise<void>;
  resumeWarm?(): void;
  /** Erased blocks whose old pages the host still holds (the warm pool). */
  readonly warmEraseBlocks?: number;
  /** Bytes programmed over pages the warm pool kept, of all bytes programmed. */
  readonly warmProgrammedBytes?: number;
}

export type NandFaultKind = 'program' | 'erase' | 'read';

/**
 * Why a NAND operation failed, carried as the `cause` of a `StorageError` with code `IO`.
 * A plain class rather than an `Error`, so that `error.cause instanceof NandFault` tells a device
 * failure (retire the block) apart from everything else.
 */
export class NandFault {
  constructor(
    readonly kind: NandFaultKind,
    readonly eraseBlockIndex: number,
    readonly pageIndex?: number,
  ) {}

  toString(): string {
    const page = this.pageIndex === undefined ? '' : ` page ${this.pageIndex}`;
    return `NAND ${this.kind} failure at erase block ${this.eraseBlockIndex}${page}`;
  }
}

/** Builds the error an implementation throws for a device failure. */
export function nandFaultError(fault: NandFault): StorageError {
  return new StorageError('IO', fault.toString(), { cause: fault });
}

/** True when `error` is a device failure of the NAND (the FTL should retire the block). */
export function isNandFault(error: unknown): error is StorageError & { cause: NandFault } {
  return error instanceof StorageError && error.cause instanceof NandFault;
}

/** True when the FTL must erase the block before it programs page 0 again (see the note above). */
export function needsEraseBeforeReuse(info: NandBlockInfo): boolean {
  return info.writePointer !== 0;
}

export function eraseBlockBytes(geometry: NandGeometry): number {
  return geometry.pageBytes * geometry.pagesPerEraseBlock;
}

export function capacityBytes(geometry: NandGeometry): number {
  return eraseBlockBytes(geometry) * geometry.eraseBlockCount;
}

/** Derives the geometry of a device of (at most) `capacityBytes`; the remainder is unused. */
export function geometryForCapacity(
  capacityBytes: number,
  pageBytes = DEFAULT_PAGE_BYTES,
  pagesPerEraseBlock = DEFAULT_PAGES_PER_ERASE_BLOCK,
  enduranceCycles = DEFAULT_ENDURANCE_CYCLES,
): NandGeometry {
  validatePageLayout(pageBytes, pagesPerEraseBlock);
  if (!Number.isSafeInteger(capacityBytes) || capacityBytes <= 0) {
    throw StorageError.invalidArgument(`NAND capacity ${capacityBytes} is not a positive whole number of bytes`);
  }
  const blockBytes = pageBytes * pagesPerEraseBlock;
  const eraseBlockCount = Math.floor(capacityBytes / blockBytes);
  if (eraseBlockCount < MIN_ERASE_BLOCK_COUNT) {
    throw StorageError.invalidArgument(
      `NAND capacity ${capacityBytes} bytes is too small: at least ${MIN_ERASE_BLOCK_COUNT} erase blocks of ` +
        `${blockBytes} bytes (${MIN_ERASE_BLOCK_COUNT * blockBytes} bytes) are needed`,
    );
  }
  return validateGeometry({ pageBytes, pagesPerEraseBlock, eraseBlockCount, enduranceCycles });
}

/** Returns `geometry` if every field is allowed, otherwise throws `INVALID_ARGUMENT` saying why. */
export function validateGeometry(geometry: NandGeometry): NandGeometry {
  validatePageLayout(geometry.pageBytes, geometry.pagesPerEraseBlock);
  const { eraseBlockCount, enduranceCycles } = geometry;
  if (!Number.isSafeInteger(eraseBlockCount) || eraseBlockCount < MIN_ERASE_BLOCK_COUNT || eraseBlockCount > MAX_ERASE_BLOCK_COUNT) {
    throw StorageError.invalidArgument(
      `NAND erase block count ${eraseBlockCount} is not allowed: use a whole number from ${MIN_ERASE_BLOCK_COUNT} to ${MAX_ERASE_BLOCK_COUNT}`,
    );
  }
  if (!Number.isSafeInteger(capacityBytes(geometry))) {
    throw StorageError.invalidArgument(`NAND capacity of ${eraseBlockCount} erase blocks is too large: it must stay below 8 PiB`);
  }
  if (!Number.isSafeInteger(enduranceCycles) || enduranceCycles < 1 || enduranceCycles > 0xffffffff) {
    throw StorageError.invalidArgument(`NAND endurance ${enduranceCycles} is not allowed: use a whole number of P/E cycles of at least 1`);
  }
  return geometry;
}

function validatePageLayout(pageBytes: number, pagesPerEraseBlock: number): void {
  const powerOfTwo = Number.isSafeInteger(pageBytes) && pageBytes > 0 && (pageBytes & (pageBytes - 1)) === 0;
  if (!powerOfTwo || pageBytes < MIN_PAGE_BYTES || pageBytes > MAX_PAGE_BYTES) {
    throw StorageError.invalidArgument(
      `NAND page size ${pageBytes} is not allowed: use a power of two from ${MIN_PAGE_BYTES} to ${MAX_PAGE_BYTES} bytes`,
    );
  }
  if (!Number.isSafeInteger(pagesPerEraseBlock) || pagesPerEraseBlock < MIN_PAGES_PER_ERASE_BLOCK || pagesPerEraseBlock > MAX_PAGES_PER_ERASE_BLOCK) {
    throw StorageError.invalidArgument(
      `NAND pages per erase block ${pagesPerEraseBlock} is not allowed: use a whole number from ${MIN_PAGES_PER_ERASE_BLOCK} to ${MAX_PAGES_PER_ERASE_BLOCK}`,
    );
  }
}
