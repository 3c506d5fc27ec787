/**
 * --device webgpu on the software device that test/setup/software-gpu.ts provides (lavapipe; any real GPU
 * with Vulkan serves too): the engine against the CPU engine, the invariants that make a run's result
 * independent of the number of participants, training against the CPU, and the exported model. Without a
 * device every test here is skipped, with the reason in its title and on the console.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import onnxProto from 'onnx-proto';
import { describe, expect, it, vi } from 'vitest';
import { createEngine, prepareEngine } from '../src/engine/create.js';
import type { Engine, EngineOptions, StateTensors } from '../src/engine/engine.js';
import { adamKernel, adamRange, adamScalars, ADAM_DEFAULTS } from '../src/optim/adam.js';
import { OptimizerMemory } from '../src/optim/optimizer_memory.js';
import { runWorker } from '../src/cluster/remote/client.js';
import { probeWebGpuAdapter } from '../src/engine/webgpu/adapter.js';
import { train, type TrainConfig, type TrainEvent } from '../src/index.js';
import { initParams } from '../src/model/init.js';
import { makeSpec, paramLayout, type Activation, type ModelSpec } from '../src/model/spec.js';
import { engineGradient, oneHot, syntheticDataset } from './helpers.js';

/** Why there is no device, or undefined when there is one. */
function unavailable(): string | undefined {
  if (process.env.DTRAIN_SOFTWARE_GPU_UNAVAILABLE) return `scripts/software-gpu.sh: ${process.env.DTRAIN_SOFTWARE_GPU_UNAVAILABLE}`;
  const probed = probeWebGpuAdapter();
  return 'missing' in probed ? `no WebGPU adapter: ${probed.detail}` : undefined;
}

const reason = unavailable();
if (reason) console.warn(`test/webgpu.test.ts: WebGPU tests skipped: ${reason}`);
const gpuDescribe = reason ? describe.skip : describe;

const out = mkdtempSync(join(tmpdir(), 'dtrain-webgpu-'));
let runs = 0;
const WEBGPU: Partial<TrainConfig> = { device: 'webgpu', allowSoftwareGpu: true };
const BASE: Partial<TrainConfig> = { trainSamples: 3200, testSamples: 200, epochs: 1, logEvery: 1000, export: false };
const run = (config: Partial<TrainConfig>, onEvent?: (e: TrainEvent) => void) => train({ ...BASE, out: join(out, String(runs++)), ...config }, { onEvent });

/** A listener that collects every step's loss into `into`. */
const losses = (into: number[]) => (e: TrainEvent) => void (e.type === 'step' && into.push(e.loss));

/** A run made once for the tests that compare with it, with its losses (whichever test runs it first). */
function runOnce(config: Partial<TrainConfig>) {
  const stepLosses: number[] = [];
  let summary: ReturnType<typeof train> | undefined;
  return { losses: stepLosses, summary: () => (summary ??= run(config, losses(stepLosses))) };
}

/** 50 steps on one WebGPU thread (onnx), and 20 of the smaller tfjs model. */
const onnxOne = runOnce({ ...WEBGPU, threads: 1, steps: 50 });
const oneThread = onnxOne.summary;
const TFJS = { engine: 'tfjs', hidden: [64, 32], steps: 20 } as const;
const tfjsOne = runOnce({ ...TFJS, ...WEBGPU, threads: 1 });

/** dtrain's CLI in a child process: its exit code, stdout and stderr. */
async function dtrain(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const cli = new URL('../dist/src/cli.js', import.meta.url).pathname;
  try {
    return { code: 0, ...(await promisify(execFile)(process.execPath, [cli, ...args])) };
  } catch (e) {
    return e as { code: number; stdout: string; stderr: string };
  }
}

/** Rows of MNIST-like pixels and their labels. */
function batch(spec: ModelSpec, rows: number) {
  const x = Float32Array.from({ length: rows * spec.sizes[0] }, (_, i) => ((i * 7919) % 256) / 255);
  const labels = Array.from({ length: rows }, (_, i) => (i * 3) % spec.sizes[spec.sizes.length - 1]);
  return { x, labels, target: oneHot(labels, spec.sizes[spec.sizes.length - 1]) };
}

