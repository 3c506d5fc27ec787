/**
 * Adam with PyTorch's semantics (torch.optim.Adam, no weight decay, no amsgrad) over ranges of the flat
 * parameter vector, so that threads can each update their own range. The arithmetic runs in a small
 * wasm SIMD kernel (adam.wat) over the shared optimizer memory (optimizer_memory.ts).
 */
import { ADAM_WASM_BASE64, ADAM_WASM_UNSHARED_BASE64 } from './adam_wasm.js';
import { GRAD_CHUNK, type OptimizerMemory } from './optimizer_memory.js';

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

export type AdamScalars = ReturnType<typeof adamScalars>;

/** The per-step scalars by name, in the wasm kernel's argument order (a device's Adam takes them the same way). */
export const ADAM_SCALARS = ['c1', 'b2', 'c2', 'negStep', 'invBc2sqrt', 'eps'] as const satisfies readonly (keyof AdamScalars)[];

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

/**
 * One Adam step over params[offset, offset + gradient.length) from generation `from` to `to`, streaming
 * the gradient through a slot's scratch chunk by chunk. Returns true if any gradient element was not finite.
 */
export function adamRange(
  kernel: AdamKernel,
  memory: OptimizerMemory,
  slot: number,
  generation: number,
  offset: number,
  gradient: Float32Array,
  s: AdamScalars,
): boolean {
  const { generations } = memory.layout;
  const from = generations[generation & 1];
  const to = generations[(generation + 1) & 1];
  const scratch = memory.scratch(slot);
  let bad = 0;
  for (let start = 0; start < gradient.length; start += GRAD_CHUNK) {
    const n = Math.min(GRAD_CHUNK, gradient.length - start);
    scratch.floats.set(gradient.subarray(start, start + n));
    const at = (offset + start) * 4;
    bad |= kernel(from.params + at, from.m + at, from.v + at, scratch.offset, to.params + at, to.m + at, to.v + at, n,
      s.c1, s.b2, s.c2, s.negStep, s.invBc2sqrt, s.eps);
  }
  return bad !== 0;
}
