/**
 * A read-only reader of LevelDB's own files (table `.ldb`/`.sst`, write-ahead `.log`, `MANIFEST`),
 * for `pstorage inspect repair`: it tells, entry by entry, what can be proven intact.
 *
 * Why not LevelDB itself: classic-level reads with LevelDB's defaults (`verify_checksums` and
 * `paranoid_checks` off, and it offers no way to turn them on), so a damaged table block is
 * found only when its bytes fail to decompress or parse; a block that still parses (a zeroed one
 * parses as an empty block) silently loses its keys. `RepairDB` reads the same way. This reader
 * checks every block's CRC32C before using it, and reports each damaged block as the range of
 * user keys it covered (from the table's index), so the caller knows exactly which keys may have
 * lost their newest version.
 *
 * Formats (LevelDB 1.20, doc/table_format.md and doc/log_format.md):
 *   table   data blocks, meta blocks, a metaindex block, an index block, and a 48-byte footer
 *           (two block handles, padding, magic 0xdb4775248b80fb57). A block is followed by a
 *           5-byte trailer: u8 compression (0 none, 1 snappy), u32 masked CRC32C of the block and
 *           that byte. Index entries map a separator key (>= every key of the block, < every key
 *           of the next) to the block's handle.
 *   block   entries (varint shared, varint unshared, varint value length, key delta, value), then
 *           u32 restart offsets and a u32 restart count.
 *   key     internal key = user key + u64 (sequence << 8 | type); type 1 value, 0 deletion.
 *   log     32 KiB blocks of records: u32 masked CRC32C, u16 length, u8 type (1 full, 2 first,
 *           3 middle, 4 last), data. A record of the write-ahead log is a write batch: u64
 *           sequence, u32 count, then per operation u8 type (1 put, 0 delete), varint-prefixed
 *           key and (for a put) value.
 *   MANIFEST a log of version edits (varint tags: 2 log number, 3 next file, 4 last sequence,
 *           6 deleted file, 7 new file with level, number, size, smallest and largest keys, ...).
 *
 * Everything here is pure decoding over buffers; `readLevelDbDirectory` is the only I/O.
 */
import fs from 'node:fs';
import path from 'node:path';
import { StorageError } from '../common/errors.js';

export const enum EntryType {
  Deletion = 0,
  Value = 1,
}

/** One version of a key, as found in a file. */
export interface LevelEntry {
  key: Buffer;
  sequence: bigint;
  type: EntryType;
  value: Buffer;
}

/** A range of user keys whose newest versions may be lost: `gt` exclusive (none: from the start), `lte` inclusive (none: to the end). */
export interface LostKeyRange {
  gt?: Buffer;
  lte?: Buffer;
  /** The file and what went wrong, for the report. */
  where: string;
}

export interface TableContents {
  entries: LevelEntry[];
  lost: LostKeyRange[];
  blocks: number;
}

export interface LogContents {
  batches: Array<{ sequence: bigint; entries: LevelEntry[] }>;
  /** Bytes of records that failed their checksum or were cut off, and where. */
  damage: Array<{ offsetBytes: number; reason: string }>;
}

export interface TableMeta {
  level: number;
  number: number;
  sizeBytes: number;
  smallest: Buffer;
  largest: Buffer;
}

export interface ManifestContents {
  tables: TableMeta[];
  logNumber: number;
  lastSequence: bigint;
  damage: string[];
}

const TABLE_MAGIC = 0xdb4775248b80fb57n;
const FOOTER_BYTES = 48;
const TRAILER_BYTES = 5;
const LOG_BLOCK_BYTES = 32 * 1024;
const LOG_HEADER_BYTES = 7;
const MASK_DELTA = 0xa282ead8;

// ---- CRC32C (Castagnoli), as LevelDB masks it ---------------------------------------------------

const CRC_TABLE = (() => {
  const table = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    table[n] = c;
  }
  return table;
})();