type Units = readonly (readonly [number, number])[];

/**
 * The first half of cluster/plan.ts's invariant on an engine: rows computed in calls of `calls` ([from, rows])
 * have the bits of the same rows in one call of all `total` rows. Returns the outputs of that one call.
 */
async function expectRowLocality(engine: Engine, spec: ModelSpec, x: Float32Array, target: Float32Array, total: number, calls: number[][]) {
  const widths = spec.sizes.slice(1);
  const [features, classes] = [spec.sizes[0], widths[widths.length - 1]];
  const rowsOf = async (from: number, rows: number) => {
    const out = { rowLoss: new Float32Array(rows), hidden: widths.slice(0, -1).map((w) => new Float32Array(rows * w)), deltas: widths.map((w) => new Float32Array(rows * w)) };
    await engine.rowPass(x.subarray(from * features), target.subarray(from * classes), rows, 1 / total, out);
    return out;
  };
  const whole = await rowsOf(0, total);
  for (const [from, rows] of calls) {
    const part = await rowsOf(from, rows);
    expect(part.rowLoss).toEqual(whole.rowLoss.subarray(from, from + rows));
    part.hidden.forEach((h, l) => expect(h).toEqual(whole.hidden[l].subarray(from * widths[l], (from + rows) * widths[l])));
    part.deltas.forEach((d, l) => expect(d).toEqual(whole.deltas[l].subarray(from * widths[l], (from + rows) * widths[l])));
  }
  return whole;
}

/** The second half: each share's gradients have the bits of the same units in the whole layer's. Returns the whole layers'. */
async function expectUnitSplits(engine: Engine, spec: ModelSpec, inputs: Float32Array[], deltas: Float32Array[], batch: number, shares: Units[]) {
  const widths = spec.sizes.slice(1);
  const all = (await engine.weightPass(inputs, deltas, batch, widths.map((w) => [0, w] as const))).map((g) => ({ weight: g.weight.slice(), bias: g.bias.slice() }));
  for (const units of shares) {
    (await engine.weightPass(inputs, deltas, batch, units)).forEach((g, l) => {
      expect(g.weight).toEqual(all[l].weight.subarray(units[l][0] * spec.sizes[l], units[l][1] * spec.sizes[l]));
      expect(g.bias).toEqual(all[l].bias.subarray(units[l][0], units[l][1]));
    });
  }
  return all;
}

/** The largest difference relative to the largest magnitude: a gradient's error as a share of its scale. */
function relativeError(a: Float32Array, b: Float32Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / scale;
}

/** Options for a WebGPU engine, prepared once for the file as a process's main thread does. */
let prepared: Promise<EngineOptions> | undefined;
const webgpuEngine = async (spec: ModelSpec): Promise<Engine> => createEngine(spec, await (prepared ??= prepareEngine({ engine: 'onnx', ...WEBGPU } as EngineOptions)));

