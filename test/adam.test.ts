import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { createEngine } from '../src/engine/create.js';
import { makeSpec } from '../src/model/spec.js';
import { adamKernel, adamRange, adamScalars, ADAM_DEFAULTS } from '../src/optim/adam.js';
import { ADAM_WASM_BASE64, ADAM_WASM_UNSHARED_BASE64 } from '../src/optim/adam_wasm.js';
import { OptimizerMemory } from '../src/optim/optimizer_memory.js';
import { engineGradient } from './helpers.js';
// @ts-expect-error plain JS build script
import { assembleAdam } from '../scripts/build-wasm.mjs';

const golden = JSON.parse(readFileSync(new URL('./fixtures/golden.json', import.meta.url), 'utf8'));

/** One Adam step over the whole vector: generation g -> g + 1; 1 if the gradient was not finite. */
function adamStep(memory: OptimizerMemory, generation: number, step: number, lr: number, gradient: Float32Array): number {
  const s = adamScalars({ ...ADAM_DEFAULTS, lr }, step);
  return adamRange(adamKernel(memory.memory), memory, 0, generation, 0, gradient, s) ? 1 : 0;
}

describe('Adam', () => {
  it.each(golden.cases.map((c: { activation: string }) => [c.activation, c]))(
    'follows torch.optim.Adam for 3 steps on the golden batch (%s)',
    async (_, c) => {
      const spec = makeSpec(c.sizes[0], c.sizes.slice(1, -1), c.sizes[c.sizes.length - 1], c.activation);
      const engine = await createEngine(spec, { engine: 'onnx', device: 'cpu' });
      const memory = OptimizerMemory.allocate(c.params.length, true);
      memory.paramsOf(0).set(c.params);
      for (let step = 0; step < 3; step++) {
        const { grad } = await engineGradient(engine, spec, memory.paramsOf(step), Float32Array.from(c.x), c.labels);
        expect(adamStep(memory, step, step + 1, c.adamLr, grad)).toBe(0);
        const expected: number[] = c.paramsAfterAdamSteps[step];
        const actual = memory.paramsOf(step + 1);
        for (let i = 0; i < expected.length; i++) expect(Math.abs(actual[i] - expected[i])).toBeLessThan(2e-6);
      }
      await engine.dispose();
    },
  );

  it('handles lengths that are not a multiple of 4 and reports non-finite gradients without touching the old state', () => {
    const n = 11;
    const memory = OptimizerMemory.allocate(n, false);
    memory.paramsOf(0).set(Array.from({ length: n }, (_, i) => i / 10));
    expect(adamStep(memory, 0, 1, 0.1, Float32Array.from({ length: n }, (_, i) => (i % 3) - 1))).toBe(0);
    // The first Adam step moves every parameter with a non-zero gradient by lr against its sign.
    for (let i = 0; i < n; i++) expect(memory.paramsOf(1)[i]).toBeCloseTo(i / 10 - 0.1 * Math.sign((i % 3) - 1), 6);
    for (const bad of [NaN, Infinity, -Infinity]) {
      for (const at of [2, 9]) {
        const before = Float32Array.from(memory.paramsOf(1));
        const gradient = new Float32Array(n).fill(0.5);
        gradient[at] = bad;
        expect(adamStep(memory, 1, 2, 0.1, gradient)).toBe(1);
        expect(memory.paramsOf(1)).toEqual(before);
      }
    }
  });

  it('runs the kernels assembled from adam.wat as committed', async () => {
    expect(await assembleAdam()).toEqual({ shared: ADAM_WASM_BASE64, unshared: ADAM_WASM_UNSHARED_BASE64 });
  });

  it('gives the same bits over shared and plain memory, in chunks or not', () => {
    // Longer than two scratch chunks, so the streaming crosses chunk boundaries.
    const n = 2 * 16384 + 1001;
    const gradient = Float32Array.from({ length: n }, (_, i) => Math.cos(3 * i));
    const [a, b] = [true, false].map((shared) => OptimizerMemory.allocate(n, shared));
    for (const m of [a, b]) {
      m.paramsOf(0).set(Array.from({ length: n }, (_, i) => Math.sin(i)));
      for (let step = 0; step < 3; step++) adamStep(m, step, step + 1, 0.01, gradient);
    }
    // The same three steps as one kernel call over the whole vector (the gradient in parameter memory).
    const whole = OptimizerMemory.allocate(n, false);
    whole.paramsOf(0).set(Array.from({ length: n }, (_, i) => Math.sin(i)));
    const kernel = adamKernel(whole.memory);
    for (let step = 0; step < 3; step++) {
      const s = adamScalars({ ...ADAM_DEFAULTS, lr: 0.01 }, step + 1);
      const [from, to] = [whole.layout.generations[step & 1], whole.layout.generations[(step + 1) & 1]];
      whole.paramsOf(step + 1).set(whole.paramsOf(step));
      whole.firstMomentOf(step + 1).set(gradient);
      // g lives in the output generation's m until the kernel overwrites it: read before written, element by element.
      kernel(from.params, from.m, from.v, to.m, to.params, to.m, to.v, n, s.c1, s.b2, s.c2, s.negStep, s.invBc2sqrt, s.eps);
    }
    expect(whole.paramsOf(3)).toEqual(a.paramsOf(3));
    expect(a.memory.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(b.memory.buffer).not.toBeInstanceOf(SharedArrayBuffer);
    expect(b.paramsOf(3)).toEqual(a.paramsOf(3));
  });
});