export function crc32c(data: Uint8Array, crc = 0): number {
  let c = ~crc;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

export function unmaskCrc(masked: number): number {
  const rot = (masked - MASK_DELTA) >>> 0;
  return ((rot >>> 17) | (rot << 15)) >>> 0;
}

export function maskCrc(crc: number): number {
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + MASK_DELTA) >>> 0;
}

// ---- Varints and snappy --------------------------------------------------------------------------

class Cursor {
  constructor(
    readonly bytes: Buffer,
    public at = 0,
  ) {}

  get left(): number {
    return this.bytes.length - this.at;
  }

  varint(): number {
    let result = 0;
    for (let shift = 0; shift < 50; shift += 7) {
      if (this.at >= this.bytes.length) throw StorageError.corrupt('varint runs past the end');
      const byte = this.bytes[this.at++]!;
      result += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return result;
    }
    throw StorageError.corrupt('varint too long');
  }

  take(length: number): Buffer {
    if (length > this.left) throw StorageError.corrupt(`${length} bytes wanted, ${this.left} left`);
    const out = this.bytes.subarray(this.at, this.at + length);
    this.at += length;
    return out;
  }

  lengthPrefixed(): Buffer {
    return this.take(this.varint());
  }
}

/** Snappy's raw format (what LevelDB compresses blocks with). Damage is CORRUPT. */
export function snappyDecompress(input: Buffer): Buffer {
  const cursor = new Cursor(input);
  const length = cursor.varint();
  if (length > 64 * 1024 * 1024) throw StorageError.corrupt(`snappy length ${length} is implausible`);
  const out = Buffer.alloc(length);
  let at = 0;
  while (cursor.left > 0) {
    const tag = input[cursor.at++]!;
    let copyLength: number;
    let offset: number;
    switch (tag & 3) {
      case 0: {
        let literal = tag >>> 2;
        if (literal >= 60) {
          const bytes = literal - 59;
          literal = 0;
          for (let i = 0; i < bytes; i++) literal += cursor.take(1)[0]! * 2 ** (8 * i);
        }
        literal += 1;
        if (at + literal > length) throw StorageError.corrupt('snappy literal past the end');
        cursor.take(literal).copy(out, at);
        at += literal;
        continue;
      }
      case 1:
        copyLength = ((tag >>> 2) & 7) + 4;
        offset = ((tag >>> 5) << 8) | cursor.take(1)[0]!;
        break;
      case 2:
        copyLength = (tag >>> 2) + 1;
        offset = cursor.take(2).readUInt16LE(0);
        break;
      default:
        copyLength = (tag >>> 2) + 1;
        offset = cursor.take(4).readUInt32LE(0);
    }
    if (offset === 0 || offset > at || at + copyLength > length) throw StorageError.corrupt('snappy copy out of range');
    for (let i = 0; i < copyLength; i++) out[at + i] = out[at - offset + i]!;
    at += copyLength;
  }
  if (at !== length) throw StorageError.corrupt(`snappy output is ${at} bytes, expected ${length}`);
  return out;
}

// ---- Tables --------------------------------------------------------------------------------------

interface BlockHandle {
  offset: number;
  size: number;
}

function readHandle(cursor: Cursor): BlockHandle {
  return { offset: cursor.varint(), size: cursor.varint() };
}

/** The verified, decompressed contents of one block. */
export function readBlock(file: Buffer, handle: BlockHandle): Buffer {
  const end = handle.offset + handle.size;
  if (end + TRAILER_BYTES > file.length) throw StorageError.corrupt(`block at ${handle.offset} runs past the end of the file`);
  const type = file[end]!;
  const expected = unmaskCrc(file.readUInt32LE(end + 1));
  if (crc32c(file.subarray(handle.offset, end + 1)) !== expected) throw StorageError.corrupt(`block at ${handle.offset} fails its checksum`);
  const contents = file.subarray(handle.offset, end);
  if (type === 0) return contents;
  if (type === 1) return snappyDecompress(contents);
  throw StorageError.corrupt(`block at ${handle.offset} has compression type ${type}`);
}

