/** A read-only MAP_SHARED mapping of `length` bytes of `fd` from `offset` (page-aligned; at most 4 GiB), unmapped when collected. */
export function map(fd: number, offset: number, length: number): Buffer;
/** madvise(MADV_DONTNEED) over the whole mapping: its pages leave the resident set, not the page cache. */
export function dropResident(mapping: Buffer): void;
/**
 * XXH64 of `data` with the seed seedHigh * 2^32 + seedLow: written big-endian at
 * out[outOffset..+8] unless `out` is null; returns its low 32 bits.
 */
export function hashInto(data: Uint8Array, seedHigh: number, seedLow: number, out: Uint8Array | null, outOffset: number): number;
/**
 * `hashInto` of a 4096-byte block into `out` (required), plus the block's incompressibility sample
 * (the rule of src/reduce/codec.ts): the hash's low 32 bits, plus 2^32 when the block looks random.
 */
export function hashAndSample(block: Uint8Array, seedHigh: number, seedLow: number, out: Uint8Array, outOffset: number): number;
/**
 * The main thread's reduction of `count` 4 KiB blocks lying back to back in `blocks` (see
 * nand_map.c): per block, at `first + i` of the columns, its pattern word, or its keyed XXH64
 * (fingerprints, big-endian), the hash's low 32 bits (hashLow) and the sample (random: 1 looks
 * random, 2 worth compressing).
 */
export function reduceRun(
  blocks: Uint8Array,
  count: number,
  seedHigh: number,
  seedLow: number,
  fingerprints: Uint8Array,
  hashLow: Uint32Array,
  random: Uint8Array,
  pattern: Uint8Array,
  patternHigh: Uint32Array,
  patternLow: Uint32Array,
  first: number,
): void;
/**
 * Seals the page at buffer[at..at + pageBytes] (its payload in place): zeroes the padding after
 * `usedBytes` of payload, writes the page header of src/ftl/page-format.ts and its checksum (XXH64
 * of bytes 4 to 16 + usedBytes with seed seedHigh * 2^32 + seedLow, low 32 bits); returns the checksum.
 */
export function sealPage(buffer: Uint8Array, at: number, pageBytes: number, magic: number, pageIndex: number, sequence: number, usedBytes: number, seedHigh: number, seedLow: number): number;
/** XXH64 of `data` with `seed`, the same function as @node-rs/xxhash's xxh64 (for tests). */
export function xxh64(data: Uint8Array, seed: bigint): bigint;
/**
 * Copies and verifies a batch of raw records read through mapping `segments` (see nand_map.c for
 * the layout of `plan`: rows of [page offset in the image, header offset in the page's payload,
 * stored bytes, chunk id, index into destinations]). Returns the first row that failed
 * verification, or -1.
 */
export function copyRecords(
  segments: readonly Buffer[],
  segmentBytes: number,
  pageBytes: number,
  pageHeaderBytes: number,
  recordHeaderBytes: number,
  seed: bigint,
  plan: Float64Array,
  count: number,
  destinations: ReadonlyArray<Buffer | undefined>,
): number;
/**
 * copyRecords for pages read with pread from `fd` (the plan's offsets are the file's): the same
 * plan and result; a failed pread throws an Error whose code is EIO (or ENOMEM, EBADF).
 */
export function readRecords(
  fd: number,
  pageBytes: number,
  pageHeaderBytes: number,
  recordHeaderBytes: number,
  seed: bigint,
  plan: Float64Array,
  count: number,
  destinations: ReadonlyArray<Buffer | undefined>,
): number;
/**
 * glibc's mallopt: a fixed mmap threshold (so glibc no longer raises it), a trim threshold and an
 * arena count, in bytes and count; a value below 0 leaves that one alone. False where the C
 * library is not glibc, or a setting failed.
 */
export function tuneMalloc(mmapThresholdBytes: number, trimThresholdBytes: number, arenaMax: number): boolean;
/** glibc's malloc_trim(0): free memory of every arena back to the kernel. False if none was, or not glibc. */
export function trimMalloc(): boolean;
/**
 * madvise(MADV_HUGEPAGE) over the whole 2 MiB pages of a typed array's buffer from the array's
 * first byte on: transparent huge pages for a large table read at random (where THP is in
 * "madvise" mode). The bytes advised; 0 when the array is too small or the kernel refused.
 */
export function adviseHugePages(array: ArrayBufferView): number;
/**
 * AES-256-XTS of `data` (at least 16 bytes) in place, encrypting or decrypting, with the tweak
 * chunkId as u64 little-endian zero-padded to 16 bytes (src/ftl/record-cipher.ts); `key` is the
 * 64-byte XTS key. Throws a RangeError when the cipher fails.
 */
export function xtsBuffer(key: Uint8Array, encrypt: boolean, data: Uint8Array, chunkId: number): void;
/**
 * xtsBuffer over the first `count` rows of a copyRecords/readRecords plan: row i's destination
 * (`destinations[plan[5 * i + 4]]`, exactly `plan[5 * i + 2]` bytes, at least 16) in place, with
 * tweak `plan[5 * i + 3]` (the chunk id). One call per batch. Throws a RangeError when the cipher
 * fails, a TypeError on bad arguments.
 */
export function xtsRecords(key: Uint8Array, encrypt: boolean, plan: Float64Array, count: number, destinations: ReadonlyArray<Uint8Array | undefined>): void;
/**
 * Which implementation xtsBuffer and xtsRecords use: 'vaes' (xts_vaes.c: VAES on 512-bit vectors,
 * where the CPU has it) or 'openssl'; with `use`, switches first (every thread; 'vaes' only where supported).
 */
export function xtsImplementation(use?: 'vaes' | 'openssl'): 'vaes' | 'openssl';
