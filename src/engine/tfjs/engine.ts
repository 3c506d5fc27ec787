/**
 * The TensorFlow.js engine: tfjs-node-gpu or tfjs-node when the user installed one (they download
 * libtensorflow at install time, so they are optional and loaded only when present), else tfjs's own wasm
 * backend; with --device webgpu, tfjs's WebGPU backend on Dawn's Node bindings (the npm package `webgpu`),
 * loaded only then. The backward pass is written out with explicit transposes and plain matMuls: wasm runs
 * transposed matMuls (what autodiff emits) at 0.7–1.6 GFLOP/s against 16–21 for plain ones, and no
 * autodiff means tfjs-core's kernels are all it needs.
 */
import type * as TfCore from '@tensorflow/tfjs-core';
import { engineUnavailable } from '../../errors.js';
import type { ModelSpec } from '../../model/spec.js';
import { paramLayout } from '../../model/spec.js';
import type { Device, DeviceState, Engine, EvalOutputs, LayerGradient, RowOutputs } from '../engine.js';
import { TfjsDeviceState, type LayerTensors } from './device_state.js';

type Tf = typeof TfCore;
type Tensor2D = TfCore.Tensor2D;
type Tensor1D = TfCore.Tensor1D;

const NATIVE_GPU = '@tensorflow/tfjs-node-gpu';
const NATIVE_CPU = '@tensorflow/tfjs-node';

async function importOptional(name: string): Promise<Tf | undefined> {
  try {
    return (await import(name)) as Tf;
  } catch {
    return undefined;
  }
}

/**
 * The object Dawn's `create()` returns, kept for the whole process: once it is garbage-collected, Dawn
 * crashes at the next buffer mapping (SIGSEGV or abort, reproduced).
 */
let dawn: unknown;

/** tfjs-backend-webgpu's MatMulProgramType.MatMulPackedProgram: tiles of rows and columns, each output summed over K in one order. */
const MATMUL_PACKED_PROGRAM = 3;

/** tfjs-core on its WebGPU backend, over the adapter that prepareEngine named (the high-performance one). */
async function loadTfWebGpu(adapter: string): Promise<{ tf: Tf; backend: string }> {
  const webgpu = (await import('webgpu')) as { create(flags: string[]): unknown; globals: object };
  // The backend reads navigator.gpu and WebGPU's global constants (GPUBufferUsage, …), as in a browser.
  Object.assign(globalThis, webgpu.globals);
  dawn ??= webgpu.create([]);
  const navigator = ((globalThis as { navigator?: object }).navigator ??= {});
  Object.defineProperty(navigator, 'gpu', { value: dawn, configurable: true });
  const tf = (await import('@tensorflow/tfjs-core')) as Tf;
  await import('@tensorflow/tfjs-backend-webgpu');
  if (!(await tf.setBackend('webgpu'))) throw engineUnavailable('tfjs', 'the WebGPU backend failed to initialise on Dawn');
  await tf.ready();
  // One matMul program for every shape: by default the backend picks one by size (split-K and small-output
  // programs for few rows), whose sums round differently, and a row's bits would depend on its call's rows.
  tf.env().set('WEBGPU_MATMUL_PROGRAM_TYPE', MATMUL_PACKED_PROGRAM);
  return { tf, backend: `tfjs ${tf.version_core} (webgpu on ${adapter})` };
}

async function loadTf(device: Device, adapter?: string): Promise<{ tf: Tf; backend: string }> {
  if (device === 'webgpu') return loadTfWebGpu(adapter ?? 'the default adapter');
  if (device === 'gpu' || device === 'cuda') {
    const tf = await importOptional(NATIVE_GPU);
    if (!tf) {
      throw engineUnavailable(
        'tfjs',
        `--device ${device} needs ${NATIVE_GPU}; install it with npm install ${NATIVE_GPU} (it downloads libtensorflow with CUDA)`,
      );
    }
    return { tf, backend: `tfjs ${tf.version_core} (${NATIVE_GPU})` };
  }
  const native = await importOptional(NATIVE_CPU);
  if (native) return { tf: native, backend: `tfjs ${native.version_core} (${NATIVE_CPU})` };
  const tf = (await import('@tensorflow/tfjs-core')) as Tf;
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  // One thread per worker, like the onnx engine: dtrain's workers are the parallelism.
  wasm.setThreadsCount(1);
  if (!(await tf.setBackend('wasm'))) throw engineUnavailable('tfjs', 'the wasm backend failed to initialise');
  await tf.ready();
  return { tf, backend: `tfjs ${tf.version_core} (wasm)` };
}

/** `adapter`: for --device webgpu, the adapter in words (engine/webgpu/adapter.ts describeAdapter). */
export async function createTfjsEngine(spec: ModelSpec, device: Device, adapter?: string): Promise<Engine> {
  const { tf, backend } = await loadTf(device, adapter);
  return new TfjsEngine(tf, spec, backend, device === 'webgpu');
}

