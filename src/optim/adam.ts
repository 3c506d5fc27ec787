/**
 * Adam with PyTorch's semantics (torch.optim.Adam, no weight decay, no amsgrad) over ranges of the flat
 * parameter vector, so that threads can each update their own range. The arithmetic runs in a small
 * wasm SIMD kernel (adam.wat) over the shared optimizer memory (optimizer_memory.ts).
 */
import { ADAM_WASM_BASE64, ADAM_WASM_UNSHARED_BASE64 } from './adam_wasm.js';

export interface AdamOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
}

export const ADAM_DEFAULTS: AdamOptions = { lr: 0.001, beta1: 0.9, beta2: 0.999, eps: 1e-8 };

const compiled = new Map<boolean, WebAssembly.Module>();

function adamModule(shared: boolean): WebAssembly.Module {
  let module = compiled.get(shared);
  if (!module) {
    module = new WebAssembly.Module(Buffer.from(shared ? ADAM_WASM_BASE64 : ADAM_WASM_UNSHARED_BASE64, 'base64'));
    compiled.set(shared, module);
  }
  return module;
}

export type AdamKernel = (
  pIn: number, mIn: number, vIn: number, g: number,
  pOut: number, mOut: number, vOut: number, n: number,
  c1: number, b2: number, c2: number, negStep: number, invBc2sqrt: number, eps: number,
) => number;

/** The kernel bound to one shared memory; every thread instantiates its own over the same memory. */
export function adamKernel(memory: WebAssembly.Memory): AdamKernel {
  const instance = new WebAssembly.Instance(adamModule(memory.buffer instanceof SharedArrayBuffer), { env: { memory } });
  return instance.exports.adam as AdamKernel;
}

/** The per-step scalars, computed in double precision as PyTorch's Python-side code does. */
export function adamScalars(options: AdamOptions, step: number) {
  const bc1 = 1 - options.beta1 ** step;
  const bc2 = 1 - options.beta2 ** step;
  return {
    c1: 1 - options.beta1,
    b2: options.beta2,
    c2: 1 - options.beta2,
    negStep: -options.lr / bc1,
    invBc2sqrt: 1 / Math.sqrt(bc2),
    eps: options.eps,
  };
}
