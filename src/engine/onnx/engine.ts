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
import { CApiRunner } from './c_api_runner.js';
import { ortCApi, sharedAlias } from './native.js';
import { type Feed as DirectTensor, type Fetch, SESSION_OPTIONS } from './runner.js';
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
    ...SESSION_OPTIONS,
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
  const reads = ortCApi() ? ', through its C API' : sharedAlias() ? '' : ', copying shared buffers';
  // The step and deltas graphs serve only some slots (one computing whole steps; remote replicas), so they
  // are built on first use.
  const lazySession = (build: (spec: ModelSpec) => Uint8Array) => () => ort.InferenceSession.create(build(spec), options);
  return new OnnxEngine(ort, spec, sessions, lazySession(buildStepGraph), lazySession(buildDeltasGraph), `onnxruntime-node ${version} (${device}${reads})`);
}

class OnnxEngine implements Engine {
  readonly name = 'onnx' as const;
  private readonly scratch = new Scratch();
  private readonly layout;
  private bindingParams?: Record<string, Ort.Tensor>;
  private readonly scale: Float32Array = new Float32Array(1);
  private readonly range: BigInt64Array;
  private stepSession?: Promise<Ort.InferenceSession>;
  /** The C API path (direct.ts), when the native helper is built; its sessions by graph. */
  private readonly direct = ortCApi();
  private readonly directSessions = new Map<string, CApiRunner>();
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
    this.bindingParams = undefined;
  }

  /**
   * The parameters as the binding's feeds, made on first use after setParams: with the C API path most
   * steps never call the binding, and making them costs tensors (and a copy of shared memory without the
   * alias) on every step.
   */
  private get paramFeeds(): Record<string, Ort.Tensor> {
    if (!this.bindingParams) {
      const local = this.scratch.local('params', this.params);
      const feeds: Record<string, Ort.Tensor> = {};
      this.layout.layers.forEach((layer, l) => {
        feeds[weightName(l)] = this.tensor(local.subarray(layer.weightOffset, layer.biasOffset), [layer.fanOut, layer.fanIn]);
        feeds[biasName(l)] = this.tensor(local.subarray(layer.biasOffset, layer.biasOffset + layer.fanOut), [layer.fanOut]);
      });
      this.bindingParams = feeds;
    }
    return this.bindingParams;
  }

  /**
   * A rows × width input for the binding. onnxruntime multiplies a single row on another code path (GEMV)
   * that rounds differently from the multi-row kernels, so a one-row input is padded to two rows: the row
   * then gets the same bits as in any larger call.
   */
  private rowsTensor(slot: string, data: Float32Array, rows: number, width: number): Ort.Tensor {
    const local = this.scratch.local(slot, data, rows * width);
    if (rows > 1) return this.tensor(local, [rows, width]);
    const twice = this.scratch.local(`${slot}Pad`, new Float32Array(2 * width));
    twice.set(local);
    twice.set(local, width);
    return this.tensor(twice, [2, width]);
  }

  private rowInputs(x: Float32Array, target: Float32Array, rows: number) {
    return { x: this.rowsTensor('x', x, rows, this.features), target: this.rowsTensor('target', target, rows, this.classes) };
  }

  async rowPass(x: Float32Array, target: Float32Array, rows: number, invBatch: number, out: RowOutputs): Promise<void> {
    this.scale[0] = invBatch;
    if (this.direct && rows > 1) {
      const layers = this.layout.layers;
      const fetches: Record<string, Fetch> = { rowLoss: { data: out.rowLoss, dims: [rows] } };
      out.hidden.forEach((h, l) => (fetches[hiddenName(l)] = { data: h, dims: [rows, layers[l].fanOut] }));
      out.deltas.forEach((d, l) => (fetches[deltaName(l)] = { data: d, dims: [rows, layers[l].fanOut] }));
      return this.directRun('rows', buildRowGraph, { ...this.directParams(), ...this.directRowInputs(x, target, rows) }, fetches);
    }
    const feeds = { ...this.paramFeeds, ...this.rowInputs(x, target, rows), scale: this.tensor(this.scale, [1]) };
    const result = await this.sessions[0].run(feeds);
    out.rowLoss.set((result.rowLoss.data as Float32Array).subarray(0, rows));
    out.hidden.forEach((h, l) => h.set((result[hiddenName(l)].data as Float32Array).subarray(0, h.length)));
    out.deltas.forEach((d, l) => d.set((result[deltaName(l)].data as Float32Array).subarray(0, d.length)));
  }

  async weightPass(inputs: Float32Array[], deltas: Float32Array[], batch: number, units: readonly (readonly [number, number])[]): Promise<LayerGradient[]> {
    if (this.direct && units.every(([u0, u1]) => u1 > u0)) return this.directWeights(inputs, deltas, batch, units);
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
    const layers = this.layout.layers;
    if (this.direct && rows > 1) {
      const feeds: Record<string, DirectTensor> = { [deltaName(layers.length - 1)]: { data: last, dims: [rows, layers[layers.length - 1].fanOut] } };
      hidden.forEach((h, l) => (feeds[hiddenName(l)] = { data: h, dims: [rows, layers[l].fanOut] }));
      const fetches: Record<string, Fetch> = {};
      deltas.forEach((d, l) => (fetches[deltaName(l)] = { data: d, dims: [rows, layers[l].fanOut] }));
      return this.directRun('deltas', buildDeltasGraph, { ...this.directParams(1), ...feeds }, fetches);
    }
    this.deltasSession ??= this.createDeltasSession();
    const feeds: Record<string, Ort.Tensor> = {};
    hidden.forEach((h, l) => (feeds[hiddenName(l)] = this.rowsTensor(`h${l}`, h, rows, layers[l].fanOut)));
    feeds[deltaName(layers.length - 1)] = this.rowsTensor('last', last, rows, layers[layers.length - 1].fanOut);
    for (let l = 1; l < layers.length; l++) feeds[weightName(l)] = this.paramFeeds[weightName(l)];
    const result = await (await this.deltasSession).run(feeds);
    deltas.forEach((d, l) => d.set((result[deltaName(l)].data as Float32Array).subarray(0, rows * layers[l].fanOut)));
  }

  // ---- the C API path (direct.ts): inputs read where they lie, outputs written into the given arrays

  /** Runs one of the graphs through the C API, its session made on first use with these names. */
  private directRun(graph: string, build: (spec: ModelSpec) => Uint8Array, feeds: Record<string, DirectTensor>, fetches: Record<string, Fetch>): void {
    let session = this.directSessions.get(graph);
    if (!session) {
      session = new CApiRunner(this.direct!.native, build(this.spec));
      this.directSessions.set(graph, session);
    }
    session.run(feeds, fetches);
  }

  /** The parameters of layers `from`… as feeds (the rows graph reads all; the deltas graph W1… only). */
  private directParams(from = 0): Record<string, DirectTensor> {
    const feeds: Record<string, DirectTensor> = {};
    this.layout.layers.forEach(({ fanIn, fanOut, weightOffset, biasOffset }, l) => {
      if (l < from) return;
      feeds[weightName(l)] = { data: this.params.subarray(weightOffset, biasOffset), dims: [fanOut, fanIn] };
      if (from === 0) feeds[biasName(l)] = { data: this.params.subarray(biasOffset, biasOffset + fanOut), dims: [fanOut] };
    });
    return feeds;
  }

  private directRowInputs(x: Float32Array, target: Float32Array, rows: number): Record<string, DirectTensor> {
    return {
      x: { data: x.subarray(0, rows * this.features), dims: [rows, this.features] },
      target: { data: target.subarray(0, rows * this.classes), dims: [rows, this.classes] },
      scale: { data: this.scale, dims: [1] },
    };
  }

  /** Gradient buffers of whole layers, owned by the engine: a pass's gradients are views into them. */
  private gradientsOf(units: readonly (readonly [number, number])[]): LayerGradient[] {
    this.gradientBuffers ??= this.layout.layers.map(({ fanIn, fanOut }) => ({ weight: new Float32Array(fanIn * fanOut), bias: new Float32Array(fanOut) }));
    return this.gradientBuffers.map(({ weight, bias }, l) => {
      const n = units[l][1] - units[l][0];
      return { weight: weight.subarray(0, n * this.layout.layers[l].fanIn), bias: bias.subarray(0, n) };
    });
  }

  private gradientFetches(gradients: LayerGradient[]): Record<string, Fetch> {
    const fetches: Record<string, Fetch> = {};
    gradients.forEach(({ weight, bias }, l) => {
      fetches[`gW${l}`] = { data: weight, dims: [bias.length, this.layout.layers[l].fanIn] };
      fetches[`gb${l}`] = { data: bias, dims: [bias.length] };
    });
    return fetches;
  }

  private directStep(x: Float32Array, target: Float32Array, rows: number, rowLoss: Float32Array): LayerGradient[] {
    this.scale[0] = 1 / rows;
    const gradients = this.gradientsOf(this.layout.layers.map(({ fanOut }) => [0, fanOut] as const));
    const fetches = { rowLoss: { data: rowLoss.subarray(0, rows), dims: [rows] }, ...this.gradientFetches(gradients) };
    this.directRun('step', buildStepGraph, { ...this.directRowInputs(x, target, rows), ...this.directParams() }, fetches);
    return gradients;
  }

  private directWeights(inputs: Float32Array[], deltas: Float32Array[], batch: number, units: readonly (readonly [number, number])[]): LayerGradient[] {
    const feeds: Record<string, DirectTensor> = {};
    this.layout.layers.forEach(({ fanIn, fanOut }, l) => {
      feeds[`a${l}`] = { data: inputs[l].subarray(0, batch * fanIn), dims: [batch, fanIn] };
      feeds[`d${l}`] = { data: deltas[l].subarray(0, batch * fanOut), dims: [batch, fanOut] };
      this.range[2 * l] = BigInt(units[l][0]);
      this.range[2 * l + 1] = BigInt(units[l][1]);
      feeds[`start${l}`] = { data: this.range.subarray(2 * l, 2 * l + 1), dims: [1] };
      feeds[`end${l}`] = { data: this.range.subarray(2 * l + 1, 2 * l + 2), dims: [1] };
    });
    const gradients = this.gradientsOf(units);
    this.directRun('weight', buildWeightGraph, feeds, this.gradientFetches(gradients));
    return gradients;
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
