/**
 * The default engine: the graphs of graph.ts run by onnxruntime, one intra-op thread per worker (see
 * SESSION_OPTIONS). Each pass is written once against a GraphRunner (runner.ts): onnxruntime's C API when
 * the native addon is built (c_api_runner.ts; CPU and WebGPU), else onnxruntime-node's binding
 * (binding_runner.ts; also CUDA). Same library, same options, same provider: the same bits either way.
 * On WebGPU the sessions of a process take turns on the device (../webgpu/turns.ts).
 */
import { createRequire } from 'node:module';
import type * as Ort from 'onnxruntime-node';
import { engineUnavailable } from '../../errors.js';
import type { ModelSpec } from '../../model/spec.js';
import { paramLayout } from '../../model/spec.js';
import type { Device, DeviceState, Engine, EngineOptions, EvalOutputs, LayerGradient, RowOutputs } from '../engine.js';
import { describeAdapter } from '../webgpu/adapter.js';
import { GpuTurns } from '../webgpu/turns.js';
import { BindingRunner } from './binding_runner.js';
import { CApiRunner } from './c_api_runner.js';
import { ResidentState, type DevicePasses, type OpenSession } from './resident_state.js';
import {
  biasName,
  buildDeltasGraph,
  buildEvalGraph,
  buildRowGraph,
  buildStepGraph,
  buildWeightGraph,
  deltaName,
  hiddenName,
  weightName,
  type GraphOptions,
} from './graph.js';
import { ortCApi, sharedAlias } from './native.js';
import { RowBatch, Scratch } from './row_batch.js';
import { EXECUTION_PROVIDERS, type Feed, type Fetch, type GraphRunner, SESSION_OPTIONS } from './runner.js';

type OrtModule = typeof Ort;
type GraphName = 'rows' | 'weight' | 'eval' | 'step' | 'deltas';
type Units = readonly (readonly [number, number])[];
type OnnxDevice = keyof typeof EXECUTION_PROVIDERS;

const GRAPHS: Record<GraphName, (spec: ModelSpec, options: GraphOptions) => Uint8Array> = {
  rows: buildRowGraph,
  weight: buildWeightGraph,
  eval: buildEvalGraph,
  step: buildStepGraph,
  deltas: buildDeltasGraph,
};

/**
 * Opened with the engine, so that a missing runtime or device fails at once. The step and deltas graphs
 * serve only some slots (one computing whole steps; remote replicas), so they are opened on first use.
 */
const OPENED_AT_ONCE: GraphName[] = ['rows', 'weight', 'eval'];

/** 'binding' makes the engine use onnxruntime-node's binding even when the C API path is there (tests). */
export type RunnerPath = 'auto' | 'binding';

type OpenRunner = (model: Uint8Array) => Promise<GraphRunner>;

/** How graphs are opened, and what the engine line says about it. */
function chooseRunners(ort: OrtModule, device: OnnxDevice, path: RunnerPath): { open: OpenRunner; reads: string } {
  const provider = EXECUTION_PROVIDERS[device];
  const cApi = path === 'auto' && provider.cApi !== undefined ? ortCApi() : null;
  if (cApi) return { open: async (model) => new CApiRunner(cApi.native, model, provider.cApi ?? undefined), reads: ', through its C API' };
  const options: Ort.InferenceSession.SessionOptions = { ...SESSION_OPTIONS, executionProviders: [provider.binding] };
  return {
    open: async (model) => new BindingRunner(ort, await ort.InferenceSession.create(model, options)),
    reads: sharedAlias() ? '' : ', copying shared buffers',
  };
}

/** The devices this engine runs on: 'gpu' (tfjs-node-gpu's name) means CUDA here, as it always did. */
function onnxDevice(device: Device): OnnxDevice {
  return device === 'gpu' ? 'cuda' : device;
}

/** What a failed session says, with what to do about it on that device. */
function sessionFailed(device: OnnxDevice, e: Error) {
  const hint = {
    cpu: '',
    webgpu: '; check the Vulkan driver with vulkaninfo --summary',
    cuda: '; install the CUDA 12 build with ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js',
  }[device];
  return engineUnavailable('onnx', `onnxruntime could not create a ${device} session (${e.message})${hint}`);
}

