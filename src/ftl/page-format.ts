/**
 * On-NAND format of the log: page headers and chunk records. Pure encode/decode, no I/O.
 *
 * Every NAND page starts with a 16-byte header; the rest of the page is payload. The payloads of
 * an erase block's pages, concatenated, form the erase block's record stream, and a physical
 * address is (erase block, offset in that stream). Chunks are stored as records packed back to
 * back in the stream, so a compressed chunk may span a page boundary and no space is lost to
 * packing. A record header never spans a page boundary (the stream pads to the next page instead).
 *
 * Page header (big-endian), format 2:
 *   u32 checksum | u16 magic 0x5053 ("PS") | u16 page index | u32 erase-block sequence |
 *   u32 used payload bytes
 * The checksum covers everything after it up to the end of the used payload (bytes 4 to
 * 16 + used), one contiguous range, so sealing and checking a page is one hash call over the page
 * buffer itself (format 1 put the checksum last and hashed a concatenated copy of the page).
 * The used-bytes field lets a page be programmed before it is full (on FLUSH); the rest of such a
 * page is padding, and the stream continues on the next page.
 *
 * Record header (big-endian):
 *   u32 chunk id (high) | u32 chunk id (low) | u32 stored bytes | u32 checksum of the stored bytes
 * A read checks the chunk id and checksum against what the chunk table expects, so misdirected or
 * torn data is an EIO, never another block's data.
 *
 * Checksums are the low 32 bits of xxHash64: on this machine one xxh64 call costs about 0.7 µs per
 * 4 KiB (xxh32: 0.8 to 1.2 µs), most of it the call itself. The pstorage-nand-map addon computes the
 * same hash and returns the low 32 bits as a number (`hashInto`), without the BigInt that
 * @node-rs/xxhash returns and its conversions; @node-rs/xxhash is the fallback without the addon. Page headers use a fixed seed; record
 * headers use the array's own seed (its fingerprint key, see reduce/fingerprint.ts), so that a
 * block stored as it is needs one hash for both its dedup fingerprint and its record checksum.
 */
import { xxh64 } from '@node-rs/xxhash';
import { hashInto, sealPageNative } from '../common/native.js';

export const PAGE_MAGIC = 0x5053;
export const PAGE_HEADER_BYTES = 16;
export const RECORD_HEADER_BYTES = 16;
/** Offsets of the page header fields. */
export const PAGE_CHECKSUM_AT = 0;
export const PAGE_MAGIC_AT = 4;
export const PAGE_INDEX_AT = 6;
export const PAGE_SEQUENCE_AT = 8;
export const PAGE_USED_AT = 12;
/** The seed of page checksums, and of record checksums unless an array gives its own. */
export const DEFAULT_CHECKSUM_SEED = 0x70737467n; // "pstg"

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

/** The 32-bit checksum of `data` used in page and record headers. */
export function checksumOf(data: Uint8Array, seed = DEFAULT_CHECKSUM_SEED): number {
  if (hashInto !== null) {
    if (seed !== lastSeed) {
      lastSeed = seed;
      lastSeedHigh = Number(seed >> 32n);
      lastSeedLow = Number(seed & 0xffff_ffffn);
    }
    return hashInto(data, lastSeedHigh, lastSeedLow, null, 0);
  }
  return Number(BigInt.asUintN(32, xxh64(data, seed)));
}

/** The last seed `checksumOf` split into u32 halves for the addon (pages use one seed, records another). */
let lastSeed = -1n;
let lastSeedHigh = 0;
let lastSeedLow = 0;

/** The checksum carried by a 64-bit hash of the same data with the same seed. */
export function checksumOfHash(hash: bigint): number {
  return Number(BigInt.asUintN(32, hash));
}

/**
 * Seals the page at buffer[at..at + pageBytes] whose payload (after the header) is in place: zeroes
 * the padding after `usedBytes`, and fills in the header and its checksum. The addon does it in one
 * call when it is built (the same bytes: test/engine/page-format.test.ts compares the two).
 */
