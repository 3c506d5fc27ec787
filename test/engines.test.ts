import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { createEngine } from '../src/engine/create.js';
import type { Engine, EngineName } from '../src/engine/engine.js';
import { makeSpec, paramLayout } from '../src/model/spec.js';
import { initParams } from '../src/model/init.js';
import { engineGradient, oneHot, referenceLoss } from './helpers.js';

const golden = JSON.parse(readFileSync(new URL('./fixtures/golden.json', import.meta.url), 'utf8'));
const ENGINES: EngineName[] = ['onnx', 'tfjs'];

function closeTo(actual: ArrayLike<number>, expected: ArrayLike<number>, rtol: number, atol: number) {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    const err = Math.abs(actual[i] - expected[i]) - rtol * Math.abs(expected[i]);
    worst = Math.max(worst, err);
  }
  expect(worst).toBeLessThanOrEqual(atol);
}

describe.each(ENGINES)('%s engine', (name) => {
  describe.each(golden.cases.map((c: { activation: string }) => [c.activation, c]))('against PyTorch golden values (%s)', (_, c) => {
    it('gives the loss and every gradient of the batch mean', async () => {
      const spec = makeSpec(c.sizes[0], c.sizes.slice(1, -1), c.sizes[c.sizes.length - 1], c.activation);
      const engine = await createEngine(spec, { engine: name, device: 'cpu' });
      const { loss, grad } = await engineGradient(engine, spec, Float32Array.from(c.params), Float32Array.from(c.x), c.labels);
      expect(loss).toBeCloseTo(c.loss, 6);
      closeTo(grad, c.grad, 1e-4, 1e-7);
      await engine.dispose();
    });
  });

  it.each(['sigmoid', 'relu', 'tanh'] as const)('matches central finite differences of a float64 loss (%s)', async (activation) => {
    const spec = makeSpec(5, [4, 3], 3, activation);
    const params = initParams(spec, 7);
    // Biases away from 0 keep ReLU off its kink, where a finite difference is meaningless.
    for (const layer of paramLayout(spec).layers) params.fill(0.05, layer.biasOffset, layer.biasOffset + layer.fanOut);
    const x = Float32Array.from({ length: 6 * 5 }, (_, i) => ((i * 37) % 11) / 11);
    const labels = [0, 1, 2, 1, 0, 2];
    const engine = await createEngine(spec, { engine: name, device: 'cpu' });
    const { loss, grad } = await engineGradient(engine, spec, params, x, labels);
    const p64 = Float64Array.from(params);
    expect(loss).toBeCloseTo(referenceLoss(spec, p64, x, labels), 6);
    const h = 1e-5;
    for (let i = 0; i < p64.length; i++) {
      const keep = p64[i];
      p64[i] = keep + h;
      const up = referenceLoss(spec, p64, x, labels);
      p64[i] = keep - h;
      const down = referenceLoss(spec, p64, x, labels);
      p64[i] = keep;
      expect(Math.abs(grad[i] - (up - down) / (2 * h))).toBeLessThan(2e-6 + 1e-3 * Math.abs(grad[i]));
    }
    await engine.dispose();
  });

  it('evaluates the per-row loss and predicted class', async () => {
    const spec = makeSpec(5, [4], 3, 'tanh');
    const params = initParams(spec, 3);
    const x = Float32Array.from({ length: 4 * 5 }, (_, i) => (i % 7) / 7);
    const labels = [2, 0, 1, 1];
    const engine = await createEngine(spec, { engine: name, device: 'cpu' });
    engine.setParams(params);
    const out = { rowLoss: new Float32Array(4), predicted: new Int32Array(4) };
    await engine.evaluate(x, oneHot(labels, 3), 4, out);
    for (let r = 0; r < 4; r++) {
      expect(out.rowLoss[r]).toBeCloseTo(referenceLoss(spec, params, x.subarray(r * 5, r * 5 + 5), [labels[r]]), 5);
      // The predicted class is the one with the smallest loss when taken as the label.
      const losses = [0, 1, 2].map((k) => referenceLoss(spec, params, x.subarray(r * 5, r * 5 + 5), [k]));
      expect(out.predicted[r]).toBe(losses.indexOf(Math.min(...losses)));
    }
    await engine.dispose();
  });
});

