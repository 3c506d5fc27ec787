/*
 * dtrain's one native addon (built by `npm install` into build/dtrain_native.node, loaded by
 * src/engine/onnx/native.ts). Optional: without it the onnx engine goes through onnxruntime-node's binding
 * and copies what it reads from shared memory. Two services:
 *
 * 1. onnxruntime called directly through its C API, on the very library onnxruntime-node ships, so that a
 *    step's inputs are read where they lie (shared memory included) and its outputs written into buffers
 *    dtrain owns. onnxruntime-node's binding instead copies every output into a fresh ArrayBuffer (2.3 MB
 *    of gradients a step for the tutorial MLP) and refuses SharedArrayBuffers. Same library, same model
 *    bytes, same session options (given by the caller, who also gives them to the binding): the same
 *    kernels and the same bits (tested against the binding).
 * 2. alias: a plain (non-shared) Float32Array over the memory of one in a SharedArrayBuffer, for the
 *    binding, which refuses shared memory as tensor data.
 *
 * The C API is a table of function pointers whose order is fixed and only ever appended to (API version
 * ORT_API_VERSION below); this file declares just the entries it uses, by their position in that table.
 *
 *   load(libraryPath) -> version string          dlopen + OrtGetApiBase()->GetApi(ORT_API_VERSION)
 *   session(model: Uint8Array, options) -> handle
 *       options: {intraOpNumThreads, interOpNumThreads, executionMode, graphOptimizationLevel}, as the C
 *       API's numbers (ExecutionMode, GraphOptimizationLevel), and optionally executionProvider: the C API's
 *       name of a provider to append (e.g. "WebGPU"; absent: the CPU alone)
 *   plan(session, inputNames, outputNames) -> handle
 *   run(plan, inputs: TypedArray[], inputDims: number[][], outputs: TypedArray[], outputDims: number[][])
 *   alias(shared: Float32Array) -> Float32Array
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ORT_API_VERSION 29

typedef struct OrtStatus OrtStatus;
typedef struct OrtEnv OrtEnv;
typedef struct OrtSession OrtSession;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtValue OrtValue;
typedef struct OrtRunOptions OrtRunOptions;
typedef struct OrtApi OrtApi;
typedef struct {
  const OrtApi *(*GetApi)(uint32_t version);
  const char *(*GetVersionString)(void);
} OrtApiBase;

enum { LOGGING_WARNING = 2, ARENA_ALLOCATOR = 1, MEM_TYPE_DEFAULT = 0 };
enum { ELEMENT_FLOAT = 1, ELEMENT_INT64 = 7 };

/* Positions in the OrtApi table. */
enum {
  GET_ERROR_MESSAGE = 2,
  CREATE_ENV = 3,
  CREATE_SESSION_FROM_ARRAY = 8,
  RUN = 9,
  CREATE_SESSION_OPTIONS = 10,
  SET_SESSION_EXECUTION_MODE = 13,
  SET_SESSION_GRAPH_OPTIMIZATION_LEVEL = 23,
  SET_INTRA_OP_NUM_THREADS = 24,
  SET_INTER_OP_NUM_THREADS = 25,
  CREATE_TENSOR_WITH_DATA_AS_ORT_VALUE = 49,
  CREATE_CPU_MEMORY_INFO = 69,
  RELEASE_STATUS = 93,
  RELEASE_SESSION = 95,
  RELEASE_VALUE = 96,
  RELEASE_SESSION_OPTIONS = 100,
  SESSION_OPTIONS_APPEND_EXECUTION_PROVIDER = 216,
};

static void *const *api;
static OrtEnv *ortEnv;
static OrtMemoryInfo *cpu;

#define ENTRY(index, type) ((type)api[index])

typedef const char *(*GetErrorMessageFn)(const OrtStatus *);
typedef void (*ReleaseFn)(void *);