export function sealPage(buffer: Buffer, at: number, pageBytes: number, pageIndex: number, sequence: number, usedBytes: number): void {
  if (sealPageNative !== null) {
    sealPageNative(buffer, at, pageBytes, PAGE_MAGIC, pageIndex, sequence >>> 0, usedBytes, DEFAULT_SEED_HIGH, DEFAULT_SEED_LOW);
    return;
  }
  sealPageInJs(buffer, at, pageBytes, pageIndex, sequence, usedBytes);
}

/** `sealPage` without the addon. */
export function sealPageInJs(buffer: Buffer, at: number, pageBytes: number, pageIndex: number, sequence: number, usedBytes: number): void {
  if (usedBytes > pageBytes - PAGE_HEADER_BYTES || at + pageBytes > buffer.length) throw new RangeError('sealPage: the page lies outside the buffer');
  buffer.fill(0, at + PAGE_HEADER_BYTES + usedBytes, at + pageBytes);
  const page = buffer.subarray(at, at + pageBytes);
  page.writeUInt16BE(PAGE_MAGIC, PAGE_MAGIC_AT);
  page.writeUInt16BE(pageIndex, PAGE_INDEX_AT);
  page.writeUInt32BE(sequence >>> 0, PAGE_SEQUENCE_AT);
  page.writeUInt32BE(usedBytes, PAGE_USED_AT);
  page.writeUInt32BE(pageChecksum(page, usedBytes), PAGE_CHECKSUM_AT);
}

const DEFAULT_SEED_HIGH = Number(DEFAULT_CHECKSUM_SEED >> 32n);
const DEFAULT_SEED_LOW = Number(DEFAULT_CHECKSUM_SEED & 0xffff_ffffn);

function pageChecksum(page: Buffer, usedBytes: number): number {
  return checksumOf(page.subarray(PAGE_MAGIC_AT, PAGE_HEADER_BYTES + usedBytes));
}

export type PageCheck = { ok: true; header: PageHeader } | { ok: false; reason: string };

/** Decodes and verifies a page header; `erased` pages (all zero header) are reported as such. */
export function checkPage(page: Buffer, expectedPageIndex: number): PageCheck | { ok: false; reason: 'erased' } {
  if (page.readUInt32BE(0) === 0 && page.readUInt32BE(4) === 0 && page.readUInt32BE(8) === 0 && page.readUInt32BE(12) === 0) {
    return { ok: false, reason: 'erased' };
  }
  if (page.readUInt16BE(PAGE_MAGIC_AT) !== PAGE_MAGIC) return { ok: false, reason: 'bad page magic' };
  const header: PageHeader = {
    pageIndex: page.readUInt16BE(PAGE_INDEX_AT),
    sequence: page.readUInt32BE(PAGE_SEQUENCE_AT),
    usedBytes: page.readUInt32BE(PAGE_USED_AT),
    checksum: page.readUInt32BE(PAGE_CHECKSUM_AT),
  };
  if (header.pageIndex !== expectedPageIndex) return { ok: false, reason: `page header says index ${header.pageIndex}` };
  if (header.usedBytes > page.length - PAGE_HEADER_BYTES) return { ok: false, reason: 'used bytes beyond the page' };
  if (pageChecksum(page, header.usedBytes) !== header.checksum) return { ok: false, reason: 'page checksum mismatch' };
  return { ok: true, header };
}

/** Writes a record header; `checksum` is `checksumOf(stored)` (the reduction stage may have it). */
export function writeRecordHeader(target: Buffer, at: number, chunkId: number, storedBytes: number, checksum: number): void {
  target.writeUInt32BE(Math.floor(chunkId / 0x100000000), at);
  target.writeUInt32BE(chunkId >>> 0, at + 4);
  target.writeUInt32BE(storedBytes, at + 8);
  target.writeUInt32BE(checksum >>> 0, at + 12);
}

export function readRecordHeader(source: Buffer, at: number): RecordHeader {
  return {
    chunkId: source.readUInt32BE(at) * 0x100000000 + source.readUInt32BE(at + 4),
    storedBytes: source.readUInt32BE(at + 8),
    checksum: source.readUInt32BE(at + 12),
  };
}
