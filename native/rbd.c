// Ceph RBD images for Node (N-API), through librbd in user space. librbd and librados are
// loaded with dlopen when first used, so the addon builds without Ceph's headers or libraries
// and rephub runs without them; only an rbd: volume needs them. Every call that can wait on the
// cluster runs off the event loop: open, lock and close as async work on Node's threadpool, and
// reads, writes and flushes as librbd aio, whose completions (on librbd's threads) come back to
// JavaScript through a thread-safe function. One file (over 450 lines) because N-API's
// boilerplate per entry point is most of it; the dlopen table and the aio path are each short.
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

typedef void *rados_t;
typedef void *rados_ioctx_t;
typedef void *rbd_image_t;
typedef void *rbd_completion_t;
typedef void (*rbd_callback_t)(rbd_completion_t cb, void *arg);
#define RBD_LOCK_MODE_EXCLUSIVE 0

static struct {
  int (*rados_create2)(rados_t *, const char *, const char *, uint64_t);
  int (*rados_conf_read_file)(rados_t, const char *);
  int (*rados_conf_set)(rados_t, const char *, const char *);
  int (*rados_connect)(rados_t);
  void (*rados_shutdown)(rados_t);
  int (*rados_ioctx_create)(rados_t, const char *, rados_ioctx_t *);
  void (*rados_ioctx_destroy)(rados_ioctx_t);
  int (*rbd_open)(rados_ioctx_t, const char *, rbd_image_t *, const char *);
  int (*rbd_create)(rados_ioctx_t, const char *, uint64_t, int *);
  int (*rbd_close)(rbd_image_t);
  int (*rbd_get_size)(rbd_image_t, uint64_t *);
  int (*rbd_lock_acquire)(rbd_image_t, int);
  int (*rbd_lock_release)(rbd_image_t);
  int (*rbd_is_exclusive_lock_owner)(rbd_image_t, int *);
  int (*rbd_aio_create_completion)(void *, rbd_callback_t, rbd_completion_t *);
  int (*rbd_aio_write)(rbd_image_t, uint64_t, size_t, const char *, rbd_completion_t);
  int (*rbd_aio_read)(rbd_image_t, uint64_t, size_t, char *, rbd_completion_t);
  int (*rbd_aio_flush)(rbd_image_t, rbd_completion_t);
  ssize_t (*rbd_aio_get_return_value)(rbd_completion_t);
  void (*rbd_aio_release)(rbd_completion_t);
  int (*rbd_metadata_get)(rbd_image_t, const char *, char *, size_t *);
  int (*rbd_metadata_set)(rbd_image_t, const char *, const char *);
  int (*rbd_lock_get_owners)(rbd_image_t, int *, char **, size_t *);
  void (*rbd_lock_get_owners_cleanup)(char **, size_t);
} L;
static char load_error[512];
static int loaded; // 0 not tried, 1 ok, -1 failed

