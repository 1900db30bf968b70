// posix_fadvise for Node (N-API, no dependencies). Node's fs has no fadvise, and the kernel's
// readahead turns bulk reads into large page-cache folios that make every later 4 KiB write to
// them walk hundreds of buffer heads (ext4, Linux >= 6.16): a bulk reader opens its own fd and
// advises RANDOM, so its reads leave order-0 pages behind.
#define NAPI_VERSION 8
#include <node_api.h>
#include <fcntl.h>

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

static void constant(napi_env env, napi_value exports, const char *name, int32_t v) {
  napi_value n;
  napi_create_int32(env, v, &n);
  napi_set_named_property(env, exports, name, n);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "fadvise", NAPI_AUTO_LENGTH, fadvise, NULL, &fn);
  napi_set_named_property(env, exports, "fadvise", fn);
  constant(env, exports, "RANDOM", POSIX_FADV_RANDOM);
  constant(env, exports, "SEQUENTIAL", POSIX_FADV_SEQUENTIAL);
  constant(env, exports, "DONTNEED", POSIX_FADV_DONTNEED);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
