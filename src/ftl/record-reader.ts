/**
 * Reading records back: the FTL's read path, over the erase-block buffers (blocks not yet entirely
 * on NAND) and the NAND device. A record is found by its physical address and checked against
 * what the caller expects (chunk id, stored length, record checksum): a mismatch is CORRUPT, never
 * data. Reads are synchronous while the NAND's pages come from the page cache (`canReadSync`),
 * with a native batch copy-and-verify over the NAND's mapping where it has one; otherwise through
 * the thread pool, registered as readers of their erase blocks so that GC erases none of them
 * until the read is done (`whenNoReaders`).
 */
import { StorageError, fromSystemError } from '../common/errors.js';
import { copyRecords, readRecords } from '../common/native.js';
import { directOffsetOf, type NandDevice } from '../nand/nand-device.js';
import type { BlockBuffers, PhysicalAddress } from './log-stream.js';
import type { ParsedRecord, RecordRef } from './ftl.js';
import { PLAN_FIELDS, type RecordCipher } from './record-cipher.js';
import { PAGE_HEADER_BYTES, RECORD_HEADER_BYTES, checkPage, checksumOf, readRecordHeader } from './page-format.js';

export class RecordReader {
  private readonly payloadBytesPerPage: number;
  private readonly streamBytesPerBlock: number;
  /** Scratch for NAND pages read synchronously, and for records that span pages. */
  private readonly pageScratch: Buffer;
  private readonly recordScratch: Buffer;
  /** Where a record read as a view (of a page buffer or the read-only mapping) is decrypted. */
  private readonly clearScratch: Buffer;
  /** Rows of the native batch read (readMappedRecords), grown as needed. */
  private mappedPlan = new Float64Array(64 * PLAN_FIELDS);
  /** The same for the records read with pread (the pages the mapping does not take in now). */
  private directPlan = new Float64Array(64 * PLAN_FIELDS);
  /** Asynchronous reads in flight per erase block, and who waits for them to end. */
  private readonly readers = new Map<number, number>();
  private readonly readersDone = new Map<number, Array<() => void>>();

  constructor(
    private readonly nand: NandDevice,
    private readonly buffers: BlockBuffers,
    /** Seed of record checksums (page-format.ts). */
    private readonly recordSeed: bigint,
    /** An encrypted array's cipher (record-cipher.ts): payloads are decrypted before anyone sees them. */
    private readonly cipher: RecordCipher | null = null,
  ) {
    const { pageBytes, pagesPerEraseBlock } = nand.geometry;
    this.payloadBytesPerPage = pageBytes - PAGE_HEADER_BYTES;
    this.pageScratch = Buffer.alloc(pageBytes * pagesPerEraseBlock);
    this.streamBytesPerBlock = this.payloadBytesPerPage * pagesPerEraseBlock;
    this.recordScratch = Buffer.alloc(this.streamBytesPerBlock);
    this.clearScratch = cipher === null ? Buffer.alloc(0) : Buffer.alloc(this.streamBytesPerBlock);
  }

  /**
   * True when reads may be synchronous: pages of the NAND image come from the page cache and a
   * synchronous read costs a fraction of a thread-pool hand-off (about 1.5 µs against 5 to 17 µs
   * per 4 KiB here). The NAND says when its synchronous reads turned slow (a real disk read).
   */
  get canReadSync(): boolean {
    return !this.nand.preferAsyncReads;
  }

  /**
   * Reads and verifies records synchronously, handing each payload to `sink` in the caller's order
   * of `requests` by index. The payload is a view that is valid only during the call (it may sit
   * in a block buffer, the NAND's mapping or scratch memory): copy or decompress it there, unless
   * `destinations[index]` was given (exactly the payload's length): then the payload is copied
   * straight there (one copy, even for a record that spans pages) and verified there, and that
   * buffer is what `sink` gets. Adjacent records share one NAND read. A record whose header names
   * another chunk, or whose checksum fails, is CORRUPT.
   *
   * On an encrypted array, the records the native batch read copied into their destinations are
   * decrypted there in one call per batch (`RecordCipher.decryptRows`), the rest one by one.
   */
  readRecordsSync(requests: readonly RecordRef[], sink: (index: number, payload: Buffer) => void, destinations?: ReadonlyArray<Buffer | undefined>): void {
    this.readStoredRecordsSync(requests, sink, destinations, this.cipher !== null);
  }