static int load_librbd(void) {
  if (loaded) return loaded;
  void *rados = dlopen("librados.so.2", RTLD_NOW | RTLD_GLOBAL);
  void *rbd = rados ? dlopen("librbd.so.1", RTLD_NOW | RTLD_GLOBAL) : NULL;
  if (!rbd) {
    snprintf(load_error, sizeof load_error, "librbd not available: %s (install librbd1)", dlerror());
    return loaded = -1;
  }
#define SYM(lib, name)                                                                 \
  if (!(*(void **)&L.name = dlsym(lib, #name))) {                                      \
    snprintf(load_error, sizeof load_error, "librbd/librados lacks %s", #name);        \
    return loaded = -1;                                                                \
  }
  SYM(rados, rados_create2) SYM(rados, rados_conf_read_file) SYM(rados, rados_conf_set) SYM(rados, rados_connect)
  SYM(rados, rados_shutdown) SYM(rados, rados_ioctx_create) SYM(rados, rados_ioctx_destroy)
  SYM(rbd, rbd_open) SYM(rbd, rbd_create) SYM(rbd, rbd_close) SYM(rbd, rbd_get_size) SYM(rbd, rbd_lock_acquire)
  SYM(rbd, rbd_lock_release) SYM(rbd, rbd_is_exclusive_lock_owner) SYM(rbd, rbd_aio_create_completion)
  SYM(rbd, rbd_aio_write) SYM(rbd, rbd_aio_read) SYM(rbd, rbd_aio_flush) SYM(rbd, rbd_aio_get_return_value)
  SYM(rbd, rbd_aio_release) SYM(rbd, rbd_metadata_get) SYM(rbd, rbd_metadata_set) SYM(rbd, rbd_lock_get_owners)
  SYM(rbd, rbd_lock_get_owners_cleanup)
#undef SYM
  return loaded = 1;
}

// One open image: its cluster connection, pool context and the thread-safe function that
// carries its aio completions to JavaScript.
typedef struct {
  rados_t cluster;
  rados_ioctx_t io;
  rbd_image_t image;
  uint64_t size;
  napi_threadsafe_function tsfn;
  int inflight;
  int closed;
} Image;

// One aio: the completion, its buffer (referenced until done) and the JavaScript callback.
typedef struct {
  Image *img;
  rbd_completion_t c;
  napi_ref buf;
  napi_ref cb;
  ssize_t result;
} Aio;

static void throw_errno(napi_env env, const char *what, int err) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err < 0 ? -err : err));
  napi_value e, m, code;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, NULL, m, &e);
  napi_create_int32(env, err < 0 ? err : -err, &code);
  napi_set_named_property(env, e, "errno", code);
  napi_throw(env, e);
}

static napi_value make_error(napi_env env, const char *what, int err) {
  char msg[1200];
  snprintf(msg, sizeof msg, "%s: %s", what, err ? strerror(err < 0 ? -err : err) : load_error);
  napi_value e, m, code;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, NULL, m, &e);
  napi_create_int32(env, err < 0 ? err : -err, &code);
  napi_set_named_property(env, e, "errno", code);
  return e;
}

// ---- completions: librbd thread -> event loop ----

static void on_complete(rbd_completion_t c, void *arg) {
  Aio *a = arg;
  a->result = L.rbd_aio_get_return_value(c);
  napi_call_threadsafe_function(a->img->tsfn, a, napi_tsfn_blocking);
}

static void deliver(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  (void)context;
  Aio *a = data;
  L.rbd_aio_release(a->c);
  // IO in flight keeps the process alive, as a pending fs call does.
  if (--a->img->inflight == 0 && env) napi_unref_threadsafe_function(env, a->img->tsfn);
  if (env) {
    napi_value cb, undef, res;
    napi_get_reference_value(env, a->cb, &cb);
    napi_get_undefined(env, &undef);
    napi_create_int64(env, (int64_t)a->result, &res);
    napi_delete_reference(env, a->cb);
    if (a->buf) napi_delete_reference(env, a->buf);
    free(a);
    napi_call_function(env, undef, cb, 1, &res, NULL);
  } else {
    free(a);
  }
}

// ---- open (async work) ----

typedef struct {
  char conf[1024], user[256], pool[256], name[256];
  uint64_t create_size;
  int err;
  const char *step;
  Image *img;
  napi_deferred deferred;
  napi_async_work work;
} OpenJob;