gpuDescribe(`WebGPU engine (${reason ? `skipped: ${reason}` : 'software device unless the machine has a GPU'})`, () => {
  it.each<[Activation, number[]]>([
    ['sigmoid', [512, 256, 128, 64]],
    ['relu', [64, 32]],
    ['tanh', [64, 32]],
  ])('gives the CPU engine\'s loss and gradient within 1e-5 (%s, hidden %j)', async (activation, hidden) => {
    const spec = makeSpec(784, hidden, 10, activation);
    const params = initParams(spec, 3);
    const { x, labels } = batch(spec, 64);
    const cpu = await createEngine(spec, { engine: 'onnx', device: 'cpu' });
    const gpu = await webgpuEngine(spec);
    expect(gpu.backend).toMatch(/\(webgpu on .*through its C API\)$/);
    const expected = await engineGradient(cpu, spec, params, x, labels);
    const got = await engineGradient(gpu, spec, params, x, labels);
    expect(Math.abs(got.loss - expected.loss) / expected.loss).toBeLessThan(1e-6);
    paramLayout(spec).layers.forEach(({ weightOffset, biasOffset, fanOut }) => {
      expect(relativeError(got.grad.subarray(weightOffset, biasOffset), expected.grad.subarray(weightOffset, biasOffset))).toBeLessThan(1e-5);
      expect(relativeError(got.grad.subarray(biasOffset, biasOffset + fanOut), expected.grad.subarray(biasOffset, biasOffset + fanOut))).toBeLessThan(1e-5);
    });
    await Promise.all([cpu.dispose(), gpu.dispose()]);
  });

  it('gives a row the same bits in calls of 16 and of 64 rows, a layer\'s units the same bits in any split, and a whole step the two passes\' bits', async () => {
    // What makes a run's result independent of the number of participants (cluster/plan.ts), on this device.
    const spec = makeSpec(784, [512, 256, 128, 64], 10, 'sigmoid');
    const widths = spec.sizes.slice(1);
    const { x, target, labels } = batch(spec, 64);
    const gpu = await webgpuEngine(spec);
    gpu.setParams(initParams(spec, 5));
    const whole = await expectRowLocality(gpu, spec, x, target, 64, [[0, 16], [16, 16], [48, 16], [63, 1]]);
    const thirds = [0, 1, 2].map((part) => widths.map((w) => [Math.floor((w * part) / 3), Math.floor((w * (part + 1)) / 3)] as const));
    const all = await expectUnitSplits(gpu, spec, [x, ...whole.hidden], whole.deltas, 64, thirds);
    const rowLoss = new Float32Array(64);
    const step = await gpu.stepPass!(x, target, labels.length, rowLoss);
    expect(rowLoss).toEqual(whole.rowLoss);
    step.forEach((g, l) => expect([g.weight, g.bias]).toEqual([all[l].weight, all[l].bias]));
    await gpu.dispose();
  });

  it.each(['onnx', 'tfjs'] as const)('keeps the state on the device between whole steps (%s): Adam there gives the host kernel\'s bits, a non-finite step leaves the state held, and read brings it back', async (engine) => {
    const spec = makeSpec(784, [64, 32], 10, 'sigmoid');
    const { total } = paramLayout(spec);
    const { x, target, labels } = batch(spec, 20);
    const gpu = await createEngine(spec, await prepareEngine({ engine, ...WEBGPU } as EngineOptions));
    const device = await gpu.deviceState!();
    const memory = OptimizerMemory.allocate(total, false);
    memory.paramsOf(0).set(initParams(spec, 9));
    memory.firstMomentOf(0).set(Float32Array.from({ length: total }, (_, i) => ((i % 13) - 6) * 1e-4));
    memory.secondMomentOf(0).set(Float32Array.from({ length: total }, (_, i) => (i % 11) * 1e-6));
    const stateOf = (g: number) => ({ params: memory.paramsOf(g), m: memory.firstMomentOf(g), v: memory.secondMomentOf(g) });
    const copy = ({ params, m, v }: StateTensors) => ({ params: params.slice(), m: m.slice(), v: v.slice() });
    const before = copy(stateOf(0));
    const scalars = adamScalars(ADAM_DEFAULTS, 3);
    await device.load(stateOf(0), 'a');
    const rowLoss = new Float32Array(20);
    expect(await device.step(x, target, 20, rowLoss, scalars, 'b')).toEqual([]);
    expect([device.holds('a'), device.holds('b')]).toEqual([false, true]);
    const got = copy(stateOf(1));
    await device.read(got, 'b');
    // The state the step started from stays readable until the next step (a step the trainer refuses).
    const start = copy(stateOf(1));
    await device.read(start, 'a');
    expect(start).toEqual(before);
    // The host's way: the two passes' gradient on the same device, then the wasm kernel, generation 0 → 1.
    const host = await engineGradient(gpu, spec, memory.paramsOf(0), x, labels);
    expect(adamRange(adamKernel(memory.memory), memory, 0, 0, 0, host.grad, scalars)).toBe(false);
    expect(rowLoss).toEqual(host.out.rowLoss);
    expect(got).toEqual(copy(stateOf(1)));
    expect(got.params).not.toEqual(before.params);
    // A NaN parameter makes every layer's gradient non-finite: nothing is applied, the state held stays.
    const poisoned = { ...before, params: before.params.slice() };
    poisoned.params[5] = NaN;
    await device.load(poisoned, 'c');
    expect(await device.step(x, target, 20, rowLoss, scalars, 'd')).toEqual([0, 1, 2]);
    expect([device.holds('c'), device.holds('d')]).toEqual([true, false]);
    await device.read(got, 'c');
    expect(got).toEqual(poisoned);
    // A load replaces what the device held.
    await expect(device.read(got, 'b')).rejects.toThrow('DeviceState.read: the device does not hold the state b');
    await gpu.dispose();
  });

  it('pulls back the state a step started from when the trainer refuses that step, and the next step reloads it: the same step again gives the same state', async () => {
    const { createTeam } = await import('../src/cluster/create_team.js');
    const { createTrainingMemory, optimizerMemoryOf } = await import('../src/cluster/training_memory.js');
    const { TrainingState } = await import('../src/cluster/training_state.js');
    const dataset = syntheticDataset(64, 8, 784, 10);
    const spec = makeSpec(784, [64, 32], 10, 'sigmoid');
    const memory = createTrainingMemory(spec, dataset, 64, 1);
    const state = new TrainingState(memory);
    state.load({ params: initParams(spec, 2), m: new Float32Array(paramLayout(spec).total), v: new Float32Array(paramLayout(spec).total) }, 0);
    const before = state.params.slice();
    const options = await prepareEngine({ engine: 'onnx', ...WEBGPU } as EngineOptions);
    const team = await createTeam({ memory, engine: options, adam: ADAM_DEFAULTS }, 1);
    memory.batch.index.set(Int32Array.from({ length: 64 }, (_, i) => i));
    const step = () => team.runPass([{ kind: 'step', step: 0, generation: 0, batch: 64 }]);
    await step();
    expect(state.onDevice).toBe(true);
    const next = optimizerMemoryOf(memory).paramsOf(1);
    // What step 0 gave, read without making it the committed state (the device stays ahead).
    await team.runPass([{ kind: 'pull', step: 1, generation: 1, committed: false }]);
    const first = next.slice();
    expect(state.onDevice).toBe(true);
    expect(first).not.toEqual(before);
    // The trainer refuses step 0 (as for a loss that is not finite) and asks for the committed state.
    await team.runPass([{ kind: 'pull', step: 0, generation: 0, committed: true }]);
    expect(state.onDevice).toBe(false);
    expect(state.params).toEqual(before);
    expect([...memory.hostState]).toEqual([0, 0]);
    // The device's latest is the refused step: the same step again must start from the state pulled back.
    await step();
    await team.runPass([{ kind: 'pull', step: 1, generation: 1, committed: true }]);
    expect(next).toEqual(first);
    await team.close();
  });

  it.skipIf(!!process.env.DTRAIN_NO_NATIVE)('gives the same bits through the C API and through onnxruntime-node\'s binding', async () => {
    const { createOnnxEngine } = await import('../src/engine/onnx/engine.js');
    const spec = makeSpec(784, [64, 32], 10, 'relu');
    const { x, target } = batch(spec, 20);
    const options = await (prepared ??= prepareEngine({ engine: 'onnx', ...WEBGPU } as EngineOptions));
    const step = async (engine: Engine) => {
      engine.setParams(initParams(spec, 7));
      const rowLoss = new Float32Array(20);
      const gradients = (await engine.stepPass!(x, target, 20, rowLoss)).map((g) => [g.weight.slice(), g.bias.slice()]);
      await engine.dispose();
      return { backend: engine.backend, rowLoss, gradients };
    };
    const [cApi, binding] = [await step(await createOnnxEngine(spec, options)), await step(await createOnnxEngine(spec, options, 'binding'))];
    expect([cApi.backend, binding.backend]).toEqual([expect.stringContaining('through its C API'), expect.not.stringContaining('C API')]);
    expect([binding.rowLoss, binding.gradients]).toEqual([cApi.rowLoss, cApi.gradients]);
  });

  it('trains 50 steps with the CPU\'s losses (within 1e-4), and ends with the same parameters on one thread (state on the device) and two', async () => {
    const [cpu, two]: number[][] = [[], []];
    await run({ threads: 1, steps: 50 }, losses(cpu));
    const a = await oneThread();
    const one = onnxOne.losses;
    const b = await run({ ...WEBGPU, threads: 2, steps: 50 }, losses(two));
    expect(one).toHaveLength(50);
    one.forEach((loss, i) => expect(Math.abs(loss - cpu[i]) / cpu[i]).toBeLessThan(1e-4));
    expect(b.paramsSha256).toBe(a.paramsSha256);
    expect(two).toEqual(one);
    expect(a.workers).toMatch(/webgpu on .*, parameters and Adam moments kept on the device$/);
    expect(b.workers).not.toMatch(/kept on the device/);
    expect([a.devices, a.mixedDevices]).toEqual([['onnx/webgpu'], false]);
  });

  it('runs a one-row last batch on the host after pulling the state back, and ends on two threads\' parameters', async () => {
    // 129 samples: batches of 64, 64 and 1, for two epochs; the one-row step cannot run on the device (a
    // one-row product takes another kernel), so the device's state must come back before it.
    const config = { ...WEBGPU, trainSamples: 129, epochs: 2, hidden: [64, 32] };
    const [one, two] = [await run({ ...config, threads: 1 }), await run({ ...config, threads: 2 })];
    expect(one.steps).toBe(6);
    expect(one.workers).toMatch(/kept on the device$/);
    expect(one.paramsSha256).toBe(two.paramsSha256);
  });

  it('resumes a run whose state stayed on the device from its checkpoint, to the uninterrupted run\'s parameters', async () => {
    const dir = join(out, 'resumed');
    const first = await run({ ...WEBGPU, threads: 1, steps: 20, out: dir });
    expect(first.steps).toBe(20);
    const resumed = await train({ resume: dir, steps: 50, ...WEBGPU }, {});
    expect(resumed.paramsSha256).toBe((await oneThread()).paramsSha256);
  });

  it('gives a remote worker on the device, computing every row for a coordinator without threads and keeping its replica\'s state there, the local threads\' parameters', async () => {
    const { ResidentState } = await import('../src/engine/onnx/resident_state.js');
    const expected = (await oneThread()).paramsSha256;
    // The worker runs in this process: its replica's weight passes and Adam are counted where they run.
    const applied = vi.spyOn(ResidentState.prototype, 'apply');
    const rowsOnDevice = vi.spyOn(ResidentState.prototype, 'rowPass');
    const abort = new AbortController();
    const joined: string[] = [];
    const summary = await train(
      { ...BASE, ...WEBGPU, threads: 0, steps: 50, listen: '127.0.0.1:0', out: join(out, 'remote') },
      {
        onListening: ({ port }) => void runWorker({ connect: `ws://127.0.0.1:${port}`, device: 'webgpu', allowSoftwareGpu: true, signal: abort.signal }),
        onEvent: (e) => e.type === 'cluster' && e.event.type === 'joined' && joined.push(e.event.backend),
      },
    );
    abort.abort();
    expect(joined).toEqual([expect.stringMatching(/^onnx \(webgpu on .+\)$/)]);
    expect(summary.paramsSha256).toBe(expected);
    // Every step was applied on the device, and every step but the first computed its rows there too.
    const counts = [applied.mock.calls.length, rowsOnDevice.mock.calls.length];
    applied.mockRestore();
    rowsOnDevice.mockRestore();
    expect(counts[0]).toBeGreaterThanOrEqual(50);
    expect(counts[1]).toBeGreaterThanOrEqual(49);
  });

  it.each([
    ['a coordinator thread and a remote worker share the rows', {}],
    ['the coordinator serves the parameters (--plan server on its GPU thread)', { plan: 'server' }],
  ] as const)('keeps the state on the device where it can when %s, with the local threads\' parameters', async (_, extra) => {
    const abort = new AbortController();
    const summary = await train(
      { ...BASE, ...WEBGPU, threads: 1, steps: 50, minWorkers: 1, listen: '127.0.0.1:0', out: join(out, `split-${runs++}`), ...extra },
      { onListening: ({ port }) => void runWorker({ connect: `ws://127.0.0.1:${port}`, device: 'webgpu', allowSoftwareGpu: true, signal: abort.signal }) },
    );
    abort.abort();
    expect(summary.paramsSha256).toBe((await oneThread()).paramsSha256);
  });

  it('names the adapter at start, runs every node on the device (ReLU too), and refuses a software adapter unless allowed', async () => {
    const args = ['coordinator', '--device', 'webgpu', '--hidden', '32', '--activation', 'relu', '--steps', '3', '--epochs', '1'];
    const small = (dir: string) => ['--train-samples', '256', '--test-samples', '64', '--threads', '1', '--no-export', '--out', join(out, dir)];
    const ran = await dtrain(...args, ...small('cli'), '--allow-software-gpu');
    expect(ran.code).toBe(0);
    expect(ran.stdout).toMatch(/^workers: this process × onnxruntime-node \S+ \(webgpu on [^,]+, [^,]+, .+, through its C API\), parameters and Adam moments kept on the device$/m);
    // onnxruntime warns when it places a node on the CPU for want of a device kernel (the train graph's Adam too).
    expect(ran.stderr).not.toContain('not assigned to the preferred execution providers');
    if (!/webgpu on [^,]+, software,/.test(ran.stdout)) return;
    const refused = await dtrain(...args, ...small('cli-refused'));
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim()).toMatch(/^dtrain: error: --device webgpu: the only WebGPU adapter is a software one \(.+\), slower than --device cpu; give --allow-software-gpu to use it anyway$/);
  });

  it('exports the model in the CPU run\'s format: the same model.json topology and the same ONNX graph but for the weights', async () => {
    const config = { steps: 5, hidden: [32], export: true };
    const gpu = await run({ ...WEBGPU, ...config, threads: 1 });
    const cpu = await run({ ...config, threads: 1 });
    const read = (dir: string) => {
      const model = JSON.parse(readFileSync(join(dir, 'model', 'model.json'), 'utf8'));
      const onnx = onnxProto.onnx.ModelProto.decode(readFileSync(join(dir, 'model', 'model.onnx')));
      const graph = { ...onnx.graph!, initializer: onnx.graph!.initializer!.map((t) => ({ name: t.name, dims: t.dims, bytes: t.rawData?.length })) };
      return { topology: model.modelTopology, manifest: model.weightsManifest, graph: JSON.parse(JSON.stringify(graph)) };
    };
    expect(read(gpu.outDir!)).toEqual(read(cpu.outDir!));
    expect(gpu.paramsSha256).not.toBe(cpu.paramsSha256);
  });
});