export async function createOnnxEngine(spec: ModelSpec, options: Pick<EngineOptions, 'device' | 'webgpu'>, path: RunnerPath = 'auto'): Promise<Engine> {
  let ort: OrtModule;
  try {
    ort = (await import('onnxruntime-node')).default as unknown as OrtModule;
  } catch (e) {
    throw engineUnavailable('onnx', `onnxruntime-node could not be loaded (${(e as Error).message}); run npm install`);
  }
  const device = onnxDevice(options.device);
  if (device === 'webgpu' && !options.webgpu) throw new TypeError('createOnnxEngine: --device webgpu needs the options of prepareEngine');
  const { open, reads } = chooseRunners(ort, device, path);
  const version = createRequire(import.meta.url)('onnxruntime-node/package.json').version as string;
  const on = options.webgpu ? `webgpu on ${describeAdapter(options.webgpu.adapter)}` : device;
  const turns = options.webgpu ? new GpuTurns(options.webgpu.turns) : undefined;
  const graphOptions = { webgpuOps: device === 'webgpu' };
  // On the GPU the state may stay there: through the binding, which keeps outputs on the device and takes them as inputs.
  let gpu: GpuState | undefined;
  if (device === 'webgpu') {
    const openSession: OpenSession = (model, extra = {}) => {
      const create = () => ort.InferenceSession.create(model, { ...SESSION_OPTIONS, executionProviders: [EXECUTION_PROVIDERS.webgpu.binding], ...extra });
      return turns ? turns.take(create) : create();
    };
    const openBinding = async (model: Uint8Array) => new BindingRunner(ort, await openSession(model));
    gpu = { openState: (passes) => ResidentState.open(ort, spec, graphOptions, passes, openSession, turns), openBinding };
  }
  const engine = new OnnxEngine(spec, open, `onnxruntime-node ${version} (${on}${reads})`, graphOptions, turns, gpu);
  try {
    await Promise.all(OPENED_AT_ONCE.map((graph) => engine.runner(graph)));
  } catch (e) {
    throw sessionFailed(device, e as Error);
  }
  return engine;
}

/** On a GPU: opens the state kept there, given the passes that read it; opens binding sessions. */
interface GpuState {
  openState(passes: DevicePasses): Promise<ResidentState>;
  openBinding: (model: Uint8Array) => Promise<BindingRunner>;
}

/** Parameters that are a device state's tensors, by graph input name (W{l}, b{l}). */
type DeviceParams = Record<string, Ort.Tensor>;

class OnnxEngine implements Engine {
  readonly name = 'onnx' as const;
  private readonly layout;
  private readonly runners = new Map<GraphName, Promise<GraphRunner>>();
  private readonly scratch = new Scratch();
  /** The parameters last given to setParams, as they are (shared memory included). */
  private params: Float32Array = new Float32Array(0);
  /** paramFeeds(from) of the current parameters. */
  private readonly feedsFrom = new Map<number, Record<string, Feed>>();
  /** The rows and step graphs' input "scale": 1/batch. */
  private readonly scale = { data: new Float32Array(1), dims: [1] };
  /** The weight graph's int64 inputs start{l} and end{l}, the units of each layer. */
  private readonly range: BigInt64Array;
  /** Gradient buffers of whole layers: a pass's gradients are views into them. */
  private gradientBuffers?: LayerGradient[];
  /** The eval graph's int64 output "predicted". */
  private predicted = new BigInt64Array(0);

  constructor(
    private readonly spec: ModelSpec,
    private readonly open: OpenRunner,
    readonly backend: string,
    private readonly graphOptions: GraphOptions,
    /** On a GPU: the process's turns on it, taken by every session's creation and run. */
    private readonly turns?: GpuTurns,
    /** On a GPU: what opens the state kept there (deviceState) and the binding sessions that read it. */
    private readonly gpu?: GpuState,
  ) {
    this.layout = paramLayout(spec);
    this.range = new BigInt64Array(2 * this.layout.layers.length);
  }

  private resident?: Promise<ResidentState>;
  private readonly deviceRunners = new Map<GraphName, Promise<BindingRunner>>();

  /** The state kept on the GPU (Engine.deviceState), opened on first use; not on the CPU. */
  get deviceState(): (() => Promise<DeviceState>) | undefined {
    const gpu = this.gpu;
    // A failed opening is not kept: the next step tries again.
    const open = () => gpu!.openState(this).catch((e: Error) => ((this.resident = undefined), Promise.reject(e)));
    return gpu && (() => (this.resident ??= open()));
  }

  /** The graph's runner, opened on first use. */
  runner(graph: GraphName): Promise<GraphRunner> {
    let runner = this.runners.get(graph);
    if (!runner) {
      const model = GRAPHS[graph](this.spec, this.graphOptions);
      runner = this.turns ? this.turns.take(() => this.open(model)) : this.open(model);
      this.runners.set(graph, runner);
    }
    return runner;
  }