/** The key/value entries of a block (keys are full internal keys). */
export function blockEntries(block: Buffer): Array<[Buffer, Buffer]> {
  if (block.length < 4) throw StorageError.corrupt('block shorter than its restart count');
  const restarts = block.readUInt32LE(block.length - 4);
  const limit = block.length - 4 - restarts * 4;
  if (limit < 0) throw StorageError.corrupt('block restart array is larger than the block');
  const cursor = new Cursor(block.subarray(0, limit));
  const out: Array<[Buffer, Buffer]> = [];
  let previous = Buffer.alloc(0);
  while (cursor.left > 0) {
    const shared = cursor.varint();
    const unshared = cursor.varint();
    const valueLength = cursor.varint();
    if (shared > previous.length) throw StorageError.corrupt('block entry shares more than the previous key');
    const key = Buffer.concat([previous.subarray(0, shared), cursor.take(unshared)]);
    out.push([key, Buffer.from(cursor.take(valueLength))]);
    previous = key;
  }
  return out;
}

export function parseInternalKey(internal: Buffer): { key: Buffer; sequence: bigint; type: EntryType } {
  if (internal.length < 8) throw StorageError.corrupt('internal key shorter than 8 bytes');
  const tag = internal.readBigUInt64LE(internal.length - 8);
  const type = Number(tag & 0xffn);
  if (type !== EntryType.Value && type !== EntryType.Deletion) throw StorageError.corrupt(`internal key of type ${type}`);
  return { key: internal.subarray(0, internal.length - 8), sequence: tag >> 8n, type };
}

/**
 * Every entry of a table that can be proven intact, and the user-key ranges of the blocks that
 * cannot. A damaged footer or index loses the whole table (`lost` gets one unbounded range; the
 * caller narrows it with the MANIFEST's smallest and largest keys).
 */
export function readTable(file: Buffer, where: string): TableContents {
  let index: Array<[Buffer, Buffer]>;
  try {
    if (file.length < FOOTER_BYTES) throw StorageError.corrupt('shorter than a footer');
    const footer = file.subarray(file.length - FOOTER_BYTES);
    if (footer.readBigUInt64LE(FOOTER_BYTES - 8) !== TABLE_MAGIC) throw StorageError.corrupt('bad table magic');
    const cursor = new Cursor(footer);
    readHandle(cursor); // metaindex: filters only, not needed
    index = blockEntries(readBlock(file, readHandle(cursor)));
  } catch (error) {
    return { entries: [], lost: [{ where: `${where}: footer or index (${(error as Error).message})` }], blocks: 0 };
  }
  const entries: LevelEntry[] = [];
  const lost: LostKeyRange[] = [];
  let previousSeparator: Buffer | undefined;
  for (const [separator, handleBytes] of index) {
    const upper = parseInternalKey(separator).key;
    try {
      for (const [internal, value] of blockEntries(readBlock(file, readHandle(new Cursor(handleBytes))))) {
        const { key, sequence, type } = parseInternalKey(internal);
        entries.push({ key: Buffer.from(key), sequence, type, value });
      }
    } catch (error) {
      const range: LostKeyRange = { lte: Buffer.from(upper), where: `${where}: data block (${(error as Error).message})` };
      if (previousSeparator !== undefined) range.gt = previousSeparator;
      lost.push(range);
    }
    previousSeparator = Buffer.from(upper);
  }
  return { entries, lost, blocks: index.length };
}

/**
 * Where each data block of a table is and which user keys it holds (tests aim damage with it).
 * Throws CORRUPT when the footer or index is damaged.
 */
