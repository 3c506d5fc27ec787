/**
 * onnxruntime through native/ort_direct.c: the library onnxruntime-node ships, called through its C API,
 * reading inputs where they lie and writing outputs into dtrain's own buffers (the binding copies every
 * output into a fresh ArrayBuffer: ~0.5 ms a step for the tutorial MLP, measured). Null when the helper
 * is not built or the library is not where onnxruntime-node keeps it; the engine then uses the binding.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { packageRoot } from '../../paths.js';

/** A tensor for a direct run: its data and dims (data.length must be their product). */
export interface DirectTensor {
  data: Float32Array | BigInt64Array;
  dims: number[];
}

interface Native {
  load(library: string): string;
  session(model: Uint8Array): unknown;
  plan(session: unknown, inputs: string[], outputs: string[]): unknown;
  run(plan: unknown, inputs: (Float32Array | BigInt64Array)[], inputDims: number[][], outputs: Float32Array[], outputDims: number[][]): void;
}

export class DirectSession {
  /** Held for as long as the plan: the native session is released when this handle is collected. */
  private readonly session: unknown;
  private readonly plan: unknown;

  constructor(
    private readonly native: Native,
    model: Uint8Array,
    private readonly inputs: string[],
    private readonly outputs: string[],
  ) {
    this.session = native.session(model);
    this.plan = native.plan(this.session, inputs, outputs);
  }

  /** Runs the model synchronously; outputs are written into the given arrays. */
  run(feeds: Record<string, DirectTensor>, fetches: Record<string, { data: Float32Array; dims: number[] }>): void {
    this.native.run(
      this.plan,
      this.inputs.map((n) => feeds[n].data),
      this.inputs.map((n) => feeds[n].dims),
      this.outputs.map((n) => fetches[n].data),
      this.outputs.map((n) => fetches[n].dims),
    );
  }
}

let loaded: { native: Native; version: string } | null | undefined;

export function directOrt(): { native: Native; version: string } | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  if (process.env.DTRAIN_NO_NATIVE || process.platform !== 'linux') return loaded;
  const helper = join(packageRoot, 'build', 'ort_direct.node');
  try {
    const require = createRequire(import.meta.url);
    const library = join(dirname(require.resolve('onnxruntime-node/package.json')), 'bin', 'napi-v6', 'linux', process.arch, 'libonnxruntime.so.1');
    if (!existsSync(helper) || !existsSync(library)) return loaded;
    const native = require(helper) as Native;
    loaded = { native, version: native.load(library) };
  } catch {
    loaded = null;
  }
  return loaded;
}