class TfjsEngine implements Engine {
  readonly name = 'tfjs' as const;
  private readonly layout;
  private weights: Tensor2D[] = [];
  /** Wᵀ per layer, so the forward pass is a plain matMul. */
  private weightsT: Tensor2D[] = [];
  private biases: Tensor1D[] = [];

  constructor(
    private readonly tf: Tf,
    private readonly spec: ModelSpec,
    readonly backend: string,
    /** On the GPU: a single slot keeps the state there (deviceState). */
    private readonly onGpu = false,
  ) {
    this.layout = paramLayout(spec);
  }

  private resident?: TfjsDeviceState;

  /** The state kept on the GPU between steps (Engine.deviceState); not on the CPU. */
  get deviceState(): (() => Promise<DeviceState>) | undefined {
    return this.onGpu ? async () => (this.resident ??= new TfjsDeviceState(this.tf, this.layout, this)) : undefined;
  }

  setParams(params: Float32Array): void {
    const tf = this.tf;
    tf.dispose([...this.weights, ...this.weightsT, ...this.biases]);
    this.weights = [];
    this.weightsT = [];
    this.biases = [];
    for (const layer of this.layout.layers) {
      const W = tf.tensor2d(params.slice(layer.weightOffset, layer.biasOffset), [layer.fanOut, layer.fanIn]);
      this.weights.push(W);
      this.weightsT.push(tf.transpose(W));
      this.biases.push(tf.tensor1d(params.slice(layer.biasOffset, layer.biasOffset + layer.fanOut)));
    }
  }

  private activate(z: TfCore.Tensor): TfCore.Tensor {
    const tf = this.tf;
    switch (this.spec.activation) {
      case 'sigmoid':
        return tf.sigmoid(z);
      case 'relu':
        return tf.relu(z);
      case 'tanh':
        return tf.tanh(z);
    }
  }

  private activationGrad(dh: TfCore.Tensor, h: TfCore.Tensor): TfCore.Tensor {
    const tf = this.tf;
    switch (this.spec.activation) {
      case 'sigmoid':
        return tf.mul(dh, tf.mul(h, tf.sub(1, h)));
      case 'relu':
        return tf.mul(dh, tf.step(h));
      case 'tanh':
        return tf.mul(dh, tf.sub(1, tf.square(h)));
    }
  }

  private forward(x: Float32Array, target: Float32Array, rows: number, params = this.current()) {
    const tf = this.tf;
    const features = this.spec.sizes[0];
    const classes = this.spec.sizes[this.spec.sizes.length - 1];
    const xt = tf.tensor2d(x.slice(0, rows * features), [rows, features]);
    const tt = tf.tensor2d(target.slice(0, rows * classes), [rows, classes]);
    const hidden: TfCore.Tensor[] = [];
    let h: TfCore.Tensor = xt;
    const last = this.layout.layers.length - 1;
    for (let l = 0; l < last; l++) {
      h = this.activate(tf.add(tf.matMul(h as Tensor2D, params.weightsT[l]), params.biases[l]));
      hidden.push(h);
    }
    const logits = tf.add(tf.matMul(h as Tensor2D, params.weightsT[last]), params.biases[last]);
    const logp = tf.logSoftmax(logits);
    const rowLoss = tf.neg(tf.sum(tf.mul(tt, logp), 1));
    return { x: xt, hidden, logits, logp, rowLoss, target: tt };
  }

  /** The parameters set by setParams, as forward() and the deltas read them. */
  private current(): LayerTensors {
    return { weights: this.weights, weightsT: this.weightsT, biases: this.biases };
  }

  /** Each layer's delta of the rows forward() computed, back through the weights. */
  private deltasOf(f: ReturnType<TfjsEngine['forward']>, invBatch: number, weights: Tensor2D[]): TfCore.Tensor[] {
    const tf = this.tf;
    const deltas: TfCore.Tensor[] = [];
    let delta = tf.mul(tf.sub(tf.exp(f.logp), f.target), invBatch);
    deltas.unshift(delta);
    for (let l = this.layout.layers.length - 2; l >= 0; l--) {
      const dh = tf.matMul(delta as Tensor2D, weights[l + 1]);
      delta = this.activationGrad(dh, f.hidden[l]);
      deltas.unshift(delta);
    }
    return deltas;
  }

  /** A layer's gradient for `units` from its input a and delta d: the weight pass's ops, so its bits. */
  private layerGradient(a: TfCore.Tensor, d: TfCore.Tensor, units: readonly [number, number], rows: number): [TfCore.Tensor, TfCore.Tensor] {
    const tf = this.tf;
    // A share of one unit would make a one-row product, which takes another kernel than a wider share
    // (a vector product on WebGPU) and rounds differently: it runs as two copies of its column.
    const width = units[1] - units[0];
    const one = tf.slice(d, [0, units[0]], [rows, width]);
    const part = width === 1 ? tf.concat([one, one], 1) : one;
    const dW = tf.matMul(tf.transpose(part), a as Tensor2D);
    const db = tf.sum(part, 0);
    return width === 1 ? [tf.slice(dW, [0, 0], [1, a.shape[1]!]), tf.slice(db, [0], [1])] : [dW, db];
  }