describe('onnx engine row locality', () => {
  it('gives a row bitwise the same numbers whatever call computes it, one-row calls included', async () => {
    const spec = makeSpec(784, [512, 256, 128, 64], 10, 'sigmoid');
    const params = initParams(spec, 0);
    const rows = 64;
    const x = Float32Array.from({ length: rows * 784 }, (_, i) => ((i * 7919) % 256) / 255);
    const labels = Array.from({ length: rows }, (_, i) => i % 10);
    const engine = await createEngine(spec, { engine: 'onnx', device: 'cpu' });
    const whole = await engineGradient(engine, spec, params, x, labels);
    const target = oneHot(labels, 10);
    for (const [a, b] of [[0, 1], [5, 12], [16, 32], [63, 64], [3, 40]]) {
      const n = b - a;
      const out = {
        rowLoss: new Float32Array(n),
        hidden: spec.sizes.slice(1, -1).map((w) => new Float32Array(n * w)),
        deltas: spec.sizes.slice(1).map((w) => new Float32Array(n * w)),
      };
      await engine.rowPass(x.subarray(a * 784, b * 784), target.subarray(a * 10, b * 10), n, 1 / rows, out);
      expect(out.rowLoss).toEqual(whole.out.rowLoss.subarray(a, b));
      out.hidden.forEach((h, l) => expect(h).toEqual(whole.out.hidden[l].subarray(a * spec.sizes[l + 1], b * spec.sizes[l + 1])));
      out.deltas.forEach((d, l) => expect(d).toEqual(whole.out.deltas[l].subarray(a * spec.sizes[l + 1], b * spec.sizes[l + 1])));
    }
    await engine.dispose();
  });
});

describe('onnx engine step pass', () => {
  it.each(['sigmoid', 'relu', 'tanh'] as const)('gives the loss and gradient of the two passes bit for bit, in one call (%s)', async (activation) => {
    const spec = makeSpec(784, [512, 256, 128, 64], 10, activation);
    const params = initParams(spec, 0);
    const rows = 37;
    const x = Float32Array.from({ length: rows * 784 }, (_, i) => ((i * 7919) % 256) / 255);
    const labels = Array.from({ length: rows }, (_, i) => (i * 3) % 10);
    const engine = await createEngine(spec, { engine: 'onnx', device: 'cpu' });
    const twoPasses = await engineGradient(engine, spec, params, x, labels);
    const rowLoss = new Float32Array(rows);
    const gradients = await engine.stepPass!(x, oneHot(labels, 10), rows, rowLoss);
    expect(rowLoss).toEqual(twoPasses.out.rowLoss);
    paramLayout(spec).layers.forEach(({ weightOffset, biasOffset, fanOut }, l) => {
      expect(gradients[l].weight).toEqual(twoPasses.grad.subarray(weightOffset, biasOffset));
      expect(gradients[l].bias).toEqual(twoPasses.grad.subarray(biasOffset, biasOffset + fanOut));
    });
    // One row cannot be padded (it would count twice): the caller must take the two passes.
    await expect(engine.stepPass!(x, oneHot(labels, 10), 1, rowLoss)).rejects.toThrow('stepPass needs at least 2 rows');
    await engine.dispose();
  });
});

describe('onnx engine deltas pass', () => {
  it.each(['sigmoid', 'relu', 'tanh'] as const)('rebuilds every delta of rows from their activations and last delta, bit for bit, one row included (%s)', async (activation) => {
    const spec = makeSpec(784, [512, 256, 128, 64], 10, activation);
    const rows = 33;
    const x = Float32Array.from({ length: rows * 784 }, (_, i) => ((i * 7919) % 256) / 255);
    const labels = Array.from({ length: rows }, (_, i) => (i * 7) % 10);
    const engine = await createEngine(spec, { engine: 'onnx', device: 'cpu' });
    const { out } = await engineGradient(engine, spec, initParams(spec, 1), x, labels);
    for (const [a, b] of [[0, 33], [5, 6], [16, 32]]) {
      const n = b - a;
      const width = (l: number) => spec.sizes[l + 1];
      const deltas = [0, 1, 2, 3].map((l) => new Float32Array(n * width(l)));
      await engine.deltasPass!(
        out.hidden.map((h, l) => h.subarray(a * width(l), b * width(l))),
        out.deltas[4].subarray(a * 10, b * 10),
        n,
        deltas,
      );
      deltas.forEach((d, l) => expect(d).toEqual(out.deltas[l].subarray(a * width(l), b * width(l))));
    }
    await engine.dispose();
  });
});

describe('onnxruntime through its C API (native/dtrain_native.c)', () => {
  it('is built by npm install and gives a whole step the bits of the binding, from plain or shared memory', async () => {
    const { ortCApi } = await import('../src/engine/onnx/native.js');
    const { C_API_SESSION_OPTIONS } = await import('../src/engine/onnx/c_api_runner.js');
    const direct = ortCApi();
    expect(direct?.version).toMatch(/^1\.\d+\.\d+/);
    const spec = makeSpec(784, [512, 256, 128, 64], 10, 'sigmoid');
    const rows = 20;
    const x = Float32Array.from({ length: rows * 784 }, (_, i) => ((i * 7919) % 256) / 255);
    const labels = Array.from({ length: rows }, (_, i) => (i * 3) % 10);
    const engine = await createEngine(spec, { engine: 'onnx', device: 'cpu' });
    expect(engine.backend).toContain('through its C API');
    // The binding's two passes, then the C API's whole step on the same parameters in shared memory.
    const params = initParams(spec, 2);
    const twoPasses = await engineGradient(engine, spec, params, x, labels);
    const shared = new Float32Array(new SharedArrayBuffer(params.byteLength));
    shared.set(params);
    engine.setParams(shared);
    const rowLoss = new Float32Array(new SharedArrayBuffer(4 * rows));
    const gradients = await engine.stepPass!(x, oneHot(labels, 10), rows, rowLoss);
    expect(rowLoss).toEqual(Float32Array.from(twoPasses.out.rowLoss));
    paramLayout(spec).layers.forEach(({ weightOffset, biasOffset, fanOut }, l) => {
      expect(gradients[l].weight).toEqual(twoPasses.grad.subarray(weightOffset, biasOffset));
      expect(gradients[l].bias).toEqual(twoPasses.grad.subarray(biasOffset, biasOffset + fanOut));
    });
    await engine.dispose();
    // Misuse is a one-line error, not a crash.
    const { native } = direct!;
    expect(() => native.run(native.plan(native.session(new Uint8Array([8, 1]), C_API_SESSION_OPTIONS), [], []), [], [], [], [])).toThrow(/^onnxruntime CreateSessionFromArray: /);
  });
});

