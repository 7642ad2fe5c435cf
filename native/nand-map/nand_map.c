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
 * outside a mapping or writes outside a destination.
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
#include <node_api.h>
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
 * hashInto(data, seedHigh, seedLow, out, outOffset) -> number: XXH64 of `data` with the seed
 * seedHigh * 2^32 + seedLow; writes the hash big-endian at out[outOffset..+8] unless `out` is null,
 * and returns its low 32 bits (the checksum page-format.ts derives from it). No BigInt on the way:
 * the write path hashes every block and every page this way.
 */
static napi_value hash_into(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  size_t length = 0, out_length = 0;
  uint32_t seed_high, seed_low, out_offset = 0;
  uint8_t* data = argc == 5 ? bytes_of(env, argv[0], &length) : NULL;
  napi_valuetype out_type = napi_null;
  if (data == NULL || napi_get_value_uint32(env, argv[1], &seed_high) != napi_ok || napi_get_value_uint32(env, argv[2], &seed_low) != napi_ok ||
      napi_typeof(env, argv[3], &out_type) != napi_ok) {
    napi_throw_type_error(env, NULL, "hashInto(data, seedHigh, seedLow, out, outOffset) takes a Uint8Array, two u32, a Uint8Array or null, and an offset");
    return NULL;
  }
  uint64_t hash = xxh64(data, length, ((uint64_t)seed_high << 32) | seed_low);
  if (out_type != napi_null) {
    uint8_t* out = bytes_of(env, argv[3], &out_length);
    if (out == NULL || napi_get_value_uint32(env, argv[4], &out_offset) != napi_ok || (size_t)out_offset + 8 > out_length) {
      napi_throw_range_error(env, NULL, "hashInto: the hash does not fit in `out` at `outOffset`");
      return NULL;
    }
    uint64_t big = __builtin_bswap64(hash);
    memcpy(out + out_offset, &big, 8);
  }
  napi_value result;
  CHECK(env, napi_create_uint32(env, (uint32_t)hash, &result));
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
  int64_t segment_bytes, page_bytes, page_header_bytes, record_header_bytes, count;
  uint64_t seed;
  bool lossless;
  if (napi_get_array_length(env, argv[0], &segment_count) != napi_ok || segment_count > MAX_SEGMENTS || napi_get_value_int64(env, argv[1], &segment_bytes) != napi_ok ||
      napi_get_value_int64(env, argv[2], &page_bytes) != napi_ok || napi_get_value_int64(env, argv[3], &page_header_bytes) != napi_ok ||
      napi_get_value_int64(env, argv[4], &record_header_bytes) != napi_ok || napi_get_value_bigint_uint64(env, argv[5], &seed, &lossless) != napi_ok ||
      napi_get_value_int64(env, argv[7], &count) != napi_ok) {
    return throw_plan(env, "copyRecords: bad arguments");
  }
  if (segment_bytes <= 0 || segment_bytes % page_bytes != 0 || page_header_bytes < 0 || record_header_bytes < 16 || page_bytes <= page_header_bytes + record_header_bytes || count < 0) {
    return throw_plan(env, "copyRecords: bad geometry");
  }
  const uint8_t* segments[MAX_SEGMENTS];
  size_t segment_lengths[MAX_SEGMENTS];
  for (uint32_t i = 0; i < segment_count; i++) {
    napi_value element;
    void* data;
    CHECK(env, napi_get_element(env, argv[0], i, &element));
    if (napi_get_buffer_info(env, element, &data, &segment_lengths[i]) != napi_ok) return throw_plan(env, "copyRecords: a segment is not a Buffer");
    segments[i] = (const uint8_t*)data;
  }
  napi_typedarray_type type;
  size_t plan_length;
  void* plan_data;
  if (napi_get_typedarray_info(env, argv[6], &type, &plan_length, &plan_data, NULL, NULL) != napi_ok || type != napi_float64_array || (size_t)count * ROW_FIELDS > plan_length) {
    return throw_plan(env, "copyRecords: plan must be a Float64Array of count rows");
  }
  const double* plan = (const double*)plan_data;
  const size_t payload_bytes = (size_t)(page_bytes - page_header_bytes);

  /* Validate every row and prefetch its record's first lines: the misses of all rows overlap. */
  for (int64_t row = 0; row < count; row++) {
    const double* r = plan + row * ROW_FIELDS;
    double page_at = r[ROW_PAGE_AT], in_page = r[ROW_IN_PAGE], stored = r[ROW_STORED];
    if (!(page_at >= 0) || !(in_page >= 0) || !(stored >= 0) || page_at != (double)(uint64_t)page_at || in_page + record_header_bytes > (double)payload_bytes ||
        !(r[ROW_DESTINATION] >= 0 && r[ROW_DESTINATION] < 4294967296.0)) {
      return throw_plan(env, "copyRecords: a row is out of range");
    }
    uint64_t at = (uint64_t)page_at;
    uint64_t segment = at / (uint64_t)segment_bytes;
    uint64_t within = at % (uint64_t)segment_bytes;
    if (within % (uint64_t)page_bytes != 0 || segment >= segment_count || within + (uint64_t)page_bytes > segment_lengths[segment]) {
      return throw_plan(env, "copyRecords: a row is outside the mapping");
    }
    const uint8_t* header = segments[segment] + within + page_header_bytes + (size_t)in_page;
    __builtin_prefetch(header);
    if ((size_t)in_page + record_header_bytes + (size_t)stored > payload_bytes) __builtin_prefetch(segments[segment] + within + page_bytes);
  }

  for (int64_t row = 0; row < count; row++) {
    const double* r = plan + row * ROW_FIELDS;
    uint64_t at = (uint64_t)r[ROW_PAGE_AT];
    const uint8_t* segment = segments[at / (uint64_t)segment_bytes];
    size_t segment_length = segment_lengths[at / (uint64_t)segment_bytes];
    size_t from = (size_t)(at % (uint64_t)segment_bytes) + (size_t)page_header_bytes + (size_t)r[ROW_IN_PAGE];
    size_t stored = (size_t)r[ROW_STORED];
    double chunk = r[ROW_CHUNK];
    napi_value element;
    void* destination;
    size_t destination_length;
    CHECK(env, napi_get_element(env, argv[8], (uint32_t)r[ROW_DESTINATION], &element));
    if (napi_get_buffer_info(env, element, &destination, &destination_length) != napi_ok || destination_length != stored) {
      return throw_plan(env, "copyRecords: a destination is not a Buffer of the record's length");
    }
    size_t room = payload_bytes - ((size_t)r[ROW_IN_PAGE] + (size_t)record_header_bytes);
    size_t crossings = stored > room ? (stored - room + payload_bytes - 1) / payload_bytes : 0;
    if (from + (size_t)record_header_bytes + stored + crossings * (size_t)page_header_bytes > segment_length) {
      return throw_plan(env, "copyRecords: a record runs past its mapping");
    }
    const uint8_t* header = segment + from;
    double found_chunk = (double)read32be(header) * 4294967296.0 + (double)read32be(header + 4);
    if (found_chunk != chunk || read32be(header + 8) != stored) return make_int(env, row);
    uint32_t checksum = read32be(header + 12);
    /* The payload: the rest of this page, then the payload of each following page. */
    size_t copied = 0;
    size_t source = from + (size_t)record_header_bytes;
    while (copied < stored) {
      if (room == 0) {
        source += (size_t)page_header_bytes;
        room = payload_bytes;
      }
      size_t piece = stored - copied < room ? stored - copied : room;
      memcpy((uint8_t*)destination + copied, segment + source, piece);
      copied += piece;
      source += piece;
      room -= piece;
    }
    if ((uint32_t)xxh64((const uint8_t*)destination, stored, seed) != checksum) return make_int(env, row);
  }
  return make_int(env, -1);
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
  if (napi_create_function(env, "copyRecords", NAPI_AUTO_LENGTH, copy_records, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "copyRecords", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "tuneMalloc", NAPI_AUTO_LENGTH, tune_malloc, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "tuneMalloc", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "trimMalloc", NAPI_AUTO_LENGTH, trim_malloc, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "trimMalloc", fn) != napi_ok) return NULL;
  return exports;
}
