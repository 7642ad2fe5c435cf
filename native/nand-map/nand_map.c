/*
 * nand_map: read-only shared memory mappings of a file, for pstorage's NAND image.
 *
 * Node has no mmap, and the one npm package for it (mmap-io) no longer builds on Node 20, so this
 * is the smallest addon that does the job, written against Node-API (ABI-stable across Node
 * versions): map(fd, offset, length) returns a Buffer over mmap(PROT_READ, MAP_SHARED) of
 * `length` bytes of the file from `offset` (a multiple of the page size); the mapping is unmapped
 * when that Buffer is garbage-collected. A Buffer holds at most 4 GiB in Node 20, so a bigger file
 * is mapped in several pieces.
 * dropResident(buffer) calls madvise(MADV_DONTNEED) on the whole pages of a mapping (or of a
 * view of part of one): they leave the process's page tables (and its resident set) but stay in
 * the page cache.
 *
 * copyRecords(...) is the FTL's read of a batch of raw records through the mapping, in one call:
 * for each record it checks the header (chunk id, stored length), copies the payload (which may
 * continue past the next page's header) to its destination and verifies the record checksum (the
 * low 32 bits of XXH64 with the array's seed, as page-format.ts computes it with @node-rs/xxhash).
 * Done from JavaScript, a 128 KiB read of 32 scattered records spent a third of its time on
 * per-record overhead (BigInt results, views, header reads) and on cache and TLB misses taken one
 * record at a time; here every record's first lines are prefetched before the first copy, so the
 * misses overlap. The record and page formats are page-format.ts's; the layout of `plan` is
 * ftl.ts's (readMappedRecords). Bounds are checked here too: a bad plan throws, never reads
 * outside a mapping or writes outside a destination. readRecords(...) does the same for pages that
 * are not mapped (the mapping holds only part of the image, see file-nand.ts): one pread per
 * record into scratch memory, then the same checks and copy.
 *
 * Reading a page of a mapping whose file cannot be read (a disk error) raises SIGBUS, which ends
 * the process: the caller accepts that, see file-nand.ts.
 *
 * tuneMalloc(mmapThreshold, trimThreshold, arenaMax) and trimMalloc() are glibc's mallopt and
 * malloc_trim, for the memory budget of `pstorage serve` (see src/common/process-memory.ts): the
 * process that runs the array is its caller's, so MALLOC_* environment variables cannot be set
 * for it. Where the C library is not glibc they do nothing and return false.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <node_api.h>
#include <openssl/evp.h>
#include "xts_vaes.h"
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdint.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHECK(env, call)                                          \
  do {                                                            \
    if ((call) != napi_ok) {                                      \
      napi_throw_error((env), NULL, "nand_map: Node-API failure"); \
      return NULL;                                                \
    }                                                             \
  } while (0)

static napi_value make_int(napi_env env, int64_t value) {
  napi_value result;
  if (napi_create_int64(env, value, &result) != napi_ok) return NULL;
  return result;
}

static void unmap(napi_env env, void* data, void* hint) {
  (void)env;
  munmap(data, (size_t)(uintptr_t)hint);
}

static napi_value map(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  int64_t offset;
  int64_t length;
  if (argc != 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &offset) != napi_ok ||
      napi_get_value_int64(env, argv[2], &length) != napi_ok || fd < 0 || offset < 0 || length <= 0) {
    napi_throw_type_error(env, NULL, "map(fd, offset, length) takes a file descriptor, an offset and a positive length");
    return NULL;
  }
  void* address = mmap(NULL, (size_t)length, PROT_READ, MAP_SHARED, fd, (off_t)offset);
  if (address == MAP_FAILED) {
    napi_value code, message, error;
    CHECK(env, napi_create_string_utf8(env, errno == ENOMEM ? "ENOMEM" : "EMAP", NAPI_AUTO_LENGTH, &code));
    CHECK(env, napi_create_string_utf8(env, strerror(errno), NAPI_AUTO_LENGTH, &message));
    CHECK(env, napi_create_error(env, code, message, &error));
    napi_throw(env, error);
    return NULL;
  }
  /*
   * No MADV_RANDOM: besides read-ahead it turns off the kernel's fault-around, which maps up to 16
   * neighbouring page-cache pages per fault; without it every 4 KiB page of a record read after
   * dropResident() was a fault of its own.
   */
  napi_value buffer;
  if (napi_create_external_buffer(env, (size_t)length, address, unmap, (void*)(uintptr_t)length, &buffer) != napi_ok) {
    munmap(address, (size_t)length);
    napi_throw_error(env, NULL, "nand_map: cannot wrap the mapping in a Buffer");
    return NULL;
  }
  return buffer;
}

static napi_value drop_resident(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void* data;
  size_t length;
  if (argc != 1 || napi_get_buffer_info(env, argv[0], &data, &length) != napi_ok) {
    napi_throw_type_error(env, NULL, "dropResident(buffer) takes a Buffer from map()");
    return NULL;
  }
  /* A view of part of a mapping: only the whole pages inside it. */
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t start = ((uintptr_t)data + page - 1) & ~(page - 1);
  uintptr_t end = ((uintptr_t)data + length) & ~(page - 1);
  if (end > start) madvise((void*)start, end - start, MADV_DONTNEED);
  return NULL;
}

/* ---- XXH64 (Yann Collet's xxHash, 64-bit variant), written from its specification ---- */