export function tableBlocks(file: Buffer): Array<{ offsetBytes: number; sizeBytes: number; firstKey: Buffer; lastKey: Buffer }> {
  const footer = file.subarray(file.length - FOOTER_BYTES);
  if (footer.readBigUInt64LE(FOOTER_BYTES - 8) !== TABLE_MAGIC) throw StorageError.corrupt('bad table magic');
  const cursor = new Cursor(footer);
  readHandle(cursor);
  const out: Array<{ offsetBytes: number; sizeBytes: number; firstKey: Buffer; lastKey: Buffer }> = [];
  for (const [, handleBytes] of blockEntries(readBlock(file, readHandle(cursor)))) {
    const handle = readHandle(new Cursor(handleBytes));
    const entries = blockEntries(readBlock(file, handle));
    out.push({ offsetBytes: handle.offset, sizeBytes: handle.size + TRAILER_BYTES, firstKey: parseInternalKey(entries[0]![0]).key, lastKey: parseInternalKey(entries[entries.length - 1]![0]).key });
  }
  return out;
}

// ---- Logs ----------------------------------------------------------------------------------------

/** The records of a LevelDB log file that pass their checksums, reassembled from fragments. */
export function readLogRecords(file: Buffer): { records: Buffer[]; damage: Array<{ offsetBytes: number; reason: string }> } {
  const records: Buffer[] = [];
  const damage: Array<{ offsetBytes: number; reason: string }> = [];
  let pending: Buffer[] | null = null;
  let pendingAt = 0;
  const drop = (offsetBytes: number, reason: string) => {
    damage.push({ offsetBytes, reason });
    pending = null;
  };
  for (let blockStart = 0; blockStart < file.length; blockStart += LOG_BLOCK_BYTES) {
    const blockEnd = Math.min(file.length, blockStart + LOG_BLOCK_BYTES);
    for (let at = blockStart; blockEnd - at >= LOG_HEADER_BYTES; ) {
      const length = file.readUInt16LE(at + 4);
      const type = file[at + 6]!;
      if (type === 0 && length === 0 && file.readUInt32LE(at) === 0) {
        // Zero padding (or a preallocated tail): the rest of this block holds nothing.
        if (file.subarray(at, blockEnd).some((byte) => byte !== 0)) drop(at, 'zeroed record header in the middle of a block');
        break;
      }
      if (at + LOG_HEADER_BYTES + length > blockEnd) {
        drop(at, 'record runs past its block');
        break;
      }
      const data = file.subarray(at + LOG_HEADER_BYTES, at + LOG_HEADER_BYTES + length);
      if (crc32c(data, crc32c(file.subarray(at + 6, at + 7))) !== unmaskCrc(file.readUInt32LE(at))) {
        drop(at, 'record fails its checksum');
        at += LOG_HEADER_BYTES + length;
        continue;
      }
      at += LOG_HEADER_BYTES + length;
      if (type === 1) {
        if (pending !== null) drop(pendingAt, 'fragmented record cut off');
        records.push(Buffer.from(data));
      } else if (type === 2) {
        if (pending !== null) drop(pendingAt, 'fragmented record cut off');
        pending = [Buffer.from(data)];
        pendingAt = at;
      } else if (type === 3 || type === 4) {
        if (pending === null) {
          damage.push({ offsetBytes: at, reason: 'fragment without its first part' });
          continue;
        }
        (pending as Buffer[]).push(Buffer.from(data));
        if (type === 4) {
          records.push(Buffer.concat(pending));
          pending = null;
        }
      } else {
        drop(at, `record type ${type}`);
      }
    }
  }
  if (pending !== null) damage.push({ offsetBytes: pendingAt, reason: 'last record cut off' });
  return { records, damage };
}

