/*
 * dtrain's one native helper: a plain (non-shared) ArrayBuffer over the memory of a typed array that lives
 * in a SharedArrayBuffer. onnxruntime-node refuses SharedArrayBuffers as tensor data, so without this every
 * worker thread copies the parameters (2.3 MB) and the batch it reads once per step. The alias owns
 * nothing: the SharedArrayBuffer must outlive it (dtrain keeps its training memory for the whole run), and
 * the caller orders reads after writes (dtrain's passes do).
 */
#include <node_api.h>

static napi_value Alias(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_typedarray_type type;
  size_t length, offset;
  void *data;
  napi_value buffer, external, result;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_typedarray_info(env, argv[0], &type, &length, &data, &buffer, &offset) != napi_ok ||
      type != napi_float32_array) {
    napi_throw_type_error(env, NULL, "shared_alias: expected a Float32Array");
    return NULL;
  }
  if (napi_create_external_arraybuffer(env, data, length * 4, NULL, NULL, &external) != napi_ok ||
      napi_create_typedarray(env, napi_float32_array, length, external, 0, &result) != napi_ok) {
    napi_throw_error(env, NULL, "shared_alias: could not create the alias");
    return NULL;
  }
  return result;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "alias", NAPI_AUTO_LENGTH, Alias, NULL, &fn);
  napi_set_named_property(env, exports, "alias", fn);
  return exports;
}