static const uint64_t P1 = 0x9E3779B185EBCA87ULL;
static const uint64_t P2 = 0xC2B2AE3D27D4EB4FULL;
static const uint64_t P3 = 0x165667B19E3779F9ULL;
static const uint64_t P4 = 0x85EBCA77C2B2AE63ULL;
static const uint64_t P5 = 0x27D4EB2F165667C5ULL;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "nand_map: XXH64 here reads little-endian words natively"
#endif
static inline uint64_t read64le(const uint8_t* p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t read32le(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint32_t read32be(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return __builtin_bswap32(v); }
static inline uint64_t xxh_round(uint64_t acc, uint64_t input) {
  acc += input * P2;
  acc = rotl64(acc, 31);
  return acc * P1;
}
static inline uint64_t xxh_merge(uint64_t acc, uint64_t value) {
  acc ^= xxh_round(0, value);
  return acc * P1 + P4;
}

static uint64_t xxh64(const uint8_t* data, size_t length, uint64_t seed) {
  const uint8_t* p = data;
  const uint8_t* end = data + length;
  uint64_t h;
  if (length >= 32) {
    uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
    const uint8_t* limit = end - 32;
    do {
      v1 = xxh_round(v1, read64le(p));
      v2 = xxh_round(v2, read64le(p + 8));
      v3 = xxh_round(v3, read64le(p + 16));
      v4 = xxh_round(v4, read64le(p + 24));
      p += 32;
    } while (p <= limit);
    h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
    h = xxh_merge(h, v1);
    h = xxh_merge(h, v2);
    h = xxh_merge(h, v3);
    h = xxh_merge(h, v4);
  } else {
    h = seed + P5;
  }
  h += (uint64_t)length;
  for (; p + 8 <= end; p += 8) {
    h ^= xxh_round(0, read64le(p));
    h = rotl64(h, 27) * P1 + P4;
  }
  if (p + 4 <= end) {
    h ^= (uint64_t)read32le(p) * P1;
    h = rotl64(h, 23) * P2 + P3;
    p += 4;
  }
  for (; p < end; p++) {
    h ^= (uint64_t)(*p) * P5;
    h = rotl64(h, 11) * P1;
  }
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

/* xxh64(buffer, seed: bigint) -> bigint: the same hash, so tests can hold it against @node-rs/xxhash. */
static napi_value xxh64_js(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void* data;
  size_t length;
  uint64_t seed;
  bool lossless;
  if (argc != 2 || napi_get_buffer_info(env, argv[0], &data, &length) != napi_ok || napi_get_value_bigint_uint64(env, argv[1], &seed, &lossless) != napi_ok) {
    napi_throw_type_error(env, NULL, "xxh64(buffer, seed) takes a Buffer and a bigint");
    return NULL;
  }
  napi_value result;
  CHECK(env, napi_create_bigint_uint64(env, xxh64((const uint8_t*)data, length, seed), &result));
  return result;
}

/* The bytes of a Uint8Array (a Buffer or any view), or NULL. */
static uint8_t* bytes_of(napi_env env, napi_value value, size_t* length) {
  napi_typedarray_type type;
  void* data;
  napi_value buffer;
  size_t offset;
  if (napi_get_typedarray_info(env, value, &type, length, &data, &buffer, &offset) != napi_ok || type != napi_uint8_array) return NULL;
  return (uint8_t*)data;
}

/*
 * The incompressibility sample of src/reduce/codec.ts (`looksIncompressible`), for a 4 KiB block:
 * 127 bytes, one in each 32-byte stretch at a varying offset, and the 4-byte word 8 bytes after
 * each. A block looks random when no sampled word repeats and more than 80 distinct byte values
 * were seen. The constants and the word hash must stay those of codec.ts: the estimator applies
 * the same rule, and test/reduce/pattern-codec.test.ts compares the two on many blocks.
 */
static int looks_incompressible(const uint8_t* block) {
  /* Byte values seen as a 256-bit set, without a branch per new value (taken at random, those
   * mispredictions were most of the cost); sampled words with a "used" bit above them. */
  uint64_t seen[4] = {0, 0, 0, 0};
  uint64_t sample_words[256];
  memset(sample_words, 0, sizeof sample_words);
  const uint64_t tag = (uint64_t)1 << 32;
  for (int k = 0; k < 127; k++) {
    int i = 32 * k + ((k * 7) & 31);
    uint8_t byte = block[i];
    seen[byte >> 6] |= (uint64_t)1 << (byte & 63);
    int at = i + 8 <= 4092 ? i + 8 : i - 8;
    uint32_t word = (uint32_t)block[at] | ((uint32_t)block[at + 1] << 8) | ((uint32_t)block[at + 2] << 16) | ((uint32_t)block[at + 3] << 24);
    uint32_t slot = (word * 0x9e3779b1u) >> 24;
    uint64_t entry = tag | word;
    if (sample_words[slot] == entry) return 0;
    sample_words[slot] = entry;
  }
  int distinct = __builtin_popcountll(seen[0]) + __builtin_popcountll(seen[1]) + __builtin_popcountll(seen[2]) + __builtin_popcountll(seen[3]);
  return distinct > 80;
}

/*
 * The two hash calls, hashInto and (with `sample`) hashAndSample, which also needs a 4096-byte
 * block and an `out`, and adds 2^32 to the result when the block looks random.
 */
static napi_value hash_call(napi_env env, napi_callback_info info, int sample) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  size_t length = 0, out_length = 0;
  uint32_t seed_high, seed_low, out_offset = 0;
  napi_valuetype out_type = napi_null;
  uint8_t* data = argc == 5 ? bytes_of(env, argv[0], &length) : NULL;
  if (data == NULL || napi_get_value_uint32(env, argv[1], &seed_high) != napi_ok || napi_get_value_uint32(env, argv[2], &seed_low) != napi_ok ||
      napi_typeof(env, argv[3], &out_type) != napi_ok || (sample && (length != 4096 || out_type == napi_null))) {
    napi_throw_type_error(env, NULL,
                          sample ? "hashAndSample(block, seedHigh, seedLow, out, outOffset) takes a 4096-byte Uint8Array, two u32, a Uint8Array and an offset"
                                 : "hashInto(data, seedHigh, seedLow, out, outOffset) takes a Uint8Array, two u32, a Uint8Array or null, and an offset");
    return NULL;
  }
  uint64_t hash = xxh64(data, length, ((uint64_t)seed_high << 32) | seed_low);
  if (out_type != napi_null) {
    uint8_t* out = bytes_of(env, argv[3], &out_length);
    if (out == NULL || napi_get_value_uint32(env, argv[4], &out_offset) != napi_ok || (size_t)out_offset + 8 > out_length) {
      napi_throw_range_error(env, NULL, sample ? "hashAndSample: the hash does not fit in `out` at `outOffset`" : "hashInto: the hash does not fit in `out` at `outOffset`");
      return NULL;
    }
    uint64_t big = __builtin_bswap64(hash);
    memcpy(out + out_offset, &big, 8);
  }
  napi_value result;
  if (!sample) {
    CHECK(env, napi_create_uint32(env, (uint32_t)hash, &result));
  } else {
    CHECK(env, napi_create_double(env, (double)(uint32_t)hash + (looks_incompressible(data) ? 4294967296.0 : 0.0), &result));
  }
  return result;
}

/* A typed array's bytes and its length in elements of `size` bytes, or NULL if it is not of `type`. */
static void* elements_of(napi_env env, napi_value value, napi_typedarray_type want, size_t* count) {
  napi_typedarray_type type;
  void* data;
  napi_value buffer;
  size_t offset;
  if (napi_get_typedarray_info(env, value, &type, count, &data, &buffer, &offset) != napi_ok || type != want) return NULL;
  return data;
}

/*
 * reduceRun(blocks, count, seedHigh, seedLow, fingerprints, hashLow, random, pattern, patternHigh,
 * patternLow, first) -> undefined: the main thread's reduction (src/reduce/reduce-block.ts,
 * reduceInline without stored forms) of `count` 4 KiB blocks lying back to back in `blocks`, in one
 * call: for block i, at index first + i of the columns, either pattern = 1 with its 8-byte word
 * (patternHigh, patternLow: big-endian halves) when the block is one word repeated, or its keyed
 * XXH64 (big-endian into fingerprints), the hash's low 32 bits into hashLow, and the
 * incompressibility sample into random (1 looks random, 2 worth compressing). A 128 KiB write
 * was 32 calls of hashAndSample, each paying the call's fixed cost (about 0.35 µs here).
 */
static napi_value reduce_run(napi_env env, napi_callback_info info) {
  size_t argc = 11;
  napi_value argv[11];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  size_t blocks_length = 0, fp_count = 0, low_count = 0, random_count = 0, pattern_count = 0, high_count = 0, plow_count = 0;
  uint32_t count = 0, seed_high = 0, seed_low = 0, first = 0;
  uint8_t* blocks = argc == 11 ? bytes_of(env, argv[0], &blocks_length) : NULL;
  uint8_t* fingerprints = blocks == NULL ? NULL : elements_of(env, argv[4], napi_uint8_array, &fp_count);
  uint32_t* hash_low = fingerprints == NULL ? NULL : elements_of(env, argv[5], napi_uint32_array, &low_count);
  uint8_t* random = hash_low == NULL ? NULL : elements_of(env, argv[6], napi_uint8_array, &random_count);
  uint8_t* pattern = random == NULL ? NULL : elements_of(env, argv[7], napi_uint8_array, &pattern_count);
  uint32_t* pattern_high = pattern == NULL ? NULL : elements_of(env, argv[8], napi_uint32_array, &high_count);
  uint32_t* pattern_low = pattern_high == NULL ? NULL : elements_of(env, argv[9], napi_uint32_array, &plow_count);
  if (pattern_low == NULL || napi_get_value_uint32(env, argv[1], &count) != napi_ok || napi_get_value_uint32(env, argv[2], &seed_high) != napi_ok ||
      napi_get_value_uint32(env, argv[3], &seed_low) != napi_ok || napi_get_value_uint32(env, argv[10], &first) != napi_ok) {
    napi_throw_type_error(env, NULL, "reduceRun(blocks, count, seedHigh, seedLow, fingerprints, hashLow, random, pattern, patternHigh, patternLow, first): Uint8Array, three u32, then Uint8Array, Uint32Array, Uint8Array, Uint8Array, Uint32Array, Uint32Array and a u32");
    return NULL;
  }
  size_t end = (size_t)first + count;
  if ((size_t)count * 4096 > blocks_length || end * 8 > fp_count || end > low_count || end > random_count || end > pattern_count || end > high_count || end > plow_count) {
    napi_throw_range_error(env, NULL, "reduceRun: the blocks or a column are shorter than `first + count`");
    return NULL;
  }
  uint64_t seed = ((uint64_t)seed_high << 32) | seed_low;
  for (uint32_t i = 0; i < count; i++) {
    const uint8_t* block = blocks + (size_t)i * 4096;
    size_t index = first + i;
    /* One 8-byte word repeated (src/reduce/pattern.ts): the cheap rejection first, as there. */
    if (read32le(block) == read32le(block + 8) && memcmp(block, block + 8, 4096 - 8) == 0) {
      pattern[index] = 1;
      pattern_high[index] = read32be(block);
      pattern_low[index] = read32be(block + 4);
      continue;
    }
    uint64_t hash = xxh64(block, 4096, seed);
    uint64_t big = __builtin_bswap64(hash);
    memcpy(fingerprints + index * 8, &big, 8);
    hash_low[index] = (uint32_t)hash;
    random[index] = looks_incompressible(block) ? 1 : 2;
  }
  return NULL;
}

/*
 * hashInto(data, seedHigh, seedLow, out, outOffset) -> number: XXH64 of `data` with the seed
 * seedHigh * 2^32 + seedLow; writes the hash big-endian at out[outOffset..+8] unless `out` is null,
 * and returns its low 32 bits (the checksum page-format.ts derives from it). No BigInt on the way:
 * the write path hashes every block and every page this way.
 */
static napi_value hash_into(napi_env env, napi_callback_info info) {
  return hash_call(env, info, 0);
}

/*
 * hashAndSample(block, seedHigh, seedLow, out, outOffset) -> number: `hashInto` of a 4 KiB block,
 * plus its incompressibility sample taken while the block is in the cache: the hash's low 32 bits,
 * plus 2^32 when the block looks random.
 */
static napi_value hash_and_sample(napi_env env, napi_callback_info info) {
  return hash_call(env, info, 1);
}

/*
 * sealPage(buffer, at, pageBytes, magic, pageIndex, sequence, usedBytes, seedHigh, seedLow) ->
 * number: seals the page at buffer[at..at + pageBytes] whose payload is in place, as page-format.ts
 * describes (and its JavaScript `sealPage` does): zeroes the padding after the used payload, writes
 * the header fields big-endian (u32 checksum | u16 magic | u16 page index | u32 sequence | u32 used
 * bytes) and the checksum, the low 32 bits of XXH64 of bytes 4 to 16 + used. Returns the checksum.
 * One call per page instead of a fill, two views, four field writes and a hash call from
 * JavaScript.
 */
static inline void write16be(uint8_t* p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void write32be(uint8_t* p, uint32_t v) { uint32_t big = __builtin_bswap32(v); memcpy(p, &big, 4); }

static napi_value seal_page(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  size_t length = 0;
  uint32_t v[8];
  uint8_t* buffer = argc == 9 ? bytes_of(env, argv[0], &length) : NULL;
  bool ok = buffer != NULL;
  for (int i = 0; ok && i < 8; i++) ok = napi_get_value_uint32(env, argv[i + 1], &v[i]) == napi_ok;
  if (!ok) {
    napi_throw_type_error(env, NULL, "sealPage(buffer, at, pageBytes, magic, pageIndex, sequence, usedBytes, seedHigh, seedLow) takes a Uint8Array and eight u32");
    return NULL;
  }
  uint32_t at = v[0], page_bytes = v[1], magic = v[2], page_index = v[3], sequence = v[4], used = v[5];
  if (page_bytes < 16 || (size_t)at + page_bytes > length || used > page_bytes - 16 || magic > 0xffff || page_index > 0xffff) {
    napi_throw_range_error(env, NULL, "sealPage: the page, or its used bytes, lie outside the buffer, or a field is out of range");
    return NULL;
  }
  uint8_t* page = buffer + at;
  memset(page + 16 + used, 0, page_bytes - 16 - used);
  write16be(page + 4, magic);
  write16be(page + 6, page_index);
  write32be(page + 8, sequence);
  write32be(page + 12, used);
  uint32_t checksum = (uint32_t)xxh64(page + 4, 12 + (size_t)used, ((uint64_t)v[6] << 32) | v[7]);
  write32be(page, checksum);
  napi_value result;
  CHECK(env, napi_create_uint32(env, checksum, &result));
  return result;
}

/* ---- copyRecords ---- */

/* One row of `plan` (Float64Array): where the record's first page is, and what it must hold. */
enum { ROW_PAGE_AT, ROW_IN_PAGE, ROW_STORED, ROW_CHUNK, ROW_DESTINATION, ROW_FIELDS };
#define MAX_SEGMENTS 256

static napi_value throw_plan(napi_env env, const char* message) {
  napi_throw_range_error(env, NULL, message);
  return NULL;
}

/*
 * Checks the header of the record at `record` (`room` payload bytes left in its page after the
 * header; the buffer ends at `end`) and copies its `stored` bytes of payload to `destination`,
 * skipping the header of each following page, then verifies the checksum there.
 * 1: good; 0: failed verification (another chunk or length, or a bad checksum); -1: it would run
 * past `end`.
 */
static int copy_record(const uint8_t* record, const uint8_t* end, size_t room, size_t payload_bytes, size_t page_header_bytes, size_t record_header_bytes,
                       double chunk, size_t stored, uint8_t* destination, uint64_t seed) {
  size_t crossings = stored > room ? (stored - room + payload_bytes - 1) / payload_bytes : 0;
  if ((size_t)(end - record) < record_header_bytes + stored + crossings * page_header_bytes) return -1;
  double found_chunk = (double)read32be(record) * 4294967296.0 + (double)read32be(record + 4);
  if (found_chunk != chunk || read32be(record + 8) != stored) return 0;
  uint32_t checksum = read32be(record + 12);
  /* The payload: the rest of this page, then the payload of each following page. */
  size_t copied = 0;
  const uint8_t* source = record + record_header_bytes;
  while (copied < stored) {
    if (room == 0) {
      source += page_header_bytes;
      room = payload_bytes;
    }
    size_t piece = stored - copied < room ? stored - copied : room;
    memcpy(destination + copied, source, piece);
    copied += piece;
    source += piece;
    room -= piece;
  }
  return (uint32_t)xxh64(destination, stored, seed) == checksum ? 1 : 0;
}

/* The arguments copyRecords and readRecords share: the page and record formats, plan, destinations. */
typedef struct {
  int64_t page_bytes, page_header_bytes, record_header_bytes, count;
  uint64_t seed;
  const double* plan;
  size_t payload_bytes;
} record_batch;

/* Parses argv[first..first+5] (pageBytes, pageHeaderBytes, recordHeaderBytes, seed, plan, count) and checks every row's fields. */
static bool parse_batch(napi_env env, napi_value* argv, const char* name, record_batch* batch) {
  bool lossless;
  char message[96];
  if (napi_get_value_int64(env, argv[0], &batch->page_bytes) != napi_ok || napi_get_value_int64(env, argv[1], &batch->page_header_bytes) != napi_ok ||
      napi_get_value_int64(env, argv[2], &batch->record_header_bytes) != napi_ok || napi_get_value_bigint_uint64(env, argv[3], &batch->seed, &lossless) != napi_ok ||
      napi_get_value_int64(env, argv[5], &batch->count) != napi_ok) {
    snprintf(message, sizeof message, "%s: bad arguments", name);
    throw_plan(env, message);
    return false;
  }
  if (batch->page_bytes <= 0 || batch->page_header_bytes < 0 || batch->record_header_bytes < 16 || batch->page_bytes <= batch->page_header_bytes + batch->record_header_bytes ||
      batch->count < 0) {
    snprintf(message, sizeof message, "%s: bad geometry", name);
    throw_plan(env, message);
    return false;
  }
  napi_typedarray_type type;
  size_t plan_length;
  void* plan_data;
  if (napi_get_typedarray_info(env, argv[4], &type, &plan_length, &plan_data, NULL, NULL) != napi_ok || type != napi_float64_array ||
      (size_t)batch->count * ROW_FIELDS > plan_length) {
    snprintf(message, sizeof message, "%s: plan must be a Float64Array of count rows", name);
    throw_plan(env, message);
    return false;
  }
  batch->plan = (const double*)plan_data;
  batch->payload_bytes = (size_t)(batch->page_bytes - batch->page_header_bytes);
  for (int64_t row = 0; row < batch->count; row++) {
    const double* r = batch->plan + row * ROW_FIELDS;
    double page_at = r[ROW_PAGE_AT], in_page = r[ROW_IN_PAGE], stored = r[ROW_STORED];
    if (!(page_at >= 0) || !(in_page >= 0) || !(stored >= 0) || !(stored < 4294967296.0) || page_at != (double)(uint64_t)page_at ||
        in_page + batch->record_header_bytes > (double)batch->payload_bytes || !(r[ROW_DESTINATION] >= 0 && r[ROW_DESTINATION] < 4294967296.0) ||
        (uint64_t)page_at % (uint64_t)batch->page_bytes != 0) {
      snprintf(message, sizeof message, "%s: a row is out of range", name);
      throw_plan(env, message);
      return false;
    }
  }
  return true;
}

/* The destination of a row: a Buffer of exactly the record's stored length, or NULL (thrown). */
static uint8_t* row_destination(napi_env env, napi_value destinations, const double* r, const char* name) {
  napi_value element;
  void* destination;
  size_t destination_length;
  if (napi_get_element(env, destinations, (uint32_t)r[ROW_DESTINATION], &element) != napi_ok ||
      napi_get_buffer_info(env, element, &destination, &destination_length) != napi_ok || destination_length != (size_t)r[ROW_STORED]) {
    char message[96];
    snprintf(message, sizeof message, "%s: a destination is not a Buffer of the record's length", name);
    throw_plan(env, message);
    return NULL;
  }
  return (uint8_t*)destination;
}

/*
 * copyRecords(segments: Buffer[], segmentBytes, pageBytes, pageHeaderBytes, recordHeaderBytes,
 *             seed: bigint, plan: Float64Array, count, destinations: Buffer[]) -> index or -1
 * Row i of plan: [image offset of the page holding the record header, offset of the header in
 * that page's payload, stored bytes, chunk id, index into destinations]. The destination must be
 * exactly `stored bytes` long. Returns the first row whose record failed verification (its header
 * names another chunk or length, or its checksum does not match), or -1 when all are good; rows
 * before a failed one have been copied, the rest not.
 */
static napi_value copy_records(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 9) return throw_plan(env, "copyRecords takes 9 arguments");
  uint32_t segment_count;
  int64_t segment_bytes;
  record_batch batch;
  if (napi_get_array_length(env, argv[0], &segment_count) != napi_ok || segment_count > MAX_SEGMENTS || napi_get_value_int64(env, argv[1], &segment_bytes) != napi_ok) {
    return throw_plan(env, "copyRecords: bad arguments");
  }
  if (!parse_batch(env, argv + 2, "copyRecords", &batch)) return NULL;
  if (segment_bytes <= 0 || segment_bytes % batch.page_bytes != 0) return throw_plan(env, "copyRecords: bad geometry");
  const uint8_t* segments[MAX_SEGMENTS];
  size_t segment_lengths[MAX_SEGMENTS];
  for (uint32_t i = 0; i < segment_count; i++) {
    napi_value element;
    void* data;
    CHECK(env, napi_get_element(env, argv[0], i, &element));
    if (napi_get_buffer_info(env, element, &data, &segment_lengths[i]) != napi_ok) return throw_plan(env, "copyRecords: a segment is not a Buffer");
    segments[i] = (const uint8_t*)data;
  }

  /* Check that every row lies in the mapping and prefetch its record's first lines: the misses of all rows overlap. */
  for (int64_t row = 0; row < batch.count; row++) {
    const double* r = batch.plan + row * ROW_FIELDS;
    uint64_t at = (uint64_t)r[ROW_PAGE_AT];
    uint64_t segment = at / (uint64_t)segment_bytes;
    uint64_t within = at % (uint64_t)segment_bytes;
    if (segment >= segment_count || within + (uint64_t)batch.page_bytes > segment_lengths[segment]) {
      return throw_plan(env, "copyRecords: a row is outside the mapping");
    }
    const uint8_t* header = segments[segment] + within + batch.page_header_bytes + (size_t)r[ROW_IN_PAGE];
    __builtin_prefetch(header);
    if ((size_t)r[ROW_IN_PAGE] + batch.record_header_bytes + (size_t)r[ROW_STORED] > batch.payload_bytes) __builtin_prefetch(segments[segment] + within + batch.page_bytes);
  }

  for (int64_t row = 0; row < batch.count; row++) {
    const double* r = batch.plan + row * ROW_FIELDS;
    uint64_t at = (uint64_t)r[ROW_PAGE_AT];
    const uint8_t* segment = segments[at / (uint64_t)segment_bytes];
    const uint8_t* end = segment + segment_lengths[at / (uint64_t)segment_bytes];
    uint8_t* destination = row_destination(env, argv[8], r, "copyRecords");
    if (destination == NULL) return NULL;
    size_t in_page = (size_t)r[ROW_IN_PAGE];
    const uint8_t* record = segment + (size_t)(at % (uint64_t)segment_bytes) + (size_t)batch.page_header_bytes + in_page;
    int copied = copy_record(record, end, batch.payload_bytes - in_page - (size_t)batch.record_header_bytes, batch.payload_bytes, (size_t)batch.page_header_bytes,
                             (size_t)batch.record_header_bytes, r[ROW_CHUNK], (size_t)r[ROW_STORED], destination, batch.seed);
    if (copied < 0) return throw_plan(env, "copyRecords: a record runs past its mapping");
    if (copied == 0) return make_int(env, row);
  }
  return make_int(env, -1);
}

/*
 * readRecords(fd, pageBytes, pageHeaderBytes, recordHeaderBytes, seed: bigint, plan: Float64Array,
 *             count, destinations: Buffer[]) -> index or -1
 * copyRecords for pages that are not mapped: each row's record (header, payload and the page
 * headers between) is read with one pread into a scratch buffer, and copied and verified from
 * there. Same plan, same result; a pread that fails throws an Error with the errno's code (EIO...),
 * and one that ends early (the file is shorter) counts as a failed verification of its row.
 */
static napi_value read_records(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 8) return throw_plan(env, "readRecords takes 8 arguments");
  int32_t fd;
  record_batch batch;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) return throw_plan(env, "readRecords: bad file descriptor");
  if (!parse_batch(env, argv + 1, "readRecords", &batch)) return NULL;
  uint8_t* scratch = NULL;
  size_t scratch_bytes = 0;
  napi_value result = NULL;
  for (int64_t row = 0; row < batch.count && result == NULL; row++) {
    const double* r = batch.plan + row * ROW_FIELDS;
    uint8_t* destination = row_destination(env, argv[7], r, "readRecords");
    if (destination == NULL) break;
    size_t in_page = (size_t)r[ROW_IN_PAGE];
    size_t stored = (size_t)r[ROW_STORED];
    size_t room = batch.payload_bytes - in_page - (size_t)batch.record_header_bytes;
    size_t crossings = stored > room ? (stored - room + batch.payload_bytes - 1) / batch.payload_bytes : 0;
    /* From the record's header to the end of its payload: no more than the record (a 4 KiB record
       that crosses a page boundary would otherwise cost two whole pages). */
    size_t bytes = (size_t)batch.record_header_bytes + stored + crossings * (size_t)batch.page_header_bytes;
    uint64_t position = (uint64_t)r[ROW_PAGE_AT] + (uint64_t)batch.page_header_bytes + in_page;
    if (bytes > scratch_bytes) {
      free(scratch);
      scratch = malloc(bytes);
      scratch_bytes = scratch == NULL ? 0 : bytes;
      if (scratch == NULL) {
        napi_throw_error(env, "ENOMEM", "readRecords: out of memory");
        break;
      }
    }
    size_t done = 0;
    int failure = 0;
    while (done < bytes) {
      ssize_t got = pread(fd, scratch + done, bytes - done, (off_t)(position + done));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) failure = errno;
      if (got <= 0) break;
      done += (size_t)got;
    }
    if (failure != 0) {
      /* The array treats any failed read of its image as an I/O error: the code says which. */
      napi_value code, message, error;
      if (napi_create_string_utf8(env, failure == ENOMEM ? "ENOMEM" : failure == EBADF ? "EBADF" : "EIO", NAPI_AUTO_LENGTH, &code) == napi_ok &&
          napi_create_string_utf8(env, strerror(failure), NAPI_AUTO_LENGTH, &message) == napi_ok && napi_create_error(env, code, message, &error) == napi_ok) {
        napi_throw(env, error);
      }
      break;
    }
    if (done < bytes) {
      result = make_int(env, row);
      break;
    }
    int copied = copy_record(scratch, scratch + bytes, room, batch.payload_bytes, (size_t)batch.page_header_bytes,
                             (size_t)batch.record_header_bytes, r[ROW_CHUNK], stored, destination, batch.seed);
    if (copied <= 0) result = make_int(env, row);
  }
  free(scratch);
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return NULL;
  return result != NULL ? result : make_int(env, -1);
}