static void open_execute(napi_env env, void *data) {
  (void)env;
  OpenJob *j = data;
  Image *img = calloc(1, sizeof *img);
  int r;
  j->step = "rados_create2";
  if ((r = L.rados_create2(&img->cluster, "ceph", j->user[0] ? j->user : "client.admin", 0)) < 0) goto fail0;
  j->step = "read the Ceph configuration";
  if ((r = L.rados_conf_read_file(img->cluster, j->conf[0] ? j->conf : NULL)) < 0) goto fail1;
  // Bounded waits: a cluster that is down fails the open instead of hanging it for minutes.
  L.rados_conf_set(img->cluster, "client_mount_timeout", "15");
  L.rados_conf_set(img->cluster, "rados_mon_op_timeout", "15");
  // rbd_aio_write copies the data before it returns, whatever ceph.conf says: the hub hands a
  // write over and reuses its buffer (storage/write-window.ts) while the write is in flight.
  j->step = "set rbd_disable_zero_copy_writes";
  if ((r = L.rados_conf_set(img->cluster, "rbd_disable_zero_copy_writes", "true")) < 0) goto fail1;
  j->step = "connect to the Ceph cluster";
  if ((r = L.rados_connect(img->cluster)) < 0) goto fail1;
  j->step = "open the pool";
  if ((r = L.rados_ioctx_create(img->cluster, j->pool, &img->io)) < 0) goto fail1;
  j->step = "open the image";
  r = L.rbd_open(img->io, j->name, &img->image, NULL);
  if (r == -ENOENT && j->create_size > 0) {
    int order = 22; // 4 MiB objects, librbd's default
    j->step = "create the image";
    if ((r = L.rbd_create(img->io, j->name, j->create_size, &order)) < 0 && r != -EEXIST) goto fail2;
    j->step = "open the image";
    r = L.rbd_open(img->io, j->name, &img->image, NULL);
  }
  if (r < 0) goto fail2;
  j->step = "read the image size";
  if ((r = L.rbd_get_size(img->image, &img->size)) < 0) goto fail3;
  j->img = img;
  return;
fail3:
  L.rbd_close(img->image);
fail2:
  L.rados_ioctx_destroy(img->io);
fail1:
  L.rados_shutdown(img->cluster);
fail0:
  free(img);
  j->err = r;
}

static void image_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  Image *img = data;
  // Closed explicitly in the normal case; an image dropped unclosed is closed here.
  if (!img->closed) {
    L.rbd_close(img->image);
    L.rados_ioctx_destroy(img->io);
    L.rados_shutdown(img->cluster);
  }
  free(img);
}

static void open_complete(napi_env env, napi_status status, void *data) {
  (void)status;
  OpenJob *j = data;
  if (j->err) {
    char what[640];
    snprintf(what, sizeof what, "rbd:%s/%s: %s", j->pool, j->name, j->step);
    napi_reject_deferred(env, j->deferred, make_error(env, what, j->err));
  } else {
    napi_value ext, name;
    napi_create_external(env, j->img, image_finalize, NULL, &ext);
    napi_create_string_utf8(env, "rbd completion", NAPI_AUTO_LENGTH, &name);
    napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, NULL, deliver, &j->img->tsfn);
    // The image's aio keeps the loop alive only while it is in flight (ref'd per call).
    napi_unref_threadsafe_function(env, j->img->tsfn);
    napi_resolve_deferred(env, j->deferred, ext);
  }
  napi_delete_async_work(env, j->work);
  free(j);
}

static int get_string(napi_env env, napi_value v, char *out, size_t cap) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_null || t == napi_undefined) {
    out[0] = 0;
    return 0;
  }
  size_t n;
  return napi_get_value_string_utf8(env, v, out, cap, &n) == napi_ok && n < cap - 1 ? 0 : -1;
}

// open(conf, user, pool, image, createSize) -> Promise<handle>
static napi_value rbd_open_(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], promise;
  if (load_librbd() < 0) {
    napi_throw_error(env, NULL, load_error);
    return NULL;
  }
  OpenJob *j = calloc(1, sizeof *j);
  int64_t create;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5 ||
      get_string(env, argv[0], j->conf, sizeof j->conf) || get_string(env, argv[1], j->user, sizeof j->user) ||
      get_string(env, argv[2], j->pool, sizeof j->pool) || get_string(env, argv[3], j->name, sizeof j->name) ||
      napi_get_value_int64(env, argv[4], &create) != napi_ok || !j->pool[0] || !j->name[0] || create < 0) {
    free(j);
    napi_throw_type_error(env, NULL, "open(conf, user, pool, image, createSize): strings and a size");
    return NULL;
  }
  j->create_size = (uint64_t)create;
  napi_value name;
  napi_create_string_utf8(env, "rbd open", NAPI_AUTO_LENGTH, &name);
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_async_work(env, NULL, name, open_execute, open_complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}

// ---- lock / close (async work on an open image) ----

typedef struct {
  Image *img;
  int op; // 0 acquire exclusive lock, 1 release it, 2 close, 3 is owner
  int r;
  napi_deferred deferred;
  napi_async_work work;
} ImageJob;