export function parseWriteBatch(record: Buffer): { sequence: bigint; entries: LevelEntry[] } {
  if (record.length < 12) throw StorageError.corrupt('write batch shorter than its header');
  const sequence = record.readBigUInt64LE(0);
  const count = record.readUInt32LE(8);
  const cursor = new Cursor(record, 12);
  const entries: LevelEntry[] = [];
  for (let i = 0; i < count; i++) {
    const type = cursor.take(1)[0]!;
    const key = Buffer.from(cursor.lengthPrefixed());
    if (type === EntryType.Value) entries.push({ key, sequence: sequence + BigInt(i), type, value: Buffer.from(cursor.lengthPrefixed()) });
    else if (type === EntryType.Deletion) entries.push({ key, sequence: sequence + BigInt(i), type, value: Buffer.alloc(0) });
    else throw StorageError.corrupt(`write batch operation of type ${type}`);
  }
  if (cursor.left !== 0) throw StorageError.corrupt('write batch has bytes after its last operation');
  return { sequence, entries };
}

export function readLog(file: Buffer): LogContents {
  const { records, damage } = readLogRecords(file);
  const batches: LogContents['batches'] = [];
  for (const record of records) {
    try {
      batches.push(parseWriteBatch(record));
    } catch (error) {
      damage.push({ offsetBytes: -1, reason: (error as Error).message });
    }
  }
  return { batches, damage };
}

// ---- MANIFEST ------------------------------------------------------------------------------------

export function readManifest(file: Buffer): ManifestContents {
  const { records, damage } = readLogRecords(file);
  const live = new Map<string, TableMeta>();
  let logNumber = 0;
  let lastSequence = 0n;
  const problems = damage.map((item) => `MANIFEST offset ${item.offsetBytes}: ${item.reason}`);
  for (const record of records) {
    try {
      const cursor = new Cursor(record);
      while (cursor.left > 0) {
        const tag = cursor.varint();
        switch (tag) {
          case 1: // comparator name
            cursor.lengthPrefixed();
            break;
          case 2:
            logNumber = cursor.varint();
            break;
          case 3: // next file number
          case 9: // previous log number
            cursor.varint();
            break;
          case 4:
            lastSequence = BigInt(cursor.varint());
            break;
          case 5: // compaction pointer
            cursor.varint();
            cursor.lengthPrefixed();
            break;
          case 6: {
            const level = cursor.varint();
            live.delete(`${level}/${cursor.varint()}`);
            break;
          }
          case 7: {
            const level = cursor.varint();
            const number = cursor.varint();
            const sizeBytes = cursor.varint();
            const smallest = parseInternalKey(Buffer.from(cursor.lengthPrefixed())).key;
            const largest = parseInternalKey(Buffer.from(cursor.lengthPrefixed())).key;
            live.set(`${level}/${number}`, { level, number, sizeBytes, smallest, largest });
            break;
          }
          default:
            throw StorageError.corrupt(`version edit tag ${tag}`);
        }
      }
    } catch (error) {
      problems.push(`MANIFEST: ${(error as Error).message}`);
    }
  }
  return { tables: [...live.values()], logNumber, lastSequence, damage: problems };
}

// ---- A whole directory ---------------------------------------------------------------------------

/** Where a version came from, so that versions can be ordered (see `newerSource`). */
export interface EntrySource {
  /** 'log' versions are newer than every table; tables order by level, then (level 0) number. */
  kind: 'log' | 'table';
  level: number;
  number: number;
}

export interface SalvagedDirectory {
  /** Every intact version, with where it came from. */
  versions: Array<LevelEntry & { source: EntrySource }>;
  /** Key ranges of damaged table blocks, with the table they were in. */
  lost: Array<LostKeyRange & { source: EntrySource }>;
  /** Log damage: whole batches are gone, whatever keys they held. */
  logDamage: Array<{ file: string; offsetBytes: number; reason: string }>;
  /** MANIFEST problems (none when it read cleanly). */
  manifestDamage: string[];
  files: { tables: number; logs: number; bytes: number };
}

/**
 * Reads every LevelDB file of `directory`. Tables the MANIFEST lists get their level; tables it
 * does not list (or all, when it cannot be read) count as level 0 by file number, which orders
 * them newest first as LevelDB's repair does.
 */
