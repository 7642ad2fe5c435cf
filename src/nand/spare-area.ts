/**
 * Encoding of `nand.oob`, the spare-area file of a file-backed NAND image: a header recording the
 * geometry, then one fixed 16-byte record per erase block, like the spare (out-of-band) area of
 * real NAND. Pure functions, no I/O; every encoder has its decoder.
 *
 * Layout (all integers big-endian):
 *
 *   header, 32 bytes at offset 0:
 *     0  magic "PSNANDOB" (8 bytes)
 *     8  format version u16 (1)        10 reserved u16 (0)
 *     12 pageBytes u32                 16 pagesPerEraseBlock u32
 *     20 eraseBlockCount u32           24 enduranceCycles u32
 *     28 CRC-32 of bytes 0..28
 *
 *   record of erase block i, 16 bytes at offset 32 + 16 * i:
 *     0  eraseCount u32
 *     4  writePointer u16
 *     6  flags u8 (bit 0: bad)
 *     7  reserved, 5 zero bytes
 *     12 CRC-32 of (i as u32, then bytes 0..12)
 *
 * Mixing the block index into the checksum catches a record written at the wrong offset. An
 * all-zero record is valid and means a fresh block (never erased, nothing programmed, good), so
 * a new spare file can be sparse too.
 */
import { crc32 } from 'node:zlib';
import { StorageError } from '../common/errors.js';
import type { NandBlockInfo, NandGeometry } from './nand-device.js';

export const SPARE_HEADER_BYTES = 32;
export const SPARE_RECORD_BYTES = 16;
const MAGIC = Buffer.from('PSNANDOB', 'latin1');
const FORMAT_VERSION = 1;
const FLAG_BAD = 0x01;

export function spareFileBytes(geometry: NandGeometry): number {
  return SPARE_HEADER_BYTES + SPARE_RECORD_BYTES * geometry.eraseBlockCount;
}

export function spareRecordOffsetBytes(eraseBlockIndex: number): number {
  return SPARE_HEADER_BYTES + SPARE_RECORD_BYTES * eraseBlockIndex;
}

export function encodeSpareHeader(geometry: NandGeometry): Buffer {
  const header = Buffer.alloc(SPARE_HEADER_BYTES);
  MAGIC.copy(header, 0);
  header.writeUInt16BE(FORMAT_VERSION, 8);
  header.writeUInt32BE(geometry.pageBytes, 12);
  header.writeUInt32BE(geometry.pagesPerEraseBlock, 16);
  header.writeUInt32BE(geometry.eraseBlockCount, 20);
  header.writeUInt32BE(geometry.enduranceCycles, 24);
  header.writeUInt32BE(crc32(header.subarray(0, 28)), 28);
  return header;
}

/** Decodes the header; `where` names the file in error messages. */
export function decodeSpareHeader(header: Buffer, where: string): NandGeometry {
  if (header.length < SPARE_HEADER_BYTES || !header.subarray(0, 8).equals(MAGIC)) {
    throw StorageError.corrupt(`${where} is not a pstorage NAND spare-area file (bad magic)`);
  }
  if (header.readUInt32BE(28) !== crc32(header.subarray(0, 28))) {
    throw StorageError.corrupt(`${where}: the header checksum does not match; the file is damaged`);
  }
  const version = header.readUInt16BE(8);
  if (version !== FORMAT_VERSION) {
    throw StorageError.notSupported(`${where} has format version ${version}; this build reads version ${FORMAT_VERSION}`);
  }
  return {
    pageBytes: header.readUInt32BE(12),
    pagesPerEraseBlock: header.readUInt32BE(16),
    eraseBlockCount: header.readUInt32BE(20),
    enduranceCycles: header.readUInt32BE(24),
  };
}

/** Writes the record of `eraseBlockIndex` into `target` at `offsetBytes`. */
export function encodeSpareRecord(eraseBlockIndex: number, info: NandBlockInfo, target: Buffer, offsetBytes: number): void {
  const record = target.subarray(offsetBytes, offsetBytes + SPARE_RECORD_BYTES);
  record.fill(0);
  record.writeUInt32BE(info.eraseCount, 0);
  record.writeUInt16BE(info.writePointer, 4);
  record.writeUInt8(info.bad ? FLAG_BAD : 0, 6);
  record.writeUInt32BE(recordChecksum(eraseBlockIndex, record), 12);
}

/** Reads the record of `eraseBlockIndex` from `source` at `offsetBytes`; `where` names the file. */
export function decodeSpareRecord(eraseBlockIndex: number, source: Buffer, offsetBytes: number, where: string): NandBlockInfo {
  const record = source.subarray(offsetBytes, offsetBytes + SPARE_RECORD_BYTES);
  const stored = record.readUInt32BE(12);
  if (stored === 0 && isAllZero(record)) return { eraseCount: 0, writePointer: 0, bad: false };
  if (stored !== recordChecksum(eraseBlockIndex, record)) {
    throw StorageError.corrupt(`${where}: the record of erase block ${eraseBlockIndex} fails its checksum; the file is damaged`);
  }
  return { eraseCount: record.readUInt32BE(0), writePointer: record.readUInt16BE(4), bad: (record.readUInt8(6) & FLAG_BAD) !== 0 };
}

function recordChecksum(eraseBlockIndex: number, record: Buffer): number {
  const index = Buffer.alloc(4);
  index.writeUInt32BE(eraseBlockIndex, 0);
  return crc32(record.subarray(0, 12), crc32(index));
}

function isAllZero(bytes: Buffer): boolean {
  for (const byte of bytes) if (byte !== 0) return false;
  return true;
}
