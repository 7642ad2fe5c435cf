/**
 * A log stream: appends chunk records to one open erase block at a time, page by page.
 *
 * The FTL runs two streams, host writes and GC relocations, so hot and cold data do not share
 * erase blocks. A stream fills a page image in memory, seals it (page header with checksum) when
 * it is full, and programs sealed pages in batches of up to `programBatchPages` with one NAND call.
 * Every page image stays in `PageImages` until its program has completed, so reads of freshly
 * appended records are served from memory and a failed program loses nothing.
 *
 * `sealPartial()` (called at a commit point) seals the current page even if it is not full; the
 * rest of that page is padding and the stream goes on at the next page. A record header never
 * spans a page boundary, and a record never spans erase blocks: the stream pads instead.
 */
import { assert } from '../common/assert.js';
import type { NandDevice } from '../nand/nand-device.js';
import { PAGE_HEADER_BYTES, RECORD_HEADER_BYTES, sealPage, writeRecordHeader } from './page-format.js';

export interface PhysicalAddress {
  block: number;
  /** Offset of the record header in the erase block's record stream. */
  offsetBytes: number;
}

/** Page images not yet known to be on NAND, by erase block and page index. */
export class PageImages {
  private readonly byBlock = new Map<number, Map<number, Buffer>>();

  get(block: number, pageIndex: number): Buffer | undefined {
    return this.byBlock.get(block)?.get(pageIndex);
  }
  set(block: number, pageIndex: number, image: Buffer): void {
    let pages = this.byBlock.get(block);
    if (pages === undefined) this.byBlock.set(block, (pages = new Map()));
    pages.set(pageIndex, image);
  }
  delete(block: number, pageIndex: number): void {
    const pages = this.byBlock.get(block);
    pages?.delete(pageIndex);
    if (pages?.size === 0) this.byBlock.delete(block);
  }
  dropBlock(block: number): void {
    this.byBlock.delete(block);
  }
  get pageCount(): number {
    let total = 0;
    for (const pages of this.byBlock.values()) total += pages.size;
    return total;
  }
}

/** What a stream needs from the FTL. */
export interface StreamHost {
  readonly nand: NandDevice;
  readonly images: PageImages;
  /** Opens a free erase block for this stream; throws NO_SPACE when there is none. */
  openBlock(stream: LogStream): { block: number; sequence: number };
  /** The stream has finished with this block (it is full). */
  closeBlock(block: number): void;
  /** Stream bytes consumed in a block (records and padding). */
  addWritten(block: number, bytes: number): void;
  /** Tracks a NAND program until it completes; failures are the FTL's to handle. */
  trackProgram(block: number, firstPageIndex: number, pages: Buffer[]): void;
}

export class LogStream {
  private block = -1;
  private sequence = 0;
  private pageIndex = 0;
  private pageUsedBytes = 0;
  private page: Buffer | null = null;
  private sealed: Buffer[] = [];
  private sealedFirstPage = 0;
  private readonly payloadBytes: number;
  private readonly pagesPerBlock: number;

  constructor(
    readonly name: 'host' | 'gc',
    private readonly host: StreamHost,
    private readonly programBatchPages = 16,
  ) {
    this.payloadBytes = host.nand.geometry.pageBytes - PAGE_HEADER_BYTES;
    this.pagesPerBlock = host.nand.geometry.pagesPerEraseBlock;
  }

  get currentBlock(): number {
    return this.block;
  }

  /** Stream bytes a record of `storedBytes` occupies. */
  static recordBytes(storedBytes: number): number {
    return RECORD_HEADER_BYTES + storedBytes;
  }

  append(chunkId: number, stored: Uint8Array): PhysicalAddress {
    const recordBytes = LogStream.recordBytes(stored.length);
    assert(recordBytes <= this.payloadBytes * this.pagesPerBlock, 'record larger than an erase block');
    if (this.block < 0) this.open();
    if (this.payloadBytes - this.pageUsedBytes < RECORD_HEADER_BYTES) this.finishPage();
    if (this.block >= 0 && this.remainingBytes() < recordBytes) this.abandonRest();
    if (this.block < 0) this.open();
    const address = { block: this.block, offsetBytes: this.pageIndex * this.payloadBytes + this.pageUsedBytes };
    writeRecordHeader(this.page!, PAGE_HEADER_BYTES + this.pageUsedBytes, chunkId, stored);
    this.pageUsedBytes += RECORD_HEADER_BYTES;
    this.host.addWritten(address.block, recordBytes);
    let copied = 0;
    while (copied < stored.length) {
      if (this.pageUsedBytes === this.payloadBytes) this.finishPage();
      const count = Math.min(stored.length - copied, this.payloadBytes - this.pageUsedBytes);
      this.page!.set(stored.subarray(copied, copied + count), PAGE_HEADER_BYTES + this.pageUsedBytes);
      this.pageUsedBytes += count;
      copied += count;
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
    if (this.block >= 0 && this.page !== null) {
      // Keep the partly filled page readable (and parseable) for the relocation that follows.
      if (this.pageUsedBytes > 0) sealPage(this.page, this.pageIndex, this.sequence, this.pageUsedBytes);
      else this.host.images.delete(this.block, this.pageIndex);
    }
    this.block = -1;
    this.page = null;
    this.sealed = [];
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
    this.sealed = [];
    this.sealedFirstPage = 0;
    this.newPage();
  }

  private newPage(): void {
    this.page = Buffer.alloc(this.host.nand.geometry.pageBytes);
    this.host.images.set(this.block, this.pageIndex, this.page);
  }

  /** Seals the current page, counts its padding as written, and moves to the next page. */
  private finishPage(): void {
    const page = this.page!;
    this.host.addWritten(this.block, this.payloadBytes - this.pageUsedBytes);
    sealPage(page, this.pageIndex, this.sequence, this.pageUsedBytes);
    if (this.sealed.length === 0) this.sealedFirstPage = this.pageIndex;
    this.sealed.push(page);
    this.pageIndex += 1;
    this.pageUsedBytes = 0;
    if (this.pageIndex === this.pagesPerBlock) {
      this.issuePrograms();
      const block = this.block;
      this.block = -1;
      this.page = null;
      this.host.closeBlock(block);
      return;
    }
    this.newPage();
    if (this.sealed.length >= this.programBatchPages) this.issuePrograms();
  }

  /** Pads out the rest of the block: the record does not fit in what is left of it. */
  private abandonRest(): void {
    const block = this.block;
    if (this.pageUsedBytes > 0) this.finishPage();
    if (this.block !== block) return;
    this.host.addWritten(block, (this.pagesPerBlock - this.pageIndex) * this.payloadBytes);
    this.host.images.delete(block, this.pageIndex);
    this.issuePrograms();
    this.block = -1;
    this.page = null;
    this.host.closeBlock(block);
  }

  private issuePrograms(): void {
    if (this.sealed.length === 0) return;
    assert(this.block >= 0, 'sealed pages without an open block');
    this.host.trackProgram(this.block, this.sealedFirstPage, this.sealed);
    this.sealed = [];
  }
}