  /**
   * A sink that decrypts each verified payload before handing it on: in place when it is the
   * caller's destination (or the scratch record), else in a copy (a view of a page buffer or of
   * the read-only mapping must not change).
   */
  private decryptingSink(requests: readonly RecordRef[], sink: (index: number, payload: Buffer) => void, destinations?: ReadonlyArray<Buffer | undefined>): (index: number, payload: Buffer) => void {
    const cipher = this.cipher!;
    return (index, payload) => {
      let clear = payload;
      if (payload !== destinations?.[index]) {
        clear = this.clearScratch.subarray(0, payload.length);
        payload.copy(clear);
      }
      cipher.decrypt(clear, requests[index]!.chunkId);
      sink(index, clear);
    };
  }

  /**
   * `readRecordsSync` of the records as they are stored (ciphertext on an encrypted array), or,
   * with `decrypt`, in clear.
   */
  private readStoredRecordsSync(requests: readonly RecordRef[], sink: (index: number, payload: Buffer) => void, destinations: ReadonlyArray<Buffer | undefined> | undefined, decrypt: boolean): void {
    let rest: readonly number[] | null = null;
    if (destinations !== undefined && copyRecords !== null && this.nand.mappedImage !== null) {
      rest = this.readMappedRecords(requests, sink, destinations, decrypt);
      if (rest.length === 0) return;
    }
    // What is left is read as views and decrypted record by record.
    if (decrypt) sink = this.decryptingSink(requests, sink, destinations);
    if (rest === null && requests.length === 1) {
      const only = requests[0]!;
      const firstPage = this.firstPageOf(only.address);
      const pages = this.pagesSync(only.address.block, firstPage, this.lastPageOf(only.address, only.storedBytes) - firstPage + 1);
      sink(0, this.extractRecord(pages, firstPage, only.address, only.chunkId, only.storedBytes, destinations?.[0] ?? this.recordScratch));
      return;
    }
    const order = addressOrder(requests, rest);
    for (let start = 0; start < order.length; ) {
      const { end, block, firstPage, lastPage } = this.groupAt(requests, order, start);
      const pages = this.pagesSync(block, firstPage, lastPage - firstPage + 1);
      for (let k = start; k < end; k++) {
        const index = order[k]!;
        const wanted = requests[index]!;
        sink(index, this.extractRecord(pages, firstPage, wanted.address, wanted.chunkId, wanted.storedBytes, destinations?.[index] ?? this.recordScratch));
      }
      start = end;
    }
  }

