/**
 * A log stream: appends chunk records to one open erase block at a time, page by page.
 *
 * The FTL runs two streams, host writes and GC relocations, so hot and cold data do not share
 * erase blocks. A stream fills its open erase block's buffer in memory (one buffer of a whole
 * erase block, so pages are contiguous and a batch of pages is programmed straight from it with
 * no copy), seals each page (page header with checksum) when it is full, and programs sealed pages
 * in batches of up to `programBatchPages` with one NAND call.
 *
 * The buffer of an erase block stays in `BlockBuffers` until every program of the block has
 * completed (or, after a program failure, until the block is erased or retired), so reads of
 * freshly appended records are served from memory and a failed program loses nothing.
 *
 * `sealPartial()` (called at a commit point) seals the current page even if it is not full; the
 * rest of that page is padding and the stream goes on at the next page. A record header never
 * spans a page boundary, and a record never spans erase blocks: the stream pads instead.
 */
import { assert, fail } from '../common/assert.js';
import type { NandDevice } from '../nand/nand-device.js';
import { PAGE_HEADER_BYTES, RECORD_HEADER_BYTES, sealPage, writeRecordHeader } from './page-format.js';

export interface PhysicalAddress {
  block: number;
  /** Offset of the record header in the erase block's record stream. */
  offsetBytes: number;
}

/** Whole-erase-block buffers of blocks not yet known to be entirely on NAND, with a small pool. */
export class BlockBuffers {
  private readonly byBlock = new Map<number, Buffer>();
  private readonly pool: Buffer[] = [];

  constructor(
    readonly blockBytes: number,
    private readonly poolLimit = 8,
  ) {}

  get(block: number): Buffer | undefined {
    return this.byBlock.get(block);
  }

  /**
   * A buffer for a block being opened. A pooled one still holds an earlier block's bytes beyond
   * what the stream writes: nothing reads past a block's written bytes (parseBlock stops there),
   * and the stream zeroes the padding of every page it seals, so no stale byte reaches NAND.
   * (Zeroing whole 4 MiB buffers cost 3.6 % of the main thread at 128K sequential writes.)
   */
  acquire(block: number): Buffer {
    if (!(!this.byBlock.has(block))) fail(`erase block ${block} already has a buffer`);
    const buffer = this.pool.pop() ?? Buffer.alloc(this.blockBytes);
    this.byBlock.set(block, buffer);
    return buffer;
  }

  /** The block's contents are on NAND (or the block was erased or retired): drop its buffer. */
  release(block: number): void {
    const buffer = this.byBlock.get(block);
    if (buffer === undefined) return;
    this.byBlock.delete(block);
    if (this.pool.length < this.poolLimit) this.pool.push(buffer);
  }

  get count(): number {
    return this.byBlock.size;
  }
}

/** What a stream needs from the FTL. */
export interface StreamHost {
  readonly nand: NandDevice;
  readonly buffers: BlockBuffers;
  /** Opens a free erase block for this stream; throws NO_SPACE when there is none. */
  openBlock(stream: LogStream): { block: number; sequence: number };
  /** The stream has finished with this block (it is full or padded out). */
  closeBlock(block: number): void;
  /** Stream bytes consumed in a block (records and padding). */
  addWritten(block: number, bytes: number): void;
  /** Programs pages (a view of the block's buffer) and tracks the program until it completes. */
  trackProgram(block: number, firstPageIndex: number, pages: Buffer): void;
}

export class LogStream {
  private block = -1;
  private sequence = 0;
  private pageIndex = 0;
  private pageUsedBytes = 0;
  private buffer: Buffer | null = null;
  /** First sealed page whose program has not been issued. */
  private unissuedFrom = 0;
  private readonly pageBytes: number;
  private readonly payloadBytes: number;
  private readonly pagesPerBlock: number;

  constructor(
    readonly name: 'host' | 'gc',
    private readonly host: StreamHost,
    private readonly programBatchPages = 16,
  ) {
    this.pageBytes = host.nand.geometry.pageBytes;
    this.payloadBytes = this.pageBytes - PAGE_HEADER_BYTES;
    this.pagesPerBlock = host.nand.geometry.pagesPerEraseBlock;
  }

  get currentBlock(): number {
    return this.block;
  }

  /** Stream bytes a record of `storedBytes` occupies. */
  static recordBytes(storedBytes: number): number {
    return RECORD_HEADER_BYTES + storedBytes;
  }

