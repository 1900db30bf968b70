// posix_fadvise and lseek(SEEK_DATA/SEEK_HOLE) for Node (N-API, no dependencies); Node's fs
// has neither. fadvise: the kernel's readahead turns bulk reads into large page-cache folios
// that make every later 4 KiB write to them walk hundreds of buffer heads (ext4, Linux >= 6.16),
// so a bulk reader opens its own fd and advises RANDOM. seek: the sync reads holes as holes.
// misalign: where a buffer sits in memory, for O_DIRECT writes. flock: the hub's exclusive lock
// on its --data directory and recovery volumes, which the kernel drops when the process dies.
// cached: how much of a file range is in the page cache (cachestat, Linux 6.5), so a bulk read
// of cold data can go around it.
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_cachestat
#define __NR_cachestat 451 /* the same on every architecture (the unified syscall table) */
#endif

static napi_value fadvise(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  int32_t fd, advice;
  int64_t offset, length;
  napi_value out;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &offset) != napi_ok ||
      napi_get_value_int64(env, argv[2], &length) != napi_ok || napi_get_value_int32(env, argv[3], &advice) != napi_ok) {
    napi_throw_type_error(env, NULL, "fadvise(fd, offset, length, advice): four integers");
    return NULL;
  }
  // posix_fadvise returns the error number itself (0 on success); errno is untouched.
  napi_create_int32(env, posix_fadvise(fd, (off_t)offset, (off_t)length, advice), &out);
  return out;
}

// seek(fd, offset, whence) -> the new offset, or -errno (ENXIO: no data/hole at or after offset).
static napi_value seek(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd, whence;
  int64_t offset;
  napi_value out;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &offset) != napi_ok ||
      napi_get_value_int32(env, argv[2], &whence) != napi_ok) {
    napi_throw_type_error(env, NULL, "seek(fd, offset, whence): three integers");
    return NULL;
  }
  off_t r = lseek(fd, (off_t)offset, whence);
  napi_create_int64(env, r < 0 ? -(int64_t)errno : (int64_t)r, &out);
  return out;
}

uint32_t rephub_crc32(uint32_t prev, const uint8_t *p, size_t n);
int rephub_crc32_folded(void);

// crc32(buffer, prev) -> the CRC-32 of buffer continuing from prev (zlib.crc32 semantics).
static napi_value crc32(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  void *data;
  size_t len;
  uint32_t prev = 0;
  napi_value out;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_buffer_info(env, argv[0], &data, &len) != napi_ok ||
      (argc > 1 && napi_get_value_uint32(env, argv[1], &prev) != napi_ok)) {
    napi_throw_type_error(env, NULL, "crc32(buffer, prev): a Buffer and an unsigned 32-bit integer");
    return NULL;
  }
  napi_create_uint32(env, rephub_crc32(prev, (const uint8_t *)data, len), &out);
  return out;
}

// misalign(buffer, align) -> the buffer's address modulo align: O_DIRECT needs aligned memory.
static napi_value misalign(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  void *data;
  size_t len;
  uint32_t align;
  napi_value out;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
      napi_get_buffer_info(env, argv[0], &data, &len) != napi_ok ||
      napi_get_value_uint32(env, argv[1], &align) != napi_ok || align == 0) {
    napi_throw_type_error(env, NULL, "misalign(buffer, align): a Buffer and a positive integer");
    return NULL;
  }
  napi_create_uint32(env, (uint32_t)((uintptr_t)data % align), &out);
  return out;
}

// flock(fd, operation) -> 0, or -errno (EWOULDBLOCK: LOCK_NB and another open file holds it).
// The lock belongs to the open file description, so it lasts while fd is open and ends with the
// process however it ends (kill -9 included): no stale lock blocks a restart.
static napi_value flock_(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd, op;
  napi_value out;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int32(env, argv[1], &op) != napi_ok) {
    napi_throw_type_error(env, NULL, "flock(fd, operation): two integers");
    return NULL;
  }
  int r;
  do r = flock(fd, op);
  while (r < 0 && errno == EINTR);
  napi_create_int32(env, r < 0 ? -errno : 0, &out);
  return out;
}

// cached(fd, offset, length) -> pages of [offset, offset + length) in the page cache, or -errno
// (ENOSYS before Linux 6.5). No IO and no copy: the kernel walks the file's page-cache index.
static napi_value cached(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd;
  int64_t offset, length;
  napi_value out;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &offset) != napi_ok ||
      napi_get_value_int64(env, argv[2], &length) != napi_ok || offset < 0 || length <= 0) {
    napi_throw_type_error(env, NULL, "cached(fd, offset, length): an fd and a non-empty range");
    return NULL;
  }
  struct { uint64_t off, len; } range = { (uint64_t)offset, (uint64_t)length };
  struct { uint64_t cache, dirty, writeback, evicted, recently_evicted; } st;
  long r = syscall(__NR_cachestat, fd, &range, &st, 0);
  napi_create_int64(env, r < 0 ? -(int64_t)errno : (int64_t)st.cache, &out);
  return out;
}

static void constant(napi_env env, napi_value exports, const char *name, int32_t v) {
  napi_value n;
  napi_create_int32(env, v, &n);
  napi_set_named_property(env, exports, name, n);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "fadvise", NAPI_AUTO_LENGTH, fadvise, NULL, &fn);
  napi_set_named_property(env, exports, "fadvise", fn);
  napi_create_function(env, "crc32", NAPI_AUTO_LENGTH, crc32, NULL, &fn);
  napi_set_named_property(env, exports, "crc32", fn);
  napi_create_function(env, "seek", NAPI_AUTO_LENGTH, seek, NULL, &fn);
  napi_set_named_property(env, exports, "seek", fn);
  napi_create_function(env, "misalign", NAPI_AUTO_LENGTH, misalign, NULL, &fn);
  napi_set_named_property(env, exports, "misalign", fn);
  napi_create_function(env, "cached", NAPI_AUTO_LENGTH, cached, NULL, &fn);
  napi_set_named_property(env, exports, "cached", fn);
  napi_create_function(env, "flock", NAPI_AUTO_LENGTH, flock_, NULL, &fn);
  napi_set_named_property(env, exports, "flock", fn);
  constant(env, exports, "LOCK_EX", LOCK_EX);
  constant(env, exports, "LOCK_NB", LOCK_NB);
  constant(env, exports, "LOCK_UN", LOCK_UN);
  constant(env, exports, "EWOULDBLOCK", EWOULDBLOCK);
  constant(env, exports, "CRC32_FOLDED", rephub_crc32_folded());
  constant(env, exports, "SEEK_DATA", SEEK_DATA);
  constant(env, exports, "SEEK_HOLE", SEEK_HOLE);
  constant(env, exports, "ENXIO", ENXIO);
  constant(env, exports, "RANDOM", POSIX_FADV_RANDOM);
  constant(env, exports, "SEQUENTIAL", POSIX_FADV_SEQUENTIAL);
  constant(env, exports, "DONTNEED", POSIX_FADV_DONTNEED);
  constant(env, exports, "WILLNEED", POSIX_FADV_WILLNEED);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