  /** Each layer's [weight, bias] gradient for `units` from rows given as arrays (inside a tidy). */
  rowsGradients(inputs: Float32Array[], deltas: Float32Array[], batch: number, units: readonly (readonly [number, number])[]): [TfCore.Tensor, TfCore.Tensor][] {
    const tf = this.tf;
    return this.layout.layers.map(({ fanIn, fanOut }, l) => {
      const a = tf.tensor2d(inputs[l].slice(0, batch * fanIn), [batch, fanIn]);
      const d = tf.tensor2d(deltas[l].slice(0, batch * fanOut), [batch, fanOut]);
      return this.layerGradient(a, d, units[l], batch);
    });
  }

  /**
   * A whole step's loss and every layer's gradient from parameters `params` (the device state's), with the
   * row pass's and the weight pass's ops: the rows computed in one call have the bits of any split (plan.ts).
   */
  stepGradients(params: LayerTensors, x: Float32Array, target: Float32Array, rows: number) {
    const f = this.forward(x, target, rows, params);
    const deltas = this.deltasOf(f, 1 / rows, params.weights);
    const inputs = [f.x, ...f.hidden];
    const gradients = this.layout.layers.map(({ fanOut }, l) => this.layerGradient(inputs[l], deltas[l], [0, fanOut], rows));
    return { rowLoss: f.rowLoss, gradients };
  }

  /**
   * forward(), but a single row runs as two copies of itself: a one-row matMul takes another kernel (a
   * vector product on WebGPU) that rounds differently, and a row must have the same bits in any call
   * (cluster/plan.ts). The outputs then hold two rows, of which the first is the row's.
   */
  private forwardPadded(x: Float32Array, target: Float32Array, rows: number, params = this.current()) {
    if (rows >= 2) return this.forward(x, target, rows, params);
    const twice = (a: Float32Array, width: number) => Float32Array.of(...a.subarray(0, width), ...a.subarray(0, width));
    return this.forward(twice(x, this.spec.sizes[0]), twice(target, this.spec.sizes[this.spec.sizes.length - 1]), 2, params);
  }

  rowPass(x: Float32Array, target: Float32Array, rows: number, invBatch: number, out: RowOutputs): Promise<void> {
    return this.rowPassWith(this.current(), x, target, rows, invBatch, out);
  }

  /** The row pass on these parameters: setParams', or the device state's (TfjsDeviceState.rowPass). */
  async rowPassWith(params: LayerTensors, x: Float32Array, target: Float32Array, rows: number, invBatch: number, out: RowOutputs): Promise<void> {
    const tf = this.tf;
    const results = tf.tidy(() => {
      const f = this.forwardPadded(x, target, rows, params);
      return [f.rowLoss, ...f.hidden, ...this.deltasOf(f, invBatch, params.weights)];
    });
    const data = await Promise.all(results.map((t) => t.data() as Promise<Float32Array>));
    tf.dispose(results);
    let i = 0;
    // Each output's first `rows` rows (all of them unless padded).
    for (const into of [out.rowLoss, ...out.hidden, ...out.deltas]) into.set(data[i++].subarray(0, into.length));
  }

  async weightPass(inputs: Float32Array[], deltas: Float32Array[], batch: number, units: readonly (readonly [number, number])[]): Promise<LayerGradient[]> {
    const tf = this.tf;
    const tensors = tf.tidy(() => this.rowsGradients(inputs, deltas, batch, units).flat());
    const data = (await Promise.all(tensors.map((t) => t.data()))) as Float32Array[];
    tf.dispose(tensors);
    return this.layout.layers.map((_, l) => ({ weight: data[2 * l], bias: data[2 * l + 1] }));
  }

  async evaluate(x: Float32Array, target: Float32Array, rows: number, out: EvalOutputs): Promise<void> {
    const tf = this.tf;
    const [rowLoss, predicted] = tf.tidy(() => {
      const f = this.forwardPadded(x, target, rows);
      return [f.rowLoss, tf.argMax(f.logits, 1)];
    });
    // The first `rows` rows (all of them unless padded).
    out.rowLoss.set(((await rowLoss.data()) as Float32Array).subarray(0, rows));
    out.predicted.set(((await predicted.data()) as Int32Array).subarray(0, rows));
    tf.dispose([rowLoss, predicted]);
  }

  async dispose(): Promise<void> {
    this.resident?.dispose();
    this.tf.dispose([...this.weights, ...this.weightsT, ...this.biases]);
  }
}
