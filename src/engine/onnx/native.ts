/**
 * The one loader of dtrain's native addon (native/dtrain_native.c, built into build/ by npm install): the
 * onnxruntime C API path and the shared-memory alias. Both are optional: null when the addon is not built,
 * DTRAIN_NO_NATIVE is set, or (C API) the library is not where onnxruntime-node keeps it; the engine then
 * goes through onnxruntime-node's binding.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { packageRoot } from '../../paths.js';

/** An opaque handle to a native session or plan; the native object is released when it is collected. */
export type NativeHandle = object;

/** Session options as the C API's numbers (ExecutionMode, GraphOptimizationLevel): see c_api_runner.ts. */
export interface NativeSessionOptions {
  intraOpNumThreads: number;
  interOpNumThreads: number;
  executionMode: number;
  graphOptimizationLevel: number;
  /** The C API's name of an execution provider to add (e.g. "WebGPU"); absent: the CPU provider alone. */
  executionProvider?: string;
}

export interface NativeAddon {
  load(library: string): string;
  session(model: Uint8Array, options: NativeSessionOptions): NativeHandle;
  plan(session: NativeHandle, inputs: string[], outputs: string[]): NativeHandle;
  run(plan: NativeHandle, inputs: (Float32Array | BigInt64Array)[], inputDims: number[][], outputs: (Float32Array | BigInt64Array)[], outputDims: number[][]): void;
  /** A plain Float32Array over the memory of one in a SharedArrayBuffer (which the binding refuses). */
  alias(shared: Float32Array): Float32Array;
}

const require = createRequire(import.meta.url);
let addon: NativeAddon | null | undefined;
let cApi: { native: NativeAddon; version: string } | null | undefined;

export function nativeAddon(): NativeAddon | null {
  if (addon !== undefined) return addon;
  addon = null;
  const file = join(packageRoot, 'build', 'dtrain_native.node');
  if (process.env.DTRAIN_NO_NATIVE || !existsSync(file)) return addon;
  try {
    addon = require(file) as NativeAddon;
  } catch {
    addon = null;
  }
  return addon;
}

/** The addon with onnxruntime's C API loaded from onnxruntime-node's own library, and its version. */
export function ortCApi(): { native: NativeAddon; version: string } | null {
  if (cApi !== undefined) return cApi;
  cApi = null;
  const native = nativeAddon();
  if (!native || process.platform !== 'linux') return cApi;
  try {
    const library = join(dirname(require.resolve('onnxruntime-node/package.json')), 'bin', 'napi-v6', 'linux', process.arch, 'libonnxruntime.so.1');
    if (existsSync(library)) cApi = { native, version: native.load(library) };
  } catch {
    cApi = null;
  }
  return cApi;
}

export function sharedAlias(): ((shared: Float32Array) => Float32Array) | null {
  return nativeAddon()?.alias ?? null;
}