/* ---- AES-256-XTS of records (src/ftl/record-cipher.ts) ---- */

/*
 * One cipher context per direction, keyed once and re-keyed only when another key comes (an
 * array has one key; tests open several): a record then costs setting its tweak and the cipher
 * itself, no key schedule. The contexts live for the process (one per thread that calls here).
 */
static __thread EVP_CIPHER_CTX* xts_ctx[2];
static __thread uint8_t xts_key[2][64];
static __thread bool xts_keyed[2];

static EVP_CIPHER_CTX* xts_context(const uint8_t* key, int encrypt) {
  int d = encrypt ? 1 : 0;
  if (xts_ctx[d] == NULL) {
    xts_ctx[d] = EVP_CIPHER_CTX_new();
    if (xts_ctx[d] == NULL) return NULL;
  }
  if (!xts_keyed[d] || memcmp(xts_key[d], key, 64) != 0) {
    if (EVP_CipherInit_ex(xts_ctx[d], EVP_aes_256_xts(), NULL, key, NULL, encrypt) != 1) return NULL;
    memcpy(xts_key[d], key, 64);
    xts_keyed[d] = true;
  }
  return xts_ctx[d];
}

/*
 * Where the CPU has VAES and AVX-512 (xts_vaes.c), records go through that: four AES blocks per
 * instruction where OpenSSL 3.0 does one. `xtsImplementation` reports which one runs, and lets
 * tests switch to OpenSSL to hold the two to the same bytes. The expanded keys are cached per
 * thread like the OpenSSL contexts (one array key, in practice).
 */