  /**
   * The mapped part of `readRecordsSync`: every record with a destination of its length in an
   * erase block the NAND has mapped (not one still buffered here) is copied and verified by one
   * native call (native/nand-map's copyRecords), which overlaps the cache and TLB misses of
   * scattered records and has no per-record JavaScript (with `decrypt`, one more call decrypts
   * them). Returns the indices left for the view path.
   */
  private readMappedRecords(requests: readonly RecordRef[], sink: (index: number, payload: Buffer) => void, destinations: ReadonlyArray<Buffer | undefined>, decrypt: boolean): readonly number[] {
    if (this.mappedPlan.length < requests.length * PLAN_FIELDS) {
      this.mappedPlan = new Float64Array(requests.length * PLAN_FIELDS * 2);
      this.directPlan = new Float64Array(requests.length * PLAN_FIELDS * 2);
    }
    const payloadBytes = this.payloadBytesPerPage;
    let rest: number[] | null = null;
    let mappedRows = 0;
    let directRows = 0;
    let pageCount = 0;
    for (let i = 0; i < requests.length; i++) {
      const { address, chunkId, storedBytes } = requests[i]!;
      const firstPage = this.firstPageOf(address);
      const pages = this.lastPageOf(address, storedBytes) - firstPage + 1;
      const at = destinations[i]?.length !== storedBytes || this.buffers.get(address.block) !== undefined ? -1 : this.nand.mapPagesSync(address.block, firstPage, pages);
      if (at === -1 || (at < -1 && readRecords === null)) {
        (rest ??= []).push(i);
        continue;
      }
      const direct = at < -1;
      const plan = direct ? this.directPlan : this.mappedPlan;
      const row = (direct ? directRows++ : mappedRows++) * PLAN_FIELDS;
      plan[row] = direct ? directOffsetOf(at) : at;
      plan[row + 1] = address.offsetBytes % payloadBytes;
      plan[row + 2] = storedBytes;
      plan[row + 3] = chunkId;
      plan[row + 4] = i;
      pageCount += pages;
    }
    if (mappedRows + directRows > 0) {
      const image = this.nand.mappedImage!;
      const pageBytes = this.nand.geometry.pageBytes;
      const started = performance.now();
      let failedPlan = this.mappedPlan;
      let failed = mappedRows > 0 ? copyRecords!(image.segments, image.segmentBytes, pageBytes, PAGE_HEADER_BYTES, RECORD_HEADER_BYTES, this.recordSeed, this.mappedPlan, mappedRows, destinations) : -1;
      if (failed < 0 && directRows > 0) {
        failedPlan = this.directPlan;
        try {
          failed = readRecords!(image.descriptor, pageBytes, PAGE_HEADER_BYTES, RECORD_HEADER_BYTES, this.recordSeed, this.directPlan, directRows, destinations);
        } catch (error) {
          throw fromSystemError(error, 'NAND read');
        }
      }
      this.nand.noteMappedRead(started, pageCount);
      if (failed >= 0) {
        const { address, chunkId, storedBytes } = requests[failedPlan[failed * PLAN_FIELDS + 4]!]!;
        throw StorageError.corrupt(`chunk ${chunkId} at erase block ${address.block} offset ${address.offsetBytes} failed verification (${storedBytes} bytes expected)`);
      }
      // Verified as stored (the checksum is over the ciphertext): now decrypted, one call per plan.
      if (decrypt) {
        this.cipher!.decryptRows(this.mappedPlan, mappedRows, destinations);
        this.cipher!.decryptRows(this.directPlan, directRows, destinations);
      }
      deliverRows(this.mappedPlan, mappedRows, sink, destinations);
      deliverRows(this.directPlan, directRows, sink, destinations);
    }
    return rest ?? NONE;
  }

  /**
   * Reads and verifies records (asynchronously, when the NAND prefers it), returning a copy of
   * each payload in the order of `requests`.
   */
  async readRecords(requests: readonly RecordRef[]): Promise<Buffer[]> {
    const results: Buffer[] = new Array(requests.length);
    if (this.canReadSync) {
      this.readRecordsSync(requests, (index, payload) => (results[index] = Buffer.from(payload)));
      return results;
    }
    const order = addressOrder(requests);
    // Register as a reader of every block now, in the caller's tick: GC erases none of them
    // until this read is done, even if it moves the chunks meanwhile.
    const blocks = new Set(requests.map((request) => request.address.block));
    for (const block of blocks) this.readers.set(block, (this.readers.get(block) ?? 0) + 1);
    try {
      for (let start = 0; start < order.length; ) {
        const { end, block, firstPage, lastPage } = this.groupAt(requests, order, start);
        const pages = await this.pagesAsync(block, firstPage, lastPage - firstPage + 1);
        for (let k = start; k < end; k++) {
          const index = order[k]!;
          const wanted = requests[index]!;
          results[index] = this.extractRecord(pages, firstPage, wanted.address, wanted.chunkId, wanted.storedBytes, null);
          // A fresh buffer, or a view of pages read for this call alone: decrypted in place.
          this.cipher?.decrypt(results[index]!, wanted.chunkId);
        }
        start = end;
      }
    } finally {
      for (const block of blocks) this.releaseReader(block);
    }
    return results;
  }

