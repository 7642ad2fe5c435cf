/** Small in-memory exports and byte builders shared by the protocol unit tests. */
import { BASE_ALLOCATION, STATE_HOLE, STATE_ZERO, submitThroughPromises, type BlockDevice, type ExportCatalog, type ExportEntry, type IoRequest } from '../../src/common/block-device.js';
import * as C from '../../src/protocol/constants.js';

export class MemoryDevice implements BlockDevice {
  readonly metaContexts = [BASE_ALLOCATION];
  readonly data: Buffer;
  flushes = 0;
  constructor(readonly sizeBytes: number, readonly readOnly = false) {
    this.data = Buffer.alloc(sizeBytes);
  }
  async read(offset: number, length: number) {
    return [{ lengthBytes: length, data: Buffer.from(this.data.subarray(offset, offset + length)) }];
  }
  async write(offset: number, data: Buffer) {
    data.copy(this.data, offset);
  }
  async trim(offset: number, length: number) {
    this.data.fill(0, offset, offset + length);
  }
  async writeZeroes(offset: number, length: number) {
    this.data.fill(0, offset, offset + length);
  }
  async flush() {
    this.flushes += 1;
  }
  async blockStatus(_context: string, _offset: number, length: number) {
    return [{ lengthBytes: length, flags: STATE_HOLE | STATE_ZERO }];
  }
  async cache() {}
  submit(request: IoRequest) {
    submitThroughPromises(this, request);
  }
}

export function catalogOf(...entries: ExportEntry[]): ExportCatalog {
  return {
    list: () => entries.map(({ name, description, accessList }) => ({ name, description, accessList })),
    lookup: (name) => entries.find((entry) => entry.name === (name === '' ? entries[0]!.name : name)),
  };
}

export function clientFlags(flags = C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(flags >>> 0, 0);
  return out;
}

export function option(type: number, data: Buffer = Buffer.alloc(0), lengthOverride?: number): Buffer {
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(C.IHAVEOPT, 0);
  header.writeUInt32BE(type, 8);
  header.writeUInt32BE(lengthOverride ?? data.length, 12);
  return Buffer.concat([header, data]);
}

export function infoRequest(name: string, infos: number[] = []): Buffer {
  const nameBytes = Buffer.from(name);
  const out = Buffer.alloc(4 + nameBytes.length + 2 + 2 * infos.length);
  out.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(out, 4);
  out.writeUInt16BE(infos.length, 4 + nameBytes.length);
  infos.forEach((info, i) => out.writeUInt16BE(info, 6 + nameBytes.length + 2 * i));
  return out;
}

export function metaContextRequest(name: string, queries: string[]): Buffer {
  const parts = [u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length)];
  for (const query of queries) parts.push(u32(Buffer.byteLength(query)), Buffer.from(query));
  return Buffer.concat(parts);
}

export function u32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value >>> 0, 0);
  return out;
}

export function request(type: number, options: { flags?: number; cookie?: bigint; offset?: bigint; length?: number; payload?: Buffer } = {}): Buffer {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(C.NBD_REQUEST_MAGIC, 0);
  header.writeUInt16BE(options.flags ?? 0, 4);
  header.writeUInt16BE(type, 6);
  header.writeBigUInt64BE(options.cookie ?? 1n, 8);
  header.writeBigUInt64BE(options.offset ?? 0n, 16);
  header.writeUInt32BE(options.length ?? options.payload?.length ?? 0, 24);
  return options.payload ? Buffer.concat([header, options.payload]) : header;
}

/** Parsed option replies out of a byte stream. */
export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export function parseOptionReplies(bytes: Buffer): OptionReply[] {
  const replies: OptionReply[] = [];
  let at = 0;
  while (at + 20 <= bytes.length) {
    if (bytes.readBigUInt64BE(at) !== C.NBD_OPT_REPLY_MAGIC) throw new Error(`bad reply magic at ${at}`);
    const length = bytes.readUInt32BE(at + 16);
    replies.push({ option: bytes.readUInt32BE(at + 8), type: bytes.readUInt32BE(at + 12), data: bytes.subarray(at + 20, at + 20 + length) });
    at += 20 + length;
  }
  if (at !== bytes.length) throw new Error(`trailing ${bytes.length - at} bytes`);
  return replies;
}
