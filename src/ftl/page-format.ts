/**
 * On-NAND format of the log: page headers and chunk records. Pure encode/decode, no I/O.
 *
 * Every NAND page starts with a 16-byte header; the rest of the page is payload. The payloads of
 * an erase block's pages, concatenated, form the erase block's record stream, and a physical
 * address is (erase block, offset in that stream). Chunks are stored as records packed back to
 * back in the stream, so a compressed chunk may span a page boundary and no space is lost to
 * packing. A record header never spans a page boundary (the stream pads to the next page instead).
 *
 * Page header (big-endian):
 *   u16 magic 0x5053 ("PS") | u16 page index | u32 erase-block sequence | u32 used payload bytes |
 *   u32 xxh32 of the header's first 12 bytes and the used payload
 * The used-bytes field lets a page be programmed before it is full (on FLUSH); the rest of such a
 * page is padding, and the stream continues on the next page.
 *
 * Record header (big-endian):
 *   u32 chunk id (high) | u32 chunk id (low) | u32 stored bytes | u32 xxh32 of the stored bytes
 * A read checks the chunk id and checksum against what the chunk table expects, so misdirected or
 * torn data is an EIO, never another block's data.
 */
import { xxh32 } from '@node-rs/xxhash';

export const PAGE_MAGIC = 0x5053;
export const PAGE_HEADER_BYTES = 16;
export const RECORD_HEADER_BYTES = 16;
const CHECKSUM_SEED = 0x70737467; // "pstg"

export interface PageHeader {
  pageIndex: number;
  sequence: number;
  usedBytes: number;
  checksum: number;
}

export interface RecordHeader {
  chunkId: number;
  storedBytes: number;
  checksum: number;
}

export function checksumOf(data: Uint8Array): number {
  return xxh32(data, CHECKSUM_SEED);
}

/** Fills in the header of a page whose payload (after the header) is already in place. */
export function sealPage(page: Buffer, pageIndex: number, sequence: number, usedBytes: number): void {
  page.writeUInt16BE(PAGE_MAGIC, 0);
  page.writeUInt16BE(pageIndex, 2);
  page.writeUInt32BE(sequence >>> 0, 4);
  page.writeUInt32BE(usedBytes, 8);
  page.writeUInt32BE(pageChecksum(page, usedBytes), 12);
}

function pageChecksum(page: Buffer, usedBytes: number): number {
  const covered = Buffer.concat([page.subarray(0, 12), page.subarray(PAGE_HEADER_BYTES, PAGE_HEADER_BYTES + usedBytes)]);
  return checksumOf(covered);
}

export type PageCheck = { ok: true; header: PageHeader } | { ok: false; reason: string };

/** Decodes and verifies a page header; `erased` pages (all zero header) are reported as such. */
export function checkPage(page: Buffer, expectedPageIndex: number): PageCheck | { ok: false; reason: 'erased' } {
  if (page.readUInt32BE(0) === 0 && page.readUInt32BE(4) === 0 && page.readUInt32BE(8) === 0 && page.readUInt32BE(12) === 0) {
    return { ok: false, reason: 'erased' };
  }
  if (page.readUInt16BE(0) !== PAGE_MAGIC) return { ok: false, reason: 'bad page magic' };
  const header: PageHeader = {
    pageIndex: page.readUInt16BE(2),
    sequence: page.readUInt32BE(4),
    usedBytes: page.readUInt32BE(8),
    checksum: page.readUInt32BE(12),
  };
  if (header.pageIndex !== expectedPageIndex) return { ok: false, reason: `page header says index ${header.pageIndex}` };
  if (header.usedBytes > page.length - PAGE_HEADER_BYTES) return { ok: false, reason: 'used bytes beyond the page' };
  if (pageChecksum(page, header.usedBytes) !== header.checksum) return { ok: false, reason: 'page checksum mismatch' };
  return { ok: true, header };
}

export function writeRecordHeader(target: Buffer, at: number, chunkId: number, stored: Uint8Array): void {
  target.writeUInt32BE(Math.floor(chunkId / 0x100000000), at);
  target.writeUInt32BE(chunkId >>> 0, at + 4);
  target.writeUInt32BE(stored.length, at + 8);
  target.writeUInt32BE(checksumOf(stored), at + 12);
}

export function readRecordHeader(source: Buffer, at: number): RecordHeader {
  return {
    chunkId: source.readUInt32BE(at) * 0x100000000 + source.readUInt32BE(at + 4),
    storedBytes: source.readUInt32BE(at + 8),
    checksum: source.readUInt32BE(at + 12),
  };
}