/* Throws the status's message as a JS error and releases it; returns 1 if there was an error. */
static int failed(napi_env napi, OrtStatus *status, const char *what) {
  if (!status) return 0;
  char message[1024];
  snprintf(message, sizeof message, "onnxruntime %s: %s", what, ENTRY(GET_ERROR_MESSAGE, GetErrorMessageFn)(status));
  ENTRY(RELEASE_STATUS, ReleaseFn)(status);
  napi_throw_error(napi, NULL, message);
  return 1;
}

static napi_value LoadLocked(napi_env napi, const char *path, const OrtApiBase **baseOut);

static napi_value Load(napi_env napi, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  char path[4096];
  size_t length;
  if (napi_get_cb_info(napi, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_string_utf8(napi, argv[0], path, sizeof path, &length) != napi_ok) {
    napi_throw_type_error(napi, NULL, "dtrain_native.load: expected the onnxruntime library's path");
    return NULL;
  }
  static const OrtApiBase *base;
  // Every worker thread loads this addon and calls load(): the table, the environment and the memory info
  // are process-wide, so one thread sets them up while the others wait.
  static pthread_mutex_t once = PTHREAD_MUTEX_INITIALIZER;
  pthread_mutex_lock(&once);
  napi_value result = LoadLocked(napi, path, &base);
  pthread_mutex_unlock(&once);
  return result;
}

/* load()'s body, under its lock; `api` is published only once the environment exists. */
static napi_value LoadLocked(napi_env napi, const char *path, const OrtApiBase **baseOut) {
  const OrtApiBase *base = *baseOut;
  if (!api) {
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    const OrtApiBase *(*getBase)(void) = library ? (const OrtApiBase *(*)(void))dlsym(library, "OrtGetApiBase") : NULL;
    base = getBase ? getBase() : NULL;
    void *const *table = base ? (void *const *)base->GetApi(ORT_API_VERSION) : NULL;
    if (!table) {
      char message[512];
      snprintf(message, sizeof message, "dtrain_native.load: no onnxruntime C API of version 29 or later in that library (%s)",
               !library ? dlerror() : !getBase ? "it has no OrtGetApiBase" : "GetApi refused the version");
      napi_throw_error(napi, NULL, message);
      return NULL;
    }
    api = table;
    typedef OrtStatus *(*CreateEnvFn)(int, const char *, OrtEnv **);
    typedef OrtStatus *(*CreateCpuMemoryInfoFn)(int, int, OrtMemoryInfo **);
    if (failed(napi, ENTRY(CREATE_ENV, CreateEnvFn)(LOGGING_WARNING, "dtrain", &ortEnv), "CreateEnv") ||
        failed(napi, ENTRY(CREATE_CPU_MEMORY_INFO, CreateCpuMemoryInfoFn)(ARENA_ALLOCATOR, MEM_TYPE_DEFAULT, &cpu), "CreateCpuMemoryInfo")) {
      api = NULL;
      return NULL;
    }
    *baseOut = base;
  }
  napi_value version;
  napi_create_string_utf8(napi, base->GetVersionString(), NAPI_AUTO_LENGTH, &version);
  return version;
}

static void FinalizeSession(napi_env napi, void *session, void *hint) {
  (void)napi;
  (void)hint;
  ENTRY(RELEASE_SESSION, ReleaseFn)(session);
}

/*
 * options.executionProvider, when present: the provider appended by its C API name ("WebGPU"), with its
 * default options; onnxruntime then places on it every node it has a kernel for, the rest on the CPU.
 * Returns 0 after throwing.
 */
static int appendProvider(napi_env napi, napi_value object, OrtSessionOptions *options) {
  bool has = false;
  if (napi_has_named_property(napi, object, "executionProvider", &has) != napi_ok || !has) return 1;
  napi_value property;
  char name[64];
  size_t length;
  if (napi_get_named_property(napi, object, "executionProvider", &property) != napi_ok ||
      napi_get_value_string_utf8(napi, property, name, sizeof name, &length) != napi_ok) {
    napi_throw_type_error(napi, NULL, "dtrain_native.session: options.executionProvider must be a string");
    return 0;
  }
  typedef OrtStatus *(*AppendFn)(OrtSessionOptions *, const char *, const char *const *, const char *const *, size_t);
  return !failed(napi, ENTRY(SESSION_OPTIONS_APPEND_EXECUTION_PROVIDER, AppendFn)(options, name, NULL, NULL, 0), "SessionOptionsAppendExecutionProvider");
}

/* The session options, from the caller's object; 0 after throwing. */
static OrtSessionOptions *sessionOptions(napi_env napi, napi_value object) {
  static const struct { const char *name; size_t entry; const char *what; } settings[] = {
    {"intraOpNumThreads", SET_INTRA_OP_NUM_THREADS, "SetIntraOpNumThreads"},
    {"interOpNumThreads", SET_INTER_OP_NUM_THREADS, "SetInterOpNumThreads"},
    {"executionMode", SET_SESSION_EXECUTION_MODE, "SetSessionExecutionMode"},
    {"graphOptimizationLevel", SET_SESSION_GRAPH_OPTIMIZATION_LEVEL, "SetSessionGraphOptimizationLevel"},
  };
  typedef OrtStatus *(*CreateOptionsFn)(OrtSessionOptions **);
  typedef OrtStatus *(*SetIntFn)(OrtSessionOptions *, int);
  OrtSessionOptions *options = NULL;
  if (failed(napi, ENTRY(CREATE_SESSION_OPTIONS, CreateOptionsFn)(&options), "CreateSessionOptions")) return NULL;
  for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
    napi_value property;
    int32_t value;
    if (napi_get_named_property(napi, object, settings[i].name, &property) != napi_ok ||
        napi_get_value_int32(napi, property, &value) != napi_ok) {
      ENTRY(RELEASE_SESSION_OPTIONS, ReleaseFn)(options);
      char message[256];
      snprintf(message, sizeof message, "dtrain_native.session: options.%s must be a number", settings[i].name);
      napi_throw_type_error(napi, NULL, message);
      return NULL;
    }
    if (failed(napi, ENTRY(settings[i].entry, SetIntFn)(options, value), settings[i].what)) {
      ENTRY(RELEASE_SESSION_OPTIONS, ReleaseFn)(options);
      return NULL;
    }
  }
  if (!appendProvider(napi, object, options)) {
    ENTRY(RELEASE_SESSION_OPTIONS, ReleaseFn)(options);
    return NULL;
  }
  return options;
}