static int xts_use_vaes = -1; /* -1: not decided yet */
static __thread xts_vaes_key vaes_key;
static __thread uint8_t vaes_key_bytes[64];
static __thread bool vaes_keyed;

static bool vaes_enabled(void) {
  if (xts_use_vaes < 0) xts_use_vaes = xts_vaes_supported() ? 1 : 0;
  return xts_use_vaes == 1;
}

/* One direction of one key: the VAES round keys, or an OpenSSL context. */
typedef struct {
  const xts_vaes_key* vaes;
  EVP_CIPHER_CTX* ctx;
  int encrypt;
} xts_engine;

static bool xts_engine_for(const uint8_t* key, int encrypt, xts_engine* engine) {
  engine->encrypt = encrypt;
  engine->ctx = NULL;
  engine->vaes = NULL;
  if (vaes_enabled()) {
    if (!vaes_keyed || memcmp(vaes_key_bytes, key, 64) != 0) {
      xts_vaes_set_key(&vaes_key, key);
      memcpy(vaes_key_bytes, key, 64);
      vaes_keyed = true;
    }
    engine->vaes = &vaes_key;
    return true;
  }
  engine->ctx = xts_context(key, encrypt);
  return engine->ctx != NULL;
}

/* Encrypts or decrypts `length` (>= 16) bytes in place with tweak = chunk id, u64 little-endian, zero-padded. */
static bool xts_one(const xts_engine* engine, uint8_t* data, size_t length, double chunk_id) {
  if (length < 16 || length > 0x7fffffff) return false;
  if (engine->vaes != NULL) return xts_vaes(engine->vaes, engine->encrypt != 0, data, length, (uint64_t)chunk_id);
  EVP_CIPHER_CTX* ctx = engine->ctx;
  int encrypt = engine->encrypt;
  uint8_t tweak[16] = {0};
  uint64_t id = (uint64_t)chunk_id;
  for (int i = 0; i < 8; i++) tweak[i] = (uint8_t)(id >> (8 * i));
  int out = 0;
  if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, tweak, encrypt) != 1) return false;
  return EVP_CipherUpdate(ctx, data, &out, data, (int)length) == 1 && (size_t)out == length;
}