  /** Appends a record; `checksum` is the record checksum of `stored` (page-format.ts). */
  append(chunkId: number, stored: Uint8Array, checksum: number): PhysicalAddress {
    const recordBytes = LogStream.recordBytes(stored.length);
    assert(recordBytes <= this.payloadBytes * this.pagesPerBlock, 'record larger than an erase block');
    if (this.block < 0) this.open();
    if (this.payloadBytes - this.pageUsedBytes < RECORD_HEADER_BYTES) this.finishPage();
    if (this.block >= 0 && this.remainingBytes() < recordBytes) this.abandonRest();
    if (this.block < 0) this.open();
    const buffer = this.buffer!;
    const address = { block: this.block, offsetBytes: this.pageIndex * this.payloadBytes + this.pageUsedBytes };
    writeRecordHeader(buffer, this.pageIndex * this.pageBytes + PAGE_HEADER_BYTES + this.pageUsedBytes, chunkId, stored.length, checksum);
    this.pageUsedBytes += RECORD_HEADER_BYTES;
    this.host.addWritten(address.block, recordBytes);
    // The payload goes in with one copy, running over the headers of the pages it crosses; then,
    // page by page, what ran over is moved past the next page's header (sealed later, which
    // writes all of it). No view of `stored` is made: two per 4 KiB record, which always spans
    // two pages, were a quarter of the bytes a 128 KiB write allocated.
    let left = stored.length;
    if (left > 0 && this.pageUsedBytes === this.payloadBytes) this.finishPage();
    let at = this.pageIndex * this.pageBytes + PAGE_HEADER_BYTES + this.pageUsedBytes;
    if (left > 0) buffer.set(stored, at);
    for (;;) {
      const room = this.payloadBytes - this.pageUsedBytes;
      if (left <= room) {
        this.pageUsedBytes += left;
        break;
      }
      const pageEnd = at + room;
      left -= room;
      this.pageUsedBytes = this.payloadBytes;
      this.finishPage();
      buffer.copyWithin(pageEnd + PAGE_HEADER_BYTES, pageEnd, pageEnd + left);
      at = pageEnd + PAGE_HEADER_BYTES;
    }
    if (this.pageUsedBytes === this.payloadBytes) this.finishPage();
    return address;
  }

  /** Commit point: seal a partly filled page and issue every sealed page's program. */
  sealPartial(): void {
    if (this.block >= 0 && this.pageUsedBytes > 0) this.finishPage();
    this.issuePrograms();
  }

  /** Stops using the current block (after a program failure); the next append opens another. */
  abandonBlock(): void {
    // Keep a partly filled page readable (and parseable) for the relocation that follows; the
    // block's buffer stays until the block is retired.
    if (this.block >= 0 && this.buffer !== null && this.pageUsedBytes > 0) this.sealCurrentPage();
    this.block = -1;
    this.buffer = null;
  }

  private remainingBytes(): number {
    return (this.pagesPerBlock - this.pageIndex) * this.payloadBytes - this.pageUsedBytes;
  }

  private open(): void {
    const { block, sequence } = this.host.openBlock(this);
    this.block = block;
    this.sequence = sequence;
    this.pageIndex = 0;
    this.pageUsedBytes = 0;
    this.unissuedFrom = 0;
    this.buffer = this.host.buffers.acquire(block);
  }

  private sealCurrentPage(): void {
    sealPage(this.buffer!, this.pageIndex * this.pageBytes, this.pageBytes, this.pageIndex, this.sequence, this.pageUsedBytes);
  }

  /** Seals the current page, counts its padding as written, and moves to the next page. */
  private finishPage(): void {
    this.host.addWritten(this.block, this.payloadBytes - this.pageUsedBytes);
    this.sealCurrentPage();
    this.pageIndex += 1;
    this.pageUsedBytes = 0;
    if (this.pageIndex === this.pagesPerBlock) {
      this.issuePrograms();
      this.closeCurrent();
      return;
    }
    if (this.pageIndex - this.unissuedFrom >= this.programBatchPages) this.issuePrograms();
  }

  /** Pads out the rest of the block: the record does not fit in what is left of it. */
  private abandonRest(): void {
    const block = this.block;
    if (this.pageUsedBytes > 0) this.finishPage();
    if (this.block !== block) return;
    this.host.addWritten(block, (this.pagesPerBlock - this.pageIndex) * this.payloadBytes);
    this.issuePrograms();
    this.closeCurrent();
  }

  private closeCurrent(): void {
    const block = this.block;
    this.block = -1;
    this.buffer = null;
    this.host.closeBlock(block);
  }

  private issuePrograms(): void {
    if (this.pageIndex === this.unissuedFrom || this.buffer === null) return;
    assert(this.block >= 0, 'sealed pages without an open block');
    const pages = this.buffer.subarray(this.unissuedFrom * this.pageBytes, this.pageIndex * this.pageBytes);
    this.host.trackProgram(this.block, this.unissuedFrom, pages);
    this.unissuedFrom = this.pageIndex;
  }
}