/* A typed array's element type, data and length (in elements); false if the value is not a typed array. */
static int typedArray(napi_env napi, napi_value value, napi_typedarray_type *type, void **data, size_t *length) {
  size_t offset;
  napi_value buffer;
  return napi_get_typedarray_info(napi, value, type, length, data, &buffer, &offset) == napi_ok;
}

static napi_value Session(napi_env napi, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_typedarray_type type;
  size_t length;
  void *model;
  if (!api || napi_get_cb_info(napi, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
      !typedArray(napi, argv[0], &type, &model, &length) || type != napi_uint8_array) {
    napi_throw_type_error(napi, NULL, "dtrain_native.session: expected (model: Uint8Array, options), after load");
    return NULL;
  }
  OrtSessionOptions *options = sessionOptions(napi, argv[1]);
  if (!options) return NULL;
  typedef OrtStatus *(*CreateSessionFn)(const OrtEnv *, const void *, size_t, const OrtSessionOptions *, OrtSession **);
  OrtSession *session = NULL;
  int bad = failed(napi, ENTRY(CREATE_SESSION_FROM_ARRAY, CreateSessionFn)(ortEnv, model, length, options, &session), "CreateSessionFromArray");
  ENTRY(RELEASE_SESSION_OPTIONS, ReleaseFn)(options);
  if (bad) return NULL;
  napi_value handle;
  napi_create_external(napi, session, FinalizeSession, NULL, &handle);
  return handle;
}

typedef struct {
  OrtSession *session;
  napi_ref sessionHandle; /* keeps the session alive as long as the plan */
  size_t inputs, outputs;
  char **names;           /* inputs first, then outputs */
} Plan;

static void FinalizePlan(napi_env napi, void *data, void *hint) {
  (void)hint;
  Plan *plan = data;
  if (plan->sessionHandle) napi_delete_reference(napi, plan->sessionHandle);
  for (size_t i = 0; i < plan->inputs + plan->outputs; i++) free(plan->names[i]);
  free(plan->names);
  free(plan);
}

static int names(napi_env napi, napi_value list, char **out, size_t count) {
  for (size_t i = 0; i < count; i++) {
    napi_value item;
    size_t length;
    if (napi_get_element(napi, list, (uint32_t)i, &item) != napi_ok ||
        napi_get_value_string_utf8(napi, item, NULL, 0, &length) != napi_ok) return 0;
    out[i] = malloc(length + 1);
    napi_get_value_string_utf8(napi, item, out[i], length + 1, &length);
  }
  return 1;
}

static napi_value MakePlan(napi_env napi, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  void *session;
  uint32_t inputs, outputs;
  if (napi_get_cb_info(napi, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3 ||
      napi_get_value_external(napi, argv[0], &session) != napi_ok ||
      napi_get_array_length(napi, argv[1], &inputs) != napi_ok || napi_get_array_length(napi, argv[2], &outputs) != napi_ok) {
    napi_throw_type_error(napi, NULL, "dtrain_native.plan: expected (session, inputNames, outputNames)");
    return NULL;
  }
  Plan *plan = calloc(1, sizeof *plan);
  plan->session = session;
  napi_create_reference(napi, argv[0], 1, &plan->sessionHandle);
  plan->inputs = inputs;
  plan->outputs = outputs;
  plan->names = calloc(inputs + outputs, sizeof(char *));
  if (!names(napi, argv[1], plan->names, inputs) || !names(napi, argv[2], plan->names + inputs, outputs)) {
    FinalizePlan(napi, plan, NULL);
    napi_throw_type_error(napi, NULL, "dtrain_native.plan: names must be strings");
    return NULL;
  }
  napi_value handle;
  napi_create_external(napi, plan, FinalizePlan, NULL, &handle);
  return handle;
}

/* An OrtValue over a typed array's memory, with the dims given in a JS array; NULL after throwing. */
static OrtValue *tensor(napi_env napi, napi_value array, napi_value dimsList) {
  napi_typedarray_type type;
  size_t length;
  void *data;
  uint32_t rank;
  int64_t dims[8];
  if (!typedArray(napi, array, &type, &data, &length) ||
      (type != napi_float32_array && type != napi_bigint64_array) ||
      napi_get_array_length(napi, dimsList, &rank) != napi_ok || rank > 8) {
    napi_throw_type_error(napi, NULL, "dtrain_native.run: tensors must be Float32Array or BigInt64Array with up to 8 dims");
    return NULL;
  }
  int64_t count = 1;
  for (uint32_t d = 0; d < rank; d++) {
    napi_value value;
    if (napi_get_element(napi, dimsList, d, &value) != napi_ok || napi_get_value_int64(napi, value, &dims[d]) != napi_ok) {
      napi_throw_type_error(napi, NULL, "dtrain_native.run: dims must be numbers");
      return NULL;
    }
    // Negative dims, or a product that overflows, must not pass for the array's length.
    if (dims[d] < 0 || __builtin_mul_overflow(count, dims[d], &count)) {
      napi_throw_range_error(napi, NULL, "dtrain_native.run: a tensor's dims must be non-negative and their product fit in 64 bits");
      return NULL;
    }
  }
  if (count != (int64_t)length) {
    napi_throw_range_error(napi, NULL, "dtrain_native.run: a tensor's dims do not match its length");
    return NULL;
  }
  typedef OrtStatus *(*CreateTensorFn)(const OrtMemoryInfo *, void *, size_t, const int64_t *, size_t, int, OrtValue **);
  OrtValue *value = NULL;
  int element = type == napi_float32_array ? ELEMENT_FLOAT : ELEMENT_INT64;
  size_t bytes = length * (type == napi_float32_array ? 4 : 8);
  if (failed(napi, ENTRY(CREATE_TENSOR_WITH_DATA_AS_ORT_VALUE, CreateTensorFn)(cpu, data, bytes, dims, rank, element, &value), "CreateTensorWithDataAsOrtValue")) return NULL;
  return value;
}

static napi_value Run(napi_env napi, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  void *data;
  if (napi_get_cb_info(napi, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5 || napi_get_value_external(napi, argv[0], &data) != napi_ok) {
    napi_throw_type_error(napi, NULL, "dtrain_native.run: expected (plan, inputs, inputDims, outputs, outputDims)");
    return NULL;
  }
  Plan *plan = data;
  size_t total = plan->inputs + plan->outputs;
  OrtValue **values = calloc(total, sizeof(OrtValue *));
  int ok = 1;
  for (size_t i = 0; ok && i < total; i++) {
    int input = i < plan->inputs;
    napi_value array, dims;
    uint32_t k = (uint32_t)(input ? i : i - plan->inputs);
    /* Fails when the thread is being terminated (a worker's uncaught error): stop, touching nothing. */
    if (napi_get_element(napi, argv[input ? 1 : 3], k, &array) != napi_ok || napi_get_element(napi, argv[input ? 2 : 4], k, &dims) != napi_ok) {
      napi_throw_type_error(napi, NULL, "dtrain_native.run: expected arrays of tensors and of dims");
      ok = 0;
      break;
    }
    values[i] = tensor(napi, array, dims);
    ok = values[i] != NULL;
  }
  if (ok) {
    typedef OrtStatus *(*RunFn)(OrtSession *, const OrtRunOptions *, const char *const *, const OrtValue *const *, size_t, const char *const *, size_t, OrtValue **);
    ok = !failed(napi, ENTRY(RUN, RunFn)(plan->session, NULL, (const char *const *)plan->names, (const OrtValue *const *)values, plan->inputs,
                                         (const char *const *)plan->names + plan->inputs, plan->outputs, values + plan->inputs), "Run");
  }
  for (size_t i = 0; i < total; i++) if (values[i]) ENTRY(RELEASE_VALUE, ReleaseFn)(values[i]);
  free(values);
  return NULL;
}

/*
 * A plain ArrayBuffer over a shared Float32Array's memory. It owns nothing: the SharedArrayBuffer must
 * outlive it (dtrain keeps its training memory for the whole run), and the caller orders reads after
 * writes (dtrain's passes do).
 */
static napi_value Alias(napi_env napi, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_typedarray_type type;
  size_t length;
  void *data;
  napi_value external, result;
  if (napi_get_cb_info(napi, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 || !typedArray(napi, argv[0], &type, &data, &length) ||
      type != napi_float32_array) {
    napi_throw_type_error(napi, NULL, "shared_alias: expected a Float32Array");
    return NULL;
  }
  if (napi_create_external_arraybuffer(napi, data, length * 4, NULL, NULL, &external) != napi_ok ||
      napi_create_typedarray(napi, napi_float32_array, length, external, 0, &result) != napi_ok) {
    napi_throw_error(napi, NULL, "shared_alias: could not create the alias");
    return NULL;
  }
  return result;
}

NAPI_MODULE_INIT() {
  const struct { const char *name; napi_callback fn; } functions[] = {
    {"load", Load}, {"session", Session}, {"plan", MakePlan}, {"run", Run}, {"alias", Alias},
  };
  for (size_t i = 0; i < sizeof functions / sizeof functions[0]; i++) {
    napi_value fn;
    napi_create_function(env, functions[i].name, NAPI_AUTO_LENGTH, functions[i].fn, NULL, &fn);
    napi_set_named_property(env, exports, functions[i].name, fn);
  }
  return exports;
}