static const uint8_t* xts_key_of(napi_env env, napi_value value) {
  size_t length = 0;
  const uint8_t* key = bytes_of(env, value, &length);
  return key != NULL && length == 64 ? key : NULL;
}

/* xtsBuffer(key: 64 bytes, encrypt: boolean, data: Uint8Array, chunkId: number): in place. */
static napi_value xts_buffer(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool encrypt = false;
  double chunk_id = 0;
  size_t length = 0;
  const uint8_t* key = argc == 4 ? xts_key_of(env, argv[0]) : NULL;
  uint8_t* data = argc == 4 ? bytes_of(env, argv[2], &length) : NULL;
  if (key == NULL || data == NULL || napi_get_value_bool(env, argv[1], &encrypt) != napi_ok || napi_get_value_double(env, argv[3], &chunk_id) != napi_ok) {
    napi_throw_type_error(env, NULL, "xtsBuffer(key: 64 bytes, encrypt: boolean, data: Uint8Array, chunkId: number)");
    return NULL;
  }
  xts_engine engine;
  if (!xts_engine_for(key, encrypt, &engine) || !xts_one(&engine, data, length, chunk_id)) {
    napi_throw_range_error(env, NULL, "xtsBuffer: the cipher failed (data shorter than 16 bytes?)");
    return NULL;
  }
  return NULL;
}