  /** The run of requests from `order[start]` that one read of adjacent pages of a block covers. */
  private groupAt(requests: readonly RecordRef[], order: readonly number[], start: number): { end: number; block: number; firstPage: number; lastPage: number } {
    const first = requests[order[start]!]!;
    const block = first.address.block;
    const firstPage = this.firstPageOf(first.address);
    let lastPage = this.lastPageOf(first.address, first.storedBytes);
    let end = start + 1;
    while (end < order.length) {
      const next = requests[order[end]!]!;
      if (next.address.block !== block || this.firstPageOf(next.address) > lastPage + 1) break;
      lastPage = Math.max(lastPage, this.lastPageOf(next.address, next.storedBytes));
      end += 1;
    }
    return { end, block, firstPage, lastPage };
  }

  private firstPageOf(address: PhysicalAddress): number {
    return Math.floor(address.offsetBytes / this.payloadBytesPerPage);
  }

  private lastPageOf(address: PhysicalAddress, storedBytes: number): number {
    return Math.floor((address.offsetBytes + RECORD_HEADER_BYTES + storedBytes - 1) / this.payloadBytesPerPage);
  }

  /** Contiguous pages: a view of the block's buffer, of the NAND's mapping, or read into scratch memory. */
  private pagesSync(block: number, firstPage: number, pageCount: number): Buffer {
    const pageBytes = this.nand.geometry.pageBytes;
    const buffer = this.buffers.get(block);
    if (buffer !== undefined) return buffer.subarray(firstPage * pageBytes, (firstPage + pageCount) * pageBytes);
    return this.nand.viewPagesSync(block, firstPage, pageCount) ?? this.nand.readPagesSync(block, firstPage, pageCount, this.pageScratch);
  }

  private async pagesAsync(block: number, firstPage: number, pageCount: number): Promise<Buffer> {
    const pageBytes = this.nand.geometry.pageBytes;
    const buffer = this.buffers.get(block);
    if (buffer !== undefined) return Buffer.from(buffer.subarray(firstPage * pageBytes, (firstPage + pageCount) * pageBytes));
    return this.nand.readPages(block, firstPage, pageCount);
  }

  /**
   * The verified payload of the record at `address`, from contiguous `pages` starting at
   * `firstPage`. With `into` of exactly the payload's length, the payload is copied there; else
   * it is a view when it lies in one page, or assembled at the start of `into` (a scratch buffer;
   * a new buffer when `into` is null). A record header never spans a page boundary.
   */
  private extractRecord(pages: Buffer, firstPage: number, address: PhysicalAddress, chunkId: number, storedBytes: number, into: Buffer | null): Buffer {
    const pageBytes = this.nand.geometry.pageBytes;
    const payloadBytes = this.payloadBytesPerPage;
    const inPage = address.offsetBytes % payloadBytes;
    const headerAt = (Math.floor(address.offsetBytes / payloadBytes) - firstPage) * pageBytes + PAGE_HEADER_BYTES + inPage;
    const foundChunk = pages.readUInt32BE(headerAt) * 0x100000000 + pages.readUInt32BE(headerAt + 4);
    const foundBytes = pages.readUInt32BE(headerAt + 8);
    const checksum = pages.readUInt32BE(headerAt + 12);
    let payload: Buffer;
    const roomInPage = payloadBytes - inPage - RECORD_HEADER_BYTES;
    if (storedBytes <= roomInPage && (into === null || into.length !== storedBytes)) {
      payload = pages.subarray(headerAt + RECORD_HEADER_BYTES, headerAt + RECORD_HEADER_BYTES + storedBytes);
    } else {
      payload = into === null ? Buffer.allocUnsafe(storedBytes) : into.length === storedBytes ? into : into.subarray(0, storedBytes);
      let copied = 0;
      let from = headerAt + RECORD_HEADER_BYTES;
      let room = roomInPage;
      while (copied < storedBytes) {
        if (room === 0) {
          from += PAGE_HEADER_BYTES; // the next page's header
          room = payloadBytes;
        }
        const count = Math.min(storedBytes - copied, room);
        pages.copy(payload, copied, from, from + count);
        copied += count;
        from += count;
        room -= count;
      }
    }
    if (foundChunk !== chunkId || foundBytes !== storedBytes || checksumOf(payload, this.recordSeed) !== checksum) {
      throw StorageError.corrupt(`chunk ${chunkId} at erase block ${address.block} offset ${address.offsetBytes} failed verification (found chunk ${foundChunk}, ${foundBytes} bytes)`);
    }
    return payload;
  }

