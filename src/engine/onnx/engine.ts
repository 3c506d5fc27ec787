/**
 * The default engine: the graphs of graph.ts run by onnxruntime-node, one intra-op thread per worker so
 * that parallelism comes from dtrain's own workers and results never depend on a thread pool's split.
 */
import { createRequire } from 'node:module';
import type * as Ort from 'onnxruntime-node';
import { engineUnavailable } from '../../errors.js';
import type { ModelSpec } from '../../model/spec.js';
import { paramLayout } from '../../model/spec.js';
import type { Device, Engine, EvalOutputs, LayerGradient, RowOutputs } from '../engine.js';
import type { DirectTensor } from './direct.js';
import { directOrt, DirectSession } from './direct.js';
import { sharedAlias } from './shared_alias.js';
import { biasName, buildDeltasGraph, buildEvalGraph, buildRowGraph, buildStepGraph, buildWeightGraph, deltaName, hiddenName, weightName } from './graph.js';

type OrtModule = typeof Ort;

/**
 * onnxruntime-node refuses typed arrays over SharedArrayBuffers. Inputs that live there are read through
 * the native alias when it is built, else copied into per-slot scratch arrays (a memcpy, ~0.2 ms for the
 * tutorial MLP's 2.3 MB of parameters, on every thread and every step).
 */
class Scratch {
  private slots = new Map<string, Float32Array>();
  private readonly alias = sharedAlias();

  local(slot: string, data: Float32Array, length = data.length): Float32Array {
    const shared = data.buffer instanceof SharedArrayBuffer;
    if (!shared && length === data.length) return data;
    if (shared && this.alias) return this.alias(length === data.length ? data : data.subarray(0, length));
    let buf = this.slots.get(slot);
    if (!buf || buf.length < length) {
      buf = new Float32Array(length);
      this.slots.set(slot, buf);
    }
    const view = buf.subarray(0, length);
    view.set(length === data.length ? data : data.subarray(0, length));
    return view;
  }
}

export async function createOnnxEngine(spec: ModelSpec, device: Device): Promise<Engine> {
  let ort: OrtModule;
  try {
    ort = (await import('onnxruntime-node')).default as unknown as OrtModule;
  } catch (e) {
    throw engineUnavailable('onnx', `onnxruntime-node could not be loaded (${(e as Error).message}); run npm install`);
  }
  if (device === 'gpu') device = 'cuda';
  const options: Ort.InferenceSession.SessionOptions = {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    executionProviders: device === 'cuda' ? ['cuda'] : ['cpu'],
  };
  let sessions: Ort.InferenceSession[];
  try {
    sessions = await Promise.all(
      [buildRowGraph(spec), buildWeightGraph(spec), buildEvalGraph(spec)].map((m) => ort.InferenceSession.create(m, options)),
    );
  } catch (e) {
    const hint = device === 'cuda' ? '; install the CUDA 12 build with npm install --onnxruntime-node-install=cuda12' : '';
    throw engineUnavailable('onnx', `onnxruntime could not create a ${device} session (${(e as Error).message})${hint}`);
  }
  const version = createRequire(import.meta.url)('onnxruntime-node/package.json').version as string;
  const reads = `${sharedAlias() ? '' : ', copying shared buffers'}${directOrt() ? ', whole steps through its C API' : ''}`;
  // The step and deltas graphs serve only some slots (one computing whole steps; remote replicas), so they
  // are built on first use.
  const lazySession = (build: (spec: ModelSpec) => Uint8Array) => () => ort.InferenceSession.create(build(spec), options);
  return new OnnxEngine(ort, spec, sessions, lazySession(buildStepGraph), lazySession(buildDeltasGraph), `onnxruntime-node ${version} (${device}${reads})`);
}

class OnnxEngine implements Engine {
  readonly name = 'onnx' as const;
  private readonly scratch = new Scratch();
  private readonly layout;
  private paramFeeds: Record<string, Ort.Tensor> = {};
  private readonly scale: Float32Array = new Float32Array(1);
  private readonly range: BigInt64Array;
  private stepSession?: Promise<Ort.InferenceSession>;
  /** The C API path (direct.ts) for whole steps, when the native helper is built. */
  private readonly direct = directOrt();
  private directStepSession?: DirectSession;
  private gradientBuffers?: LayerGradient[];
  /** The parameters last given to setParams, as they are (the C API reads shared memory too). */
  private params: Float32Array = new Float32Array(0);
  private deltasSession?: Promise<Ort.InferenceSession>;