describe('--device webgpu without a usable device (no GPU needed)', () => {
  it('is one line naming what is missing and how to check it', async () => {
    // No driver file and no library path: the loader is missing, or (a system loader) finds no driver.
    const cli = new URL('../dist/src/cli.js', import.meta.url).pathname;
    const env = { ...process.env, VK_ICD_FILENAMES: join(out, 'no-such-icd.json'), LD_LIBRARY_PATH: '' };
    const failed = await promisify(execFile)(process.execPath, [cli, 'coordinator', '--device', 'webgpu', '--steps', '1'], { env }).catch((e) => e);
    expect(failed.code).toBe(1);
    expect(failed.stderr.trim()).toMatch(
      /^dtrain: error: --device webgpu: (no Vulkan loader|a Vulkan loader but no Vulkan driver|no WebGPU adapter) \(.+\); .+, check with vulkaninfo --summary, or for a software device run eval "\$\(scripts\/software-gpu.sh\)" and give --allow-software-gpu$/,
    );
  });
});

gpuDescribe(`--engine tfjs --device webgpu (${reason ? `skipped: ${reason}` : 'tfjs-backend-webgpu on Dawn\'s Node bindings'})`, () => {
  const tfjsGpu = async (spec: ModelSpec) => createEngine(spec, await prepareEngine({ engine: 'tfjs', ...WEBGPU } as EngineOptions));

  it('gives the wasm backend\'s loss and gradient within 1e-5, names the adapter, and keeps a row\'s bits in calls of 1 to 64 rows and a unit\'s in any split', async () => {
    const spec = makeSpec(784, [128, 64], 10, 'sigmoid');
    const widths = spec.sizes.slice(1);
    const params = initParams(spec, 3);
    const { x, target, labels } = batch(spec, 64);
    const gpu = await tfjsGpu(spec);
    const wasm = await createEngine(spec, { engine: 'tfjs', device: 'cpu' });
    expect(gpu.backend).toMatch(/^tfjs [\d.]+ \(webgpu on .+\)$/);
    const expected = await engineGradient(wasm, spec, params, x, labels);
    const got = await engineGradient(gpu, spec, params, x, labels);
    expect(Math.abs(got.loss - expected.loss) / expected.loss).toBeLessThan(1e-6);
    expect(relativeError(got.grad, expected.grad)).toBeLessThan(1e-5);
    gpu.setParams(params);
    const whole = await expectRowLocality(gpu, spec, x, target, 64, [[63, 1], [60, 4], [0, 7], [16, 16], [0, 33]]);
    await expectUnitSplits(gpu, spec, [x, ...whole.hidden], whole.deltas, 64, [widths.map((w) => [Math.floor(w / 3), Math.floor((2 * w) / 3)] as const)]);
    await Promise.all([gpu.dispose(), wasm.dispose()]);
  });

  it('gives a unit the same bits in a share of one unit, with widths and a batch that are not multiples of 4', async () => {
    // One unit makes a one-row product: another kernel (a vector product) unless padded to two.
    const spec = makeSpec(784, [30, 14], 10, 'relu');
    const widths = spec.sizes.slice(1);
    const rows = 50;
    const { x, target } = batch(spec, rows);
    const gpu = await tfjsGpu(spec);
    gpu.setParams(initParams(spec, 4));
    const whole = await expectRowLocality(gpu, spec, x, target, rows, []);
    await expectUnitSplits(gpu, spec, [x, ...whole.hidden], whole.deltas, rows, [0, 7, 9].map((unit) => widths.map(() => [unit, unit + 1] as const)));
    await gpu.dispose();
  });

  it('gives a remote tfjs worker on the device, keeping its replica\'s state there, the parameters of one local thread', async () => {
    const { TfjsDeviceState } = await import('../src/engine/tfjs/device_state.js');
    // The local run first (the shared one), so that the counts below are the remote worker's alone.
    const local = await tfjsOne.summary();
    const applied = vi.spyOn(TfjsDeviceState.prototype, 'apply');
    const rowsOnDevice = vi.spyOn(TfjsDeviceState.prototype, 'rowPass');
    try {
      const abort = new AbortController();
      const remote = await train(
        { ...BASE, ...TFJS, ...WEBGPU, threads: 0, listen: '127.0.0.1:0', out: join(out, `tfjs-remote-${runs++}`) },
        { onListening: ({ port }) => void runWorker({ connect: `ws://127.0.0.1:${port}`, engine: 'tfjs', device: 'webgpu', allowSoftwareGpu: true, signal: abort.signal }) },
      );
      abort.abort();
      expect(remote.paramsSha256).toBe(local.paramsSha256);
      // Every step applied on the device, every step but the first with its rows computed there too.
      expect(applied.mock.calls.length).toBeGreaterThanOrEqual(20);
      expect(rowsOnDevice.mock.calls.length).toBeGreaterThanOrEqual(19);
    } finally {
      applied.mockRestore();
      rowsOnDevice.mockRestore();
    }
  });

  it('trains with the wasm backend\'s losses (within 1e-4), and ends with the same parameters on one thread (state on the device) and two', async () => {
    const [wasm, two]: number[][] = [[], []];
    await run({ ...TFJS, threads: 1 }, losses(wasm));
    const a = await tfjsOne.summary();
    const one = tfjsOne.losses;
    const b = await run({ ...TFJS, ...WEBGPU, threads: 2 }, losses(two));
    expect(one).toHaveLength(20);
    one.forEach((loss, i) => expect(Math.abs(loss - wasm[i]) / wasm[i]).toBeLessThan(1e-4));
    // One thread kept the state on the device (Adam there), two shared the weight pass with Adam on the host.
    expect([a.workers, b.workers]).toEqual([expect.stringMatching(/kept on the device$/), expect.not.stringMatching(/kept on the device/)]);
    expect(b.paramsSha256).toBe(a.paramsSha256);
  });
});