export function readLevelDbDirectory(directory: string): SalvagedDirectory {
  const names = fs.readdirSync(directory);
  const manifestName = currentManifest(directory, names);
  const manifest = manifestName === null ? null : readManifest(fs.readFileSync(path.join(directory, manifestName)));
  const levels = new Map<number, TableMeta>((manifest?.tables ?? []).map((table) => [table.number, table]));
  const result: SalvagedDirectory = { versions: [], lost: [], logDamage: [], manifestDamage: manifest === null ? ['no readable CURRENT/MANIFEST'] : manifest.damage, files: { tables: 0, logs: 0, bytes: 0 } };
  for (const name of names.sort()) {
    const match = /^(\d+)\.(ldb|sst|log)$/.exec(name);
    if (match === null) continue;
    const number = Number(match[1]);
    const bytes = fs.readFileSync(path.join(directory, name));
    result.files.bytes += bytes.length;
    if (match[2] === 'log') {
      // Logs older than the MANIFEST's log number were already turned into tables.
      if (manifest !== null && manifest.damage.length === 0 && number < manifest.logNumber) continue;
      result.files.logs += 1;
      const log = readLog(bytes);
      const source: EntrySource = { kind: 'log', level: -1, number };
      for (const batch of log.batches) for (const entry of batch.entries) result.versions.push({ ...entry, source });
      for (const item of log.damage) result.logDamage.push({ file: name, ...item });
      continue;
    }
    const meta = levels.get(number);
    // A table the MANIFEST does not list is a leftover (compacted away, or written and never
    // installed): its versions are older than, or the same as, the listed tables' ones.
    if (manifest !== null && manifest.damage.length === 0 && meta === undefined) continue;
    result.files.tables += 1;
    const source: EntrySource = { kind: 'table', level: meta?.level ?? 0, number };
    const table = readTable(bytes, name);
    for (const entry of table.entries) result.versions.push({ ...entry, source });
    for (const range of table.lost) {
      const bounded = range.gt === undefined && range.lte === undefined && meta !== undefined ? { ...range, lte: meta.largest, gt: justBefore(meta.smallest) } : range;
      result.lost.push({ ...bounded, source });
    }
  }
  return result;
}

function currentManifest(directory: string, names: string[]): string | null {
  try {
    const name = fs.readFileSync(path.join(directory, 'CURRENT'), 'utf8').trim();
    if (names.includes(name)) return name;
  } catch {
    // fall through
  }
  return null;
}

/**
 * A key ordered just before `key` for a `gt` bound, so that `key` itself is inside the range: the
 * key with its last byte decremented and 0xff appended (or undefined for the empty key or one of
 * zero bytes only, meaning "from the start").
 */
function justBefore(key: Buffer): Buffer | undefined {
  let end = key.length;
  while (end > 0 && key[end - 1] === 0) end -= 1;
  if (end === 0) return undefined;
  const out = Buffer.concat([key.subarray(0, end), Buffer.from([0xff])]);
  out[end - 1] = out[end - 1]! - 1;
  return out;
}

/** True when `a` is a newer version than `b` of the same key (LevelDB's own order). */
export function newerVersion(a: { sequence: bigint }, b: { sequence: bigint }): boolean {
  return a.sequence > b.sequence;
}

/**
 * True when a version from `source` is certainly newer than anything a damaged block of
 * `damaged` held: versions in a log are newer than every table, and a lower level is newer than
 * a higher one (level 0 tables by file number). Anything else may be older.
 */
export function newerSource(source: EntrySource, damaged: EntrySource): boolean {
  if (damaged.kind === 'log') return false;
  if (source.kind === 'log') return true;
  if (source.level !== damaged.level) return source.level < damaged.level;
  return source.level === 0 && source.number > damaged.number;
}

export function inLostRange(key: Buffer, range: LostKeyRange): boolean {
  if (range.gt !== undefined && Buffer.compare(key, range.gt) <= 0) return false;
  if (range.lte !== undefined && Buffer.compare(key, range.lte) > 0) return false;
  return true;
}
