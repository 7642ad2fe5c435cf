/**
 * Metadata key encodings: pure, symmetric encode/decode pairs with no I/O.
 *
 * LevelDB orders keys by unsigned byte comparison, so every integer is written big-endian at a
 * fixed width: the byte order of two encoded keys is then the numeric order of what they encode,
 * and a range of keys is a range of numbers. Composite keys concatenate fixed-width fields, most
 * significant first, so that all keys sharing a leading field (all map pages of one volume) sit
 * next to each other and `prefixRange` finds them.
 *
 * Formats:
 *   u32Key(n)                          4 bytes, n big-endian, 0 <= n < 2^32
 *   u64Key(n)                          8 bytes, n big-endian, 0 <= n < 2^53 (a safe JS integer)
 *   volumeMapKey(volumeId, pageIndex)  12 bytes: u32 volume id, then u64 map page index
 *
 * The 'analytics' sublevel (mgmt/analytics.ts) keeps three kinds of key, told apart by a first byte:
 *   capacitySampleKey(tier, timeMs)     10 bytes: 0x01, u8 tier, u64 sample time (ms since epoch)
 *   writeAgeKey(volumeId, segmentIndex) 9 bytes: 0x02, u32 volume id, u32 write-age segment
 *   TRACKING_START_KEY                  1 byte: 0x03 (when the array began keeping analytics)
 * so all samples of one tier sit together in time order, and all segments of one volume together.
 *
 * Encoding an out-of-range number is a programmer error (assertion). Decoding bytes of the wrong
 * length, or a u64 beyond 2^53, means the stored metadata is damaged: `StorageError` `CORRUPT`.
 */
import { fail } from '../common/assert.js';
import { StorageError } from '../common/errors.js';

const TWO_POW_32 = 0x1_0000_0000;
/** The largest high word a u64 key may hold and still decode to a safe integer (2^53 - 1). */
const U64_HIGH_WORD_MAX = 0x1f_ffff;

export const U32_KEY_BYTES = 4;
export const U64_KEY_BYTES = 8;
export const VOLUME_MAP_KEY_BYTES = U32_KEY_BYTES + U64_KEY_BYTES;

export interface VolumeMapKey {
  volumeId: number;
  mapPageIndex: number;
}

/** Bounds that select every key starting with a prefix: `gte` inclusive, `lt` exclusive. */
export interface PrefixRange {
  gte: Buffer;
  /** Absent when no key is greater than every key with the prefix (the prefix is all 0xff). */
  lt?: Buffer;
}

function checkU32(n: number, what: string): void {
  if (!(Number.isInteger(n) && n >= 0 && n < TWO_POW_32)) fail(`${what} ${n} is not a whole number in [0, 2^32)`);
}

function checkU64(n: number, what: string): void {
  if (!(Number.isSafeInteger(n) && n >= 0)) fail(`${what} ${n} is not a whole number in [0, 2^53)`);
}

function checkLength(key: Uint8Array, lengthBytes: number, what: string): Buffer {
  if (key.length !== lengthBytes) {
    throw StorageError.corrupt(`${what} key is ${key.length} bytes long, expected ${lengthBytes}`);
  }
  return Buffer.from(key.buffer, key.byteOffset, key.byteLength);
}

function writeU64(target: Buffer, n: number, offsetBytes: number): void {
  target.writeUInt32BE(Math.floor(n / TWO_POW_32), offsetBytes);
  target.writeUInt32BE(n % TWO_POW_32, offsetBytes + 4);
}

function readU64(source: Buffer, offsetBytes: number, what: string): number {
  const high = source.readUInt32BE(offsetBytes);
  if (high > U64_HIGH_WORD_MAX) {
    throw StorageError.corrupt(`${what} key holds a number above 2^53 (high word 0x${high.toString(16)})`);
  }
  return high * TWO_POW_32 + source.readUInt32BE(offsetBytes + 4);
}

export function u32Key(n: number): Buffer {
  checkU32(n, 'u32 key');
  const key = Buffer.allocUnsafe(U32_KEY_BYTES);
  key.writeUInt32BE(n, 0);
  return key;
}

export function decodeU32Key(key: Uint8Array): number {
  return checkLength(key, U32_KEY_BYTES, 'u32').readUInt32BE(0);
}

export function u64Key(n: number): Buffer {
  checkU64(n, 'u64 key');
  const key = Buffer.allocUnsafe(U64_KEY_BYTES);
  writeU64(key, n, 0);
  return key;
}

