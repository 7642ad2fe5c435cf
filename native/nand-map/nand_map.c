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
 * Reading a page of a mapping whose file cannot be read (a disk error) raises SIGBUS, which ends
 * the process: the caller accepts that, see file-nand.ts.
 */
#include <errno.h>
#include <node_api.h>
#include <stdint.h>
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

NAPI_MODULE_INIT() {
  napi_value fn;
  if (napi_create_function(env, "map", NAPI_AUTO_LENGTH, map, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "map", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "dropResident", NAPI_AUTO_LENGTH, drop_resident, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "dropResident", fn) != napi_ok) return NULL;
  return exports;
}