  constructor(
    private readonly ort: OrtModule,
    private readonly spec: ModelSpec,
    private readonly sessions: Ort.InferenceSession[],
    private readonly createStepSession: () => Promise<Ort.InferenceSession>,
    private readonly createDeltasSession: () => Promise<Ort.InferenceSession>,
    readonly backend: string,
  ) {
    this.layout = paramLayout(spec);
    this.range = new BigInt64Array(2 * this.layout.layers.length);
  }

  private get features() {
    return this.spec.sizes[0];
  }

  private get classes() {
    return this.spec.sizes[this.spec.sizes.length - 1];
  }

  private tensor(data: Float32Array, dims: number[]): Ort.Tensor {
    return new this.ort.Tensor('float32', data, dims);
  }

  setParams(params: Float32Array): void {
    this.params = params;
    const local = this.scratch.local('params', params);
    const feeds: Record<string, Ort.Tensor> = {};
    this.layout.layers.forEach((layer, l) => {
      feeds[weightName(l)] = this.tensor(local.subarray(layer.weightOffset, layer.biasOffset), [layer.fanOut, layer.fanIn]);
      feeds[biasName(l)] = this.tensor(local.subarray(layer.biasOffset, layer.biasOffset + layer.fanOut), [layer.fanOut]);
    });
    this.paramFeeds = feeds;
  }

  /**
   * onnxruntime multiplies a single row on another code path (GEMV) that rounds differently from the
   * multi-row kernels, so a one-row call is padded to two rows: the row then gets the same bits as in
   * any larger call.
   */
  private rowInputs(x: Float32Array, target: Float32Array, rows: number) {
    const padded = rows === 1 ? 2 : rows;
    const xs = this.scratch.local('x', x, rows * this.features);
    const ts = this.scratch.local('target', target, rows * this.classes);
    if (rows === 1) {
      const xp = this.scratch.local('xPad', new Float32Array(2 * this.features));
      xp.set(xs);
      xp.set(xs, this.features);
      const tp = this.scratch.local('targetPad', new Float32Array(2 * this.classes));
      tp.set(ts);
      tp.set(ts, this.classes);
      return { x: this.tensor(xp, [padded, this.features]), target: this.tensor(tp, [padded, this.classes]) };
    }
    return { x: this.tensor(xs, [rows, this.features]), target: this.tensor(ts, [rows, this.classes]) };
  }

  async rowPass(x: Float32Array, target: Float32Array, rows: number, invBatch: number, out: RowOutputs): Promise<void> {
    this.scale[0] = invBatch;
    const feeds = { ...this.paramFeeds, ...this.rowInputs(x, target, rows), scale: this.tensor(this.scale, [1]) };
    const result = await this.sessions[0].run(feeds);
    out.rowLoss.set((result.rowLoss.data as Float32Array).subarray(0, rows));
    out.hidden.forEach((h, l) => h.set((result[hiddenName(l)].data as Float32Array).subarray(0, h.length)));
    out.deltas.forEach((d, l) => d.set((result[deltaName(l)].data as Float32Array).subarray(0, d.length)));
  }

  async weightPass(inputs: Float32Array[], deltas: Float32Array[], batch: number, units: readonly (readonly [number, number])[]): Promise<LayerGradient[]> {
    const feeds: Record<string, Ort.Tensor> = {};
    this.layout.layers.forEach(({ fanIn, fanOut }, l) => {
      feeds[`a${l}`] = this.tensor(this.scratch.local(`a${l}`, inputs[l], batch * fanIn), [batch, fanIn]);
      feeds[`d${l}`] = this.tensor(this.scratch.local(`d${l}`, deltas[l], batch * fanOut), [batch, fanOut]);
      this.range[2 * l] = BigInt(units[l][0]);
      this.range[2 * l + 1] = BigInt(units[l][1]);
      feeds[`start${l}`] = new this.ort.Tensor('int64', this.range.subarray(2 * l, 2 * l + 1), [1]);
      feeds[`end${l}`] = new this.ort.Tensor('int64', this.range.subarray(2 * l + 1, 2 * l + 2), [1]);
    });
    return this.gradients(await this.sessions[1].run(feeds));
  }

  async stepPass(x: Float32Array, target: Float32Array, rows: number, rowLoss: Float32Array): Promise<LayerGradient[]> {
    // Padding a single row would count it twice in the gradient; a one-row step takes the two passes.
    if (rows < 2) throw new RangeError('stepPass needs at least 2 rows');
    if (this.direct) return this.directStep(x, target, rows, rowLoss);
    this.stepSession ??= this.createStepSession();
    this.scale[0] = 1 / rows;
    const feeds = { ...this.paramFeeds, ...this.rowInputs(x, target, rows), scale: this.tensor(this.scale, [1]) };
    const result = await (await this.stepSession).run(feeds);
    rowLoss.set(result.rowLoss.data as Float32Array);
    return this.gradients(result);
  }