/*
 * The records of a read plan at once (src/ftl/record-reader.ts): one call per batch instead of one
 * per record. Each row's destination (a Buffer of the row's stored length, already verified) is
 * transformed in place with the row's chunk id as tweak.
 */
typedef struct {
  uint8_t* data;
  size_t length;
  double chunk_id;
} xts_row;

/* Reads `count` rows of `plan` into `rows` (pointers into the destinations); false: thrown. */
static bool xts_rows_of(napi_env env, napi_value plan_value, int64_t count, napi_value destinations, xts_row* rows, const char* name) {
  napi_typedarray_type type;
  size_t plan_length;
  void* plan_data;
  char message[96];
  if (napi_get_typedarray_info(env, plan_value, &type, &plan_length, &plan_data, NULL, NULL) != napi_ok || type != napi_float64_array ||
      count < 0 || (size_t)count * ROW_FIELDS > plan_length) {
    snprintf(message, sizeof message, "%s: plan must be a Float64Array of count rows", name);
    throw_plan(env, message);
    return false;
  }
  for (int64_t row = 0; row < count; row++) {
    const double* r = (const double*)plan_data + row * ROW_FIELDS;
    if (!(r[ROW_DESTINATION] >= 0 && r[ROW_DESTINATION] < 4294967296.0) || !(r[ROW_STORED] >= 16 && r[ROW_STORED] < 2147483648.0) || !(r[ROW_CHUNK] >= 0)) {
      snprintf(message, sizeof message, "%s: a row is out of range", name);
      throw_plan(env, message);
      return false;
    }
    uint8_t* destination = row_destination(env, destinations, r, name);
    if (destination == NULL) return false;
    rows[row] = (xts_row){destination, (size_t)r[ROW_STORED], r[ROW_CHUNK]};
  }
  return true;
}