  /**
   * Runs a graph on its feeds; `params`: parameters that are device tensors (a device state's), fed as they
   * are through the binding instead of setParams' arrays.
   */
  private async run(graph: GraphName, feeds: Record<string, Feed>, fetches: Record<string, Fetch>, params?: DeviceParams): Promise<void> {
    const runner = params ? await this.deviceRunner(graph) : await this.runner(graph);
    const work = () => (params ? (runner as BindingRunner).run(feeds, fetches, params) : runner.run(feeds, fetches));
    await (this.turns ? this.turns.take(work) : work());
  }

  /** The graph's binding session that reads device tensors (run's `params`), opened on first use. */
  private deviceRunner(graph: GraphName): Promise<BindingRunner> {
    let runner = this.deviceRunners.get(graph);
    if (!runner) {
      const model = GRAPHS[graph](this.spec, this.graphOptions);
      // A failed opening is not kept: the next pass tries again.
      runner = this.gpu!.openBinding(model).catch((e: Error) => (this.deviceRunners.delete(graph), Promise.reject(e)));
      this.deviceRunners.set(graph, runner);
    }
    return runner;
  }

  /** Layer l's output width. */
  private width(l: number): number {
    return this.layout.layers[l].fanOut;
  }

  setParams(params: Float32Array): void {
    this.params = params;
    this.feedsFrom.clear();
  }

  /**
   * The parameters of layers `from`… as feeds (the rows graph reads all; the deltas graph W1… only), made
   * once per setParams: the same feed objects let the binding path keep its tensors (binding_runner.ts).
   */
  private paramFeeds(from = 0): Record<string, Feed> {
    const made = this.feedsFrom.get(from);
    if (made) return made;
    const feeds: Record<string, Feed> = {};
    this.feedsFrom.set(from, feeds);
    this.layout.layers.forEach(({ fanIn, fanOut, weightOffset, biasOffset }, l) => {
      if (l < from) return;
      feeds[weightName(l)] = { data: this.params.subarray(weightOffset, biasOffset), dims: [fanOut, fanIn] };
      if (from === 0) feeds[biasName(l)] = { data: this.params.subarray(biasOffset, biasOffset + fanOut), dims: [fanOut] };
    });
    return feeds;
  }

  /** The inputs x and target, and (unless the parameters are a device's tensors) setParams' parameters. */
  private rowFeeds(batch: RowBatch, x: Float32Array, target: Float32Array, withParams = true): Record<string, Feed> {
    const classes = this.spec.sizes[this.spec.sizes.length - 1];
    return { ...(withParams ? this.paramFeeds() : {}), x: batch.feed('x', x, this.spec.sizes[0]), target: batch.feed('target', target, classes) };
  }

  rowPass(x: Float32Array, target: Float32Array, rows: number, invBatch: number, out: RowOutputs): Promise<void> {
    return this.rowPassWith(undefined, x, target, rows, invBatch, out);
  }

  /** The row pass on these parameters: setParams' (undefined), or a device state's tensors. */
  async rowPassWith(params: DeviceParams | undefined, x: Float32Array, target: Float32Array, rows: number, invBatch: number, out: RowOutputs): Promise<void> {
    this.scale.data[0] = invBatch;
    const batch = new RowBatch(rows, this.scratch);
    const fetches: Record<string, Fetch> = { rowLoss: batch.fetch('rowLoss', out.rowLoss) };
    out.hidden.forEach((h, l) => (fetches[hiddenName(l)] = batch.fetch(hiddenName(l), h, this.width(l))));
    out.deltas.forEach((d, l) => (fetches[deltaName(l)] = batch.fetch(deltaName(l), d, this.width(l))));
    await this.run('rows', { ...this.rowFeeds(batch, x, target, !params), scale: this.scale }, fetches, params);
    batch.copyOut();
  }