  async deltasPass(hidden: Float32Array[], last: Float32Array, rows: number, deltas: Float32Array[]): Promise<void> {
    this.deltasSession ??= this.createDeltasSession();
    const layers = this.layout.layers;
    // One row is padded to two, as in rowPass: onnxruntime's single-row path rounds differently.
    const input = (slot: string, data: Float32Array, width: number) => {
      const local = this.scratch.local(slot, data, rows * width);
      if (rows > 1) return this.tensor(local, [rows, width]);
      const twice = this.scratch.local(`${slot}Pad`, new Float32Array(2 * width));
      twice.set(local);
      twice.set(local, width);
      return this.tensor(twice, [2, width]);
    };
    const feeds: Record<string, Ort.Tensor> = {};
    hidden.forEach((h, l) => (feeds[hiddenName(l)] = input(`h${l}`, h, layers[l].fanOut)));
    feeds[deltaName(layers.length - 1)] = input('last', last, layers[layers.length - 1].fanOut);
    for (let l = 1; l < layers.length; l++) feeds[weightName(l)] = this.paramFeeds[weightName(l)];
    const result = await (await this.deltasSession).run(feeds);
    deltas.forEach((d, l) => d.set((result[deltaName(l)].data as Float32Array).subarray(0, rows * layers[l].fanOut)));
  }

  /** stepPass through the C API: inputs read in place, the loss written into rowLoss, gradients into owned buffers. */
  private directStep(x: Float32Array, target: Float32Array, rows: number, rowLoss: Float32Array): LayerGradient[] {
    const layers = this.layout.layers;
    if (!this.directStepSession) {
      const inputs = ['x', 'target', 'scale', ...layers.flatMap((_, l) => [weightName(l), biasName(l)])];
      const outputs = ['rowLoss', ...layers.flatMap((_, l) => [`gW${l}`, `gb${l}`])];
      this.directStepSession = new DirectSession(this.direct!.native, buildStepGraph(this.spec), inputs, outputs);
      this.gradientBuffers = layers.map(({ fanIn, fanOut }) => ({ weight: new Float32Array(fanIn * fanOut), bias: new Float32Array(fanOut) }));
    }
    this.scale[0] = 1 / rows;
    const feeds: Record<string, DirectTensor> = {
      x: { data: x.subarray(0, rows * this.features), dims: [rows, this.features] },
      target: { data: target.subarray(0, rows * this.classes), dims: [rows, this.classes] },
      scale: { data: this.scale, dims: [1] },
    };
    layers.forEach(({ fanIn, fanOut, weightOffset, biasOffset }, l) => {
      feeds[weightName(l)] = { data: this.params.subarray(weightOffset, biasOffset), dims: [fanOut, fanIn] };
      feeds[biasName(l)] = { data: this.params.subarray(biasOffset, biasOffset + fanOut), dims: [fanOut] };
    });
    const fetches: Record<string, { data: Float32Array; dims: number[] }> = { rowLoss: { data: rowLoss.subarray(0, rows), dims: [rows] } };
    this.gradientBuffers!.forEach(({ weight, bias }, l) => {
      fetches[`gW${l}`] = { data: weight, dims: [layers[l].fanOut, layers[l].fanIn] };
      fetches[`gb${l}`] = { data: bias, dims: [layers[l].fanOut] };
    });
    this.directStepSession.run(feeds, fetches);
    return this.gradientBuffers!;
  }

  private gradients(result: Ort.InferenceSession.ReturnType): LayerGradient[] {
    return this.layout.layers.map((_, l) => ({ weight: result[`gW${l}`].data as Float32Array, bias: result[`gb${l}`].data as Float32Array }));
  }

  async evaluate(x: Float32Array, target: Float32Array, rows: number, out: EvalOutputs): Promise<void> {
    const feeds = { ...this.paramFeeds, ...this.rowInputs(x, target, rows) };
    const result = await this.sessions[2].run(feeds);
    out.rowLoss.set((result.rowLoss.data as Float32Array).subarray(0, rows));
    const predicted = result.predicted.data as BigInt64Array;
    for (let i = 0; i < rows; i++) out.predicted[i] = Number(predicted[i]);
  }

  async dispose(): Promise<void> {
    const lazy = await Promise.all([this.stepSession, this.deltasSession].filter((s) => s !== undefined));
    await Promise.all([...this.sessions, ...lazy].map((s) => s.release()));
  }
}