static void job_execute(napi_env env, void *data) {
  (void)env;
  ImageJob *j = data;
  Image *img = j->img;
  int owner = 0;
  switch (j->op) {
  case 0: j->r = L.rbd_lock_acquire(img->image, RBD_LOCK_MODE_EXCLUSIVE); break;
  case 1: j->r = L.rbd_lock_release(img->image); break;
  case 2:
    j->r = L.rbd_close(img->image);
    L.rados_ioctx_destroy(img->io);
    L.rados_shutdown(img->cluster);
    break;
  case 3: j->r = L.rbd_is_exclusive_lock_owner(img->image, &owner); if (j->r == 0) j->r = owner; break;
  }
}

static void job_complete(napi_env env, napi_status status, void *data) {
  (void)status;
  ImageJob *j = data;
  static const char *what[] = {"acquire the exclusive lock", "release the exclusive lock", "close", "lock owner"};
  if (j->op == 2) napi_release_threadsafe_function(j->img->tsfn, napi_tsfn_release);
  if (j->r < 0) {
    napi_reject_deferred(env, j->deferred, make_error(env, what[j->op], j->r));
  } else {
    napi_value v;
    napi_create_int32(env, j->r, &v);
    napi_resolve_deferred(env, j->deferred, v);
  }
  napi_delete_async_work(env, j->work);
  free(j);
}

static Image *get_image(napi_env env, napi_value v) {
  Image *img = NULL;
  if (napi_get_value_external(env, v, (void **)&img) != napi_ok || !img) {
    napi_throw_type_error(env, NULL, "not an rbd image handle");
    return NULL;
  }
  if (img->closed) {
    napi_throw_error(env, NULL, "rbd image closed");
    return NULL;
  }
  return img;
}

// image_job(handle, op) -> Promise<number>
static napi_value image_job(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], promise, name;
  int32_t op;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
      napi_get_value_int32(env, argv[1], &op) != napi_ok || op < 0 || op > 3) {
    napi_throw_type_error(env, NULL, "job(handle, op)");
    return NULL;
  }
  Image *img = get_image(env, argv[0]);
  if (!img) return NULL;
  if (op == 2) {
    if (img->inflight) {
      napi_throw_error(env, NULL, "rbd close with IO in flight");
      return NULL;
    }
    img->closed = 1;
  }
  ImageJob *j = calloc(1, sizeof *j);
  j->img = img;
  j->op = op;
  napi_create_string_utf8(env, "rbd job", NAPI_AUTO_LENGTH, &name);
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_async_work(env, NULL, name, job_execute, job_complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}

// ---- aio ----

// aio(handle, op, buffer|null, offset, cb(result)) -> undefined; op 0 read, 1 write, 2 flush.
// cb gets bytes read/written (or 0 for flush) or -errno.
static napi_value aio(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  int32_t op;
  int64_t off;
  void *data = NULL;
  size_t len = 0;
  napi_valuetype t;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5 ||
      napi_get_value_int32(env, argv[1], &op) != napi_ok || op < 0 || op > 2 ||
      napi_get_value_int64(env, argv[3], &off) != napi_ok || off < 0 ||
      napi_typeof(env, argv[4], &t) != napi_ok || t != napi_function ||
      (op != 2 && napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok)) {
    napi_throw_type_error(env, NULL, "aio(handle, op, buffer, offset, callback)");
    return NULL;
  }
  Image *img = get_image(env, argv[0]);
  if (!img) return NULL;
  Aio *a = calloc(1, sizeof *a);
  a->img = img;
  if (op != 2) napi_create_reference(env, argv[2], 1, &a->buf);
  napi_create_reference(env, argv[4], 1, &a->cb);
  int r = L.rbd_aio_create_completion(a, on_complete, &a->c);
  if (r == 0) {
    if (img->inflight++ == 0) napi_ref_threadsafe_function(env, img->tsfn);
    r = op == 0   ? L.rbd_aio_read(img->image, (uint64_t)off, len, data, a->c)
        : op == 1 ? L.rbd_aio_write(img->image, (uint64_t)off, len, data, a->c)
                  : L.rbd_aio_flush(img->image, a->c);
    if (r < 0) {
      if (--img->inflight == 0) napi_unref_threadsafe_function(env, img->tsfn);
      L.rbd_aio_release(a->c);
    }
  }
  if (r < 0) {
    napi_delete_reference(env, a->cb);
    if (a->buf) napi_delete_reference(env, a->buf);
    free(a);
    throw_errno(env, op == 0 ? "rbd_aio_read" : op == 1 ? "rbd_aio_write" : "rbd_aio_flush", r);
    return NULL;
  }
  return NULL;
}

