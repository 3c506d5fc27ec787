/**
 * What the onnx engine runs its graphs through: onnxruntime's C API (c_api_runner.ts) or onnxruntime-node's
 * binding (binding_runner.ts). Both open sessions with SESSION_OPTIONS, so both paths give the same bits.
 */
import type * as Ort from 'onnxruntime-node';

/**
 * Every session's options, on either path: one intra-op thread per worker so that parallelism comes from
 * dtrain's own workers and results never depend on a thread pool's split. (The execution provider is the
 * device's: EXECUTION_PROVIDERS.)
 */
export const SESSION_OPTIONS = {
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: 'all',
} as const satisfies Ort.InferenceSession.SessionOptions;

/**
 * Each device's execution provider, by the name each path knows it by; onnxruntime adds its CPU provider
 * for the nodes the device has no kernel for. The C API appends providers by name
 * (SessionOptionsAppendExecutionProvider), which covers WebGPU but not CUDA (it has its own call): CUDA
 * goes through the binding.
 */
export const EXECUTION_PROVIDERS = {
  cpu: { cApi: null, binding: 'cpu' },
  webgpu: { cApi: 'WebGPU', binding: 'webgpu' },
  cuda: { cApi: undefined, binding: 'cuda' },
} as const;

/** An input: its data and dims (data.length must be their product). May live in shared memory. */
export interface Feed {
  data: Float32Array | BigInt64Array;
  dims: number[];
}

/** An output: written into `data`, whose length must be the product of the dims it will have. */
export type Fetch = Feed;

/** One graph's session. Every run of it must use the same input and output names. */
export interface GraphRunner {
  run(feeds: Record<string, Feed>, fetches: Record<string, Fetch>): void | Promise<void>;
  release(): Promise<void>;
}