  async weightPass(inputs: Float32Array[], deltas: Float32Array[], batch: number, units: Units): Promise<LayerGradient[]> {
    const feeds: Record<string, Feed> = {};
    this.layout.layers.forEach(({ fanIn, fanOut }, l) => {
      feeds[`a${l}`] = { data: inputs[l].subarray(0, batch * fanIn), dims: [batch, fanIn] };
      feeds[`d${l}`] = { data: deltas[l].subarray(0, batch * fanOut), dims: [batch, fanOut] };
      this.range[2 * l] = BigInt(units[l][0]);
      this.range[2 * l + 1] = BigInt(units[l][1]);
      feeds[`start${l}`] = { data: this.range.subarray(2 * l, 2 * l + 1), dims: [1] };
      feeds[`end${l}`] = { data: this.range.subarray(2 * l + 1, 2 * l + 2), dims: [1] };
    });
    const gradients = this.gradientsOf(units);
    await this.run('weight', feeds, this.gradientFetches(gradients));
    return gradients;
  }

  async stepPass(x: Float32Array, target: Float32Array, rows: number, rowLoss: Float32Array): Promise<LayerGradient[]> {
    // Padding a single row would count it twice in the gradient; a one-row step takes the two passes.
    if (rows < 2) throw new RangeError('stepPass needs at least 2 rows');
    this.scale.data[0] = 1 / rows;
    const batch = new RowBatch(rows, this.scratch);
    const gradients = this.gradientsOf(this.layout.layers.map(({ fanOut }) => [0, fanOut] as const));
    const fetches = { rowLoss: batch.fetch('rowLoss', rowLoss), ...this.gradientFetches(gradients) };
    await this.run('step', { ...this.rowFeeds(batch, x, target), scale: this.scale }, fetches);
    return gradients;
  }

  deltasPass(hidden: Float32Array[], last: Float32Array, rows: number, deltas: Float32Array[]): Promise<void> {
    return this.deltasPassWith(undefined, hidden, last, rows, deltas);
  }

  /** The deltas pass on these parameters: setParams' (undefined), or a device state's tensors. */
  async deltasPassWith(params: DeviceParams | undefined, hidden: Float32Array[], last: Float32Array, rows: number, deltas: Float32Array[]): Promise<void> {
    const lastLayer = this.layout.layers.length - 1;
    const batch = new RowBatch(rows, this.scratch);
    const feeds = { ...(params ? {} : this.paramFeeds(1)), [deltaName(lastLayer)]: batch.feed(deltaName(lastLayer), last, this.width(lastLayer)) };
    hidden.forEach((h, l) => (feeds[hiddenName(l)] = batch.feed(hiddenName(l), h, this.width(l))));
    const fetches: Record<string, Fetch> = {};
    deltas.forEach((d, l) => (fetches[deltaName(l)] = batch.fetch(deltaName(l), d, this.width(l))));
    await this.run('deltas', feeds, fetches, params);
    batch.copyOut();
  }

  async evaluate(x: Float32Array, target: Float32Array, rows: number, out: EvalOutputs): Promise<void> {
    const batch = new RowBatch(rows, this.scratch);
    if (this.predicted.length !== batch.runRows) this.predicted = new BigInt64Array(batch.runRows);
    const fetches = { rowLoss: batch.fetch('rowLoss', out.rowLoss), predicted: { data: this.predicted, dims: [batch.runRows] } };
    await this.run('eval', this.rowFeeds(batch, x, target), fetches);
    batch.copyOut();
    for (let i = 0; i < rows; i++) out.predicted[i] = Number(this.predicted[i]);
  }

  /** Views of the gradient buffers for these units of each layer. */
  private gradientsOf(units: Units): LayerGradient[] {
    this.gradientBuffers ??= this.layout.layers.map(({ fanIn, fanOut }) => ({ weight: new Float32Array(fanIn * fanOut), bias: new Float32Array(fanOut) }));
    return this.gradientBuffers.map(({ weight, bias }, l) => {
      const n = units[l][1] - units[l][0];
      return { weight: weight.subarray(0, n * this.layout.layers[l].fanIn), bias: bias.subarray(0, n) };
    });
  }

  /** The outputs gW{l} and gb{l} into these gradients. */
  private gradientFetches(gradients: LayerGradient[]): Record<string, Fetch> {
    const fetches: Record<string, Fetch> = {};
    gradients.forEach(({ weight, bias }, l) => {
      fetches[`gW${l}`] = { data: weight, dims: [bias.length, this.layout.layers[l].fanIn] };
      fetches[`gb${l}`] = { data: bias, dims: [bias.length] };
    });
    return fetches;
  }

  async dispose(): Promise<void> {
    const resident = await this.resident?.catch(() => undefined);
    await resident?.dispose();
    const opened = await Promise.allSettled([...this.runners.values(), ...this.deviceRunners.values()]);
    await Promise.all(opened.map((r) => (r.status === 'fulfilled' ? r.value.release() : undefined)));
  }
}