// ---- image metadata and lock owners (async work) ----
// meta(handle, kind, key, value) -> Promise<string|null>: kind 0 get key (null when unset),
// 1 set key to value, 2 the exclusive lock's owners (space-separated; '' when none).
#define META_MAX 4096
typedef struct {
  Image *img;
  int kind;
  char key[256], value[META_MAX];
  int r;
  napi_deferred deferred;
  napi_async_work work;
} MetaJob;

static void meta_execute(napi_env env, void *data) {
  (void)env;
  MetaJob *j = data;
  if (j->kind == 0) {
    size_t len = sizeof j->value;
    j->r = L.rbd_metadata_get(j->img->image, j->key, j->value, &len);
  } else if (j->kind == 1) {
    j->r = L.rbd_metadata_set(j->img->image, j->key, j->value);
  } else {
    char *owners[8];
    size_t n = 8;
    int mode = 0;
    j->value[0] = 0;
    j->r = L.rbd_lock_get_owners(j->img->image, &mode, owners, &n);
    if (j->r == -ENOENT) j->r = 0, n = 0; // no owner
    if (j->r >= 0) {
      for (size_t i = 0; i < n; i++) {
        size_t used = strlen(j->value);
        snprintf(j->value + used, sizeof j->value - used, "%s%s", i ? " " : "", owners[i]);
      }
      if (n) L.rbd_lock_get_owners_cleanup(owners, n);
      j->r = 0;
    }
  }
}

static void meta_complete(napi_env env, napi_status status, void *data) {
  (void)status;
  MetaJob *j = data;
  napi_value v;
  if (j->kind == 0 && j->r == -ENOENT) {
    napi_get_null(env, &v);
    napi_resolve_deferred(env, j->deferred, v);
  } else if (j->r < 0) {
    char what[320];
    snprintf(what, sizeof what, j->kind == 2 ? "lock owners" : "%s metadata %s", j->kind ? "set" : "get", j->key);
    napi_reject_deferred(env, j->deferred, make_error(env, what, j->r));
  } else {
    if (j->kind == 1) napi_get_null(env, &v);
    else napi_create_string_utf8(env, j->value, NAPI_AUTO_LENGTH, &v);
    napi_resolve_deferred(env, j->deferred, v);
  }
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value meta(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], promise, name;
  int32_t kind;
  MetaJob *j = calloc(1, sizeof *j);
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4 ||
      napi_get_value_int32(env, argv[1], &kind) != napi_ok || kind < 0 || kind > 2 ||
      get_string(env, argv[2], j->key, sizeof j->key) || get_string(env, argv[3], j->value, sizeof j->value)) {
    free(j);
    napi_throw_type_error(env, NULL, "meta(handle, kind, key, value): key and value strings");
    return NULL;
  }
  j->img = get_image(env, argv[0]);
  if (!j->img) {
    free(j);
    return NULL;
  }
  j->kind = kind;
  napi_create_string_utf8(env, "rbd meta", NAPI_AUTO_LENGTH, &name);
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_async_work(env, NULL, name, meta_execute, meta_complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}

// size(handle) -> bytes
static napi_value size_(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1) return NULL;
  Image *img = get_image(env, argv[0]);
  if (!img) return NULL;
  napi_create_int64(env, (int64_t)img->size, &out);
  return out;
}

// available() -> '' when librbd loads, else why not.
static napi_value available(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  napi_create_string_utf8(env, load_librbd() > 0 ? "" : load_error, NAPI_AUTO_LENGTH, &out);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  static const struct {
    const char *name;
    napi_callback fn;
  } fns[] = {{"open", rbd_open_}, {"job", image_job}, {"aio", aio}, {"size", size_}, {"available", available}, {"meta", meta}};
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value f;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f);
    napi_set_named_property(env, exports, fns[i].name, f);
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