  releaseReader(block: number): void {
    const count = (this.readers.get(block) ?? 1) - 1;
    if (count > 0) {
      this.readers.set(block, count);
      return;
    }
    this.readers.delete(block);
    for (const resolve of this.readersDone.get(block)?.splice(0) ?? []) resolve();
  }

  /** Resolves once no asynchronous read of the block is in flight (GC erases it only then). */
  whenNoReaders(block: number): Promise<void> {
    if (!this.readers.has(block)) return Promise.resolve();
    return new Promise((resolve) => {
      const waiting = this.readersDone.get(block) ?? [];
      waiting.push(resolve);
      this.readersDone.set(block, waiting);
    });
  }

  /**
   * Every record of a block, in stream order (payloads are copies), from its buffer or NAND: the
   * stream up to `limitBytes` written, in pages of the block's use numbered `sequence`.
   */
  async parseBlock(block: number, limitBytes: number, sequence: number): Promise<{ records: ParsedRecord[]; problems: string[] }> {
    const { pagesPerEraseBlock, pageBytes } = this.nand.geometry;
    const pages = this.canReadSync ? Buffer.from(this.pagesSync(block, 0, pagesPerEraseBlock)) : await this.pagesAsync(block, 0, pagesPerEraseBlock);
    const records: ParsedRecord[] = [];
    const problems: string[] = [];
    let offset = 0;
    const limit = limitBytes;
    while (offset < limit) {
      const pageIndex = Math.floor(offset / this.payloadBytesPerPage);
      const inPage = offset % this.payloadBytesPerPage;
      const page = pages.subarray(pageIndex * pageBytes, (pageIndex + 1) * pageBytes);
      const check = checkPage(page, pageIndex);
      if (!check.ok) {
        if (check.reason !== 'erased') problems.push(`erase block ${block} page ${pageIndex}: ${check.reason}`);
        break;
      }
      // A page from an earlier use of this block (left over by a crash) ends the stream.
      if (check.header.sequence !== sequence) break;
      if (inPage >= check.header.usedBytes || this.payloadBytesPerPage - inPage < RECORD_HEADER_BYTES) {
        offset = (pageIndex + 1) * this.payloadBytesPerPage;
        continue;
      }
      const header = readRecordHeader(page, PAGE_HEADER_BYTES + inPage);
      if (offset + RECORD_HEADER_BYTES + header.storedBytes > this.streamBytesPerBlock) {
        problems.push(`erase block ${block} offset ${offset}: record runs past the block`);
        break;
      }
      try {
        const payload = this.extractRecord(pages, 0, { block, offsetBytes: offset }, header.chunkId, header.storedBytes, null);
        records.push({ chunkId: header.chunkId, offsetBytes: offset, payload });
      } catch (error) {
        problems.push((error as Error).message);
      }
      offset += RECORD_HEADER_BYTES + header.storedBytes;
    }
    return { records, problems };
  }
}

/** Hands the destinations of a read plan's rows to `sink`. */
function deliverRows(plan: Float64Array, rows: number, sink: (index: number, payload: Buffer) => void, destinations: ReadonlyArray<Buffer | undefined>): void {
  for (let row = 0; row < rows; row++) {
    const index = plan[row * PLAN_FIELDS + 4]!;
    sink(index, destinations[index]!);
  }
}
const NONE: readonly number[] = [];

/** Indexes of `requests` sorted by physical address (so adjacent records can share a read). */
function addressOrder(requests: readonly RecordRef[], subset: readonly number[] | null = null): number[] {
  const order = subset === null ? requests.map((_, i) => i) : subset.slice();
  order.sort((a, b) => requests[a]!.address.block - requests[b]!.address.block || requests[a]!.address.offsetBytes - requests[b]!.address.offsetBytes);
  return order;
}