static bool xts_rows(const uint8_t* key, int encrypt, const xts_row* rows, size_t count) {
  xts_engine engine;
  if (!xts_engine_for(key, encrypt, &engine)) return false;
  for (size_t i = 0; i < count; i++) {
    if (!xts_one(&engine, rows[i].data, rows[i].length, rows[i].chunk_id)) return false;
  }
  return true;
}

/*
 * xtsImplementation(use?: 'vaes' | 'openssl') -> 'vaes' | 'openssl': which implementation the XTS
 * functions use (for every thread); with an argument, switches first ('vaes' only where supported).
 */
static napi_value xts_implementation(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  napi_valuetype type = napi_undefined;
  if (argc >= 1) CHECK(env, napi_typeof(env, argv[0], &type));
  if (type != napi_undefined) {
    char name[16] = {0};
    size_t length = 0;
    if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &length) != napi_ok || (strcmp(name, "vaes") != 0 && strcmp(name, "openssl") != 0)) {
      napi_throw_type_error(env, NULL, "xtsImplementation(use?: 'vaes' | 'openssl')");
      return NULL;
    }
    xts_use_vaes = strcmp(name, "vaes") == 0 && xts_vaes_supported() ? 1 : 0;
  }
  napi_value result;
  CHECK(env, napi_create_string_utf8(env, vaes_enabled() ? "vaes" : "openssl", NAPI_AUTO_LENGTH, &result));
  return result;
}