describe('onnx engine runners', () => {
  // With DTRAIN_NO_NATIVE both engines would take the binding: nothing to compare.
  it.skipIf(!!process.env.DTRAIN_NO_NATIVE)('give every pass the same bits through the C API and through the binding, one row and empty units included', async () => {
    const { createOnnxEngine } = await import('../src/engine/onnx/engine.js');
    const spec = makeSpec(784, [512, 256, 128, 64], 10, 'relu');
    const rows = 9;
    const x = Float32Array.from({ length: rows * 784 }, (_, i) => ((i * 7919) % 256) / 255);
    const target = oneHot(Array.from({ length: rows }, (_, i) => (i * 3) % 10), 10);
    const params = new Float32Array(new SharedArrayBuffer(4 * paramLayout(spec).total));
    params.set(initParams(spec, 4));
    const widths = spec.sizes.slice(1);
    const everyPass = async (engine: Engine) => {
      engine.setParams(params);
      const results: unknown[] = [];
      for (const n of [1, rows]) {
        const out = { rowLoss: new Float32Array(n), hidden: widths.slice(0, -1).map((w) => new Float32Array(n * w)), deltas: widths.map((w) => new Float32Array(n * w)) };
        await engine.rowPass(x, target, n, 1 / rows, out);
        const deltas = widths.slice(0, -1).map((w) => new Float32Array(n * w));
        await engine.deltasPass!(out.hidden, out.deltas[4], n, deltas);
        const units = widths.map((w, l) => (l === 4 ? [3, 3] : [1, w - 1]) as const);
        const gradients = await engine.weightPass([x, ...out.hidden], out.deltas, n, units);
        const evaluated = { rowLoss: new Float32Array(n), predicted: new Int32Array(n) };
        await engine.evaluate(x, target, n, evaluated);
        results.push(out, deltas, gradients.map((g) => [g.weight.slice(), g.bias.slice()]), evaluated);
      }
      const rowLoss = new Float32Array(rows);
      const gradients = await engine.stepPass!(x, target, rows, rowLoss);
      results.push(rowLoss, gradients.map((g) => [g.weight.slice(), g.bias.slice()]));
      await engine.dispose();
      return results;
    };
    const cApi = await createOnnxEngine(spec, 'cpu');
    const binding = await createOnnxEngine(spec, 'cpu', 'binding');
    expect(cApi.backend).toContain('through its C API');
    expect(binding.backend).not.toContain('C API');
    expect(await everyPass(binding)).toEqual(await everyPass(cApi));
  });
});

describe('native shared-buffer alias', () => {
  it('is built by npm install, and lets onnxruntime read shared memory in place', async () => {
    const { sharedAlias } = await import('../src/engine/onnx/native.js');
    const alias = sharedAlias();
    expect(alias).not.toBeNull();
    const shared = new Float32Array(new SharedArrayBuffer(4 * 8));
    const view = alias!(shared.subarray(2, 6));
    expect(view.buffer).not.toBeInstanceOf(SharedArrayBuffer);
    shared[3] = 42;
    expect(view[1]).toBe(42);
    view[0] = 7;
    expect(shared[2]).toBe(7);
    expect(() => alias!(new Int32Array(2) as never)).toThrow('shared_alias: expected a Float32Array');
    // The engine reads parameters in shared memory without a copy, with the same results as from plain memory.
    const spec = makeSpec(5, [4], 3, 'tanh');
    const params = initParams(spec, 3);
    const sharedParams = new Float32Array(new SharedArrayBuffer(params.byteLength));
    sharedParams.set(params);
    const x = Float32Array.from({ length: 4 * 5 }, (_, i) => (i % 7) / 7);
    const engine = await createEngine(spec, { engine: 'onnx', device: 'cpu' });
    expect(engine.backend).not.toContain('copying');
    const results = [];
    for (const p of [params, sharedParams]) {
      engine.setParams(p);
      const out = { rowLoss: new Float32Array(4), predicted: new Int32Array(4) };
      await engine.evaluate(x, oneHot([2, 0, 1, 1], 3), 4, out);
      results.push(out);
    }
    expect(results[1]).toEqual(results[0]);
    await engine.dispose();
  });
});