export function decodeU64Key(key: Uint8Array): number {
  return readU64(checkLength(key, U64_KEY_BYTES, 'u64'), 0, 'u64');
}

export function volumeMapKey(volumeId: number, mapPageIndex: number): Buffer {
  checkU32(volumeId, 'volume id');
  checkU64(mapPageIndex, 'map page index');
  const key = Buffer.allocUnsafe(VOLUME_MAP_KEY_BYTES);
  key.writeUInt32BE(volumeId, 0);
  writeU64(key, mapPageIndex, U32_KEY_BYTES);
  return key;
}

export function decodeVolumeMapKey(key: Uint8Array): VolumeMapKey {
  const bytes = checkLength(key, VOLUME_MAP_KEY_BYTES, 'volume map');
  return { volumeId: bytes.readUInt32BE(0), mapPageIndex: readU64(bytes, U32_KEY_BYTES, 'volume map') };
}

/**
 * The range of every key that starts with `prefix`. The upper bound is the prefix with trailing
 * 0xff bytes dropped and its last byte incremented: the smallest key greater than every key with
 * the prefix. An empty or all-0xff prefix has no upper bound.
 */
export function prefixRange(prefix: Uint8Array): PrefixRange {
  const gte = Buffer.from(prefix);
  let end = gte.length;
  while (end > 0 && gte[end - 1] === 0xff) end -= 1;
  if (end === 0) return { gte };
  const lt = Buffer.from(gte.subarray(0, end));
  lt[end - 1] = lt[end - 1]! + 1;
  return { gte, lt };
}

/** Every map page of one volume, in page order. */
export function volumeMapRange(volumeId: number): PrefixRange {
  return prefixRange(u32Key(volumeId));
}

const CAPACITY_SAMPLE_KIND = 0x01;
const WRITE_AGE_KIND = 0x02;
export const CAPACITY_SAMPLE_KEY_BYTES = 2 + U64_KEY_BYTES;
export const WRITE_AGE_KEY_BYTES = 1 + 2 * U32_KEY_BYTES;
export const TRACKING_START_KEY = Buffer.from([0x03]);

export function capacitySampleKey(tier: number, timeMs: number): Buffer {
  if (!(Number.isInteger(tier) && tier >= 0 && tier < 256)) fail(`capacity sample tier ${tier} is not a byte`);
  checkU64(timeMs, 'capacity sample time');
  const key = Buffer.allocUnsafe(CAPACITY_SAMPLE_KEY_BYTES);
  key[0] = CAPACITY_SAMPLE_KIND;
  key[1] = tier;
  writeU64(key, timeMs, 2);
  return key;
}

export function decodeCapacitySampleKey(key: Uint8Array): { tier: number; timeMs: number } {
  const bytes = checkLength(key, CAPACITY_SAMPLE_KEY_BYTES, 'capacity sample');
  if (bytes[0] !== CAPACITY_SAMPLE_KIND) throw StorageError.corrupt(`capacity sample key starts with 0x${bytes[0]!.toString(16)}`);
  return { tier: bytes[1]!, timeMs: readU64(bytes, 2, 'capacity sample') };
}

/** Every sample of one tier, oldest first. */
export function capacityTierRange(tier: number): PrefixRange {
  return prefixRange(capacitySampleKey(tier, 0).subarray(0, 2));
}

export function writeAgeKey(volumeId: number, segmentIndex: number): Buffer {
  checkU32(volumeId, 'volume id');
  checkU32(segmentIndex, 'write-age segment');
  const key = Buffer.allocUnsafe(WRITE_AGE_KEY_BYTES);
  key[0] = WRITE_AGE_KIND;
  key.writeUInt32BE(volumeId, 1);
  key.writeUInt32BE(segmentIndex, 1 + U32_KEY_BYTES);
  return key;
}

export function decodeWriteAgeKey(key: Uint8Array): { volumeId: number; segmentIndex: number } {
  const bytes = checkLength(key, WRITE_AGE_KEY_BYTES, 'write age');
  if (bytes[0] !== WRITE_AGE_KIND) throw StorageError.corrupt(`write-age key starts with 0x${bytes[0]!.toString(16)}`);
  return { volumeId: bytes.readUInt32BE(1), segmentIndex: bytes.readUInt32BE(1 + U32_KEY_BYTES) };
}

/** Every write-age segment of every volume. */
export function writeAgeRange(): PrefixRange {
  return prefixRange(Buffer.from([WRITE_AGE_KIND]));
}