/* Parses (key, encrypt, plan, count, destinations); returns the row count, or -1 (thrown). */
static int64_t xts_batch_arguments(napi_env env, napi_value* argv, size_t argc, const uint8_t** key, bool* encrypt, const char* name) {
  int64_t count = -1;
  *key = argc == 5 ? xts_key_of(env, argv[0]) : NULL;
  if (*key == NULL || napi_get_value_bool(env, argv[1], encrypt) != napi_ok || napi_get_value_int64(env, argv[3], &count) != napi_ok || count < 0) {
    char message[128];
    snprintf(message, sizeof message, "%s(key: 64 bytes, encrypt: boolean, plan: Float64Array, count, destinations: Buffer[])", name);
    napi_throw_type_error(env, NULL, message);
    return -1;
  }
  return count;
}

/* xtsRecords(key, encrypt, plan, count, destinations): every row's destination, in place, on this thread. */
static napi_value xts_records(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  const uint8_t* key;
  bool encrypt = false;
  int64_t count = xts_batch_arguments(env, argv, argc, &key, &encrypt, "xtsRecords");
  if (count < 0) return NULL;
  xts_row local[64];
  xts_row* rows = count <= 64 ? local : (xts_row*)malloc((size_t)count * sizeof(xts_row));
  if (rows == NULL) return throw_plan(env, "xtsRecords: out of memory");
  bool ok = xts_rows_of(env, argv[2], count, argv[4], rows, "xtsRecords");
  if (ok && !xts_rows(key, encrypt, rows, (size_t)count)) {
    napi_throw_range_error(env, NULL, "xtsRecords: the cipher failed");
  }
  if (rows != local) free(rows);
  return NULL;
}

static napi_value make_bool(napi_env env, bool value) {
  napi_value result;
  if (napi_get_boolean(env, value, &result) != napi_ok) return NULL;
  return result;
}

/* mallopt: a fixed mmap threshold (which also stops glibc from raising it), a trim threshold and
 * an arena count; a value below 0 leaves that setting alone. True if every mallopt succeeded. */
static napi_value tune_malloc(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t values[3] = {-1, -1, -1};
  for (size_t i = 0; i < argc && i < 3; i++) CHECK(env, napi_get_value_int32(env, argv[i], &values[i]));
#ifdef __GLIBC__
  bool ok = true;
  if (values[0] >= 0) ok = mallopt(M_MMAP_THRESHOLD, values[0]) == 1 && ok;
  if (values[1] >= 0) ok = mallopt(M_TRIM_THRESHOLD, values[1]) == 1 && ok;
  if (values[2] > 0) ok = mallopt(M_ARENA_MAX, values[2]) == 1 && ok;
  return make_bool(env, ok);
#else
  return make_bool(env, false);
#endif
}

/*
 * adviseHugePages(array) -> number: asks the kernel to back the whole 2 MiB pages of a typed
 * array's buffer (from the array's first byte on) with transparent huge pages (madvise MADV_HUGEPAGE; used where THP is in
 * "madvise" mode). Returns the bytes advised, 0 when the array is too small or the advice failed.
 */
static napi_value advise_huge_pages(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  napi_typedarray_type type;
  size_t length = 0, offset = 0, buffer_bytes = 0;
  void* data = NULL;
  void* base = NULL;
  napi_value buffer;
  if (argc < 1 || napi_get_typedarray_info(env, argv[0], &type, &length, &data, &buffer, &offset) != napi_ok ||
      napi_get_arraybuffer_info(env, buffer, &base, &buffer_bytes) != napi_ok) {
    napi_throw_type_error(env, NULL, "adviseHugePages(array) takes a typed array");
    return NULL;
  }
  /* From the array's first byte to the end of its buffer (the tables own theirs whole). */
  const uintptr_t huge = (uintptr_t)2 << 20;
  uintptr_t start = ((uintptr_t)data + huge - 1) & ~(huge - 1);
  uintptr_t end = ((uintptr_t)base + buffer_bytes) & ~(huge - 1);
  double advised = 0;
#ifdef MADV_HUGEPAGE
  if (end > start && madvise((void*)start, end - start, MADV_HUGEPAGE) == 0) advised = (double)(end - start);
#endif
  napi_value result;
  CHECK(env, napi_create_double(env, advised, &result));
  return result;
}

/* malloc_trim(0): gives the free memory of every arena back to the kernel. True if any was. */
static napi_value trim_malloc(napi_env env, napi_callback_info info) {
  (void)info;
#ifdef __GLIBC__
  return make_bool(env, malloc_trim(0) == 1);
#else
  return make_bool(env, false);
#endif
}

NAPI_MODULE_INIT() {
  napi_value fn;
  if (napi_create_function(env, "map", NAPI_AUTO_LENGTH, map, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "map", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "dropResident", NAPI_AUTO_LENGTH, drop_resident, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "dropResident", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "xxh64", NAPI_AUTO_LENGTH, xxh64_js, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "xxh64", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "hashInto", NAPI_AUTO_LENGTH, hash_into, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "hashInto", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "reduceRun", NAPI_AUTO_LENGTH, reduce_run, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "reduceRun", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "sealPage", NAPI_AUTO_LENGTH, seal_page, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "sealPage", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "copyRecords", NAPI_AUTO_LENGTH, copy_records, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "copyRecords", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "readRecords", NAPI_AUTO_LENGTH, read_records, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "readRecords", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "tuneMalloc", NAPI_AUTO_LENGTH, tune_malloc, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "tuneMalloc", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "trimMalloc", NAPI_AUTO_LENGTH, trim_malloc, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "trimMalloc", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "hashAndSample", NAPI_AUTO_LENGTH, hash_and_sample, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "hashAndSample", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "xtsBuffer", NAPI_AUTO_LENGTH, xts_buffer, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "xtsBuffer", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "xtsRecords", NAPI_AUTO_LENGTH, xts_records, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "xtsRecords", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "xtsImplementation", NAPI_AUTO_LENGTH, xts_implementation, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "xtsImplementation", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "adviseHugePages", NAPI_AUTO_LENGTH, advise_huge_pages, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "adviseHugePages", fn) != napi_ok) return NULL;
  return exports;
}
