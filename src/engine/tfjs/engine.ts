/**
 * The TensorFlow.js engine: tfjs-node-gpu or tfjs-node when the user installed one (they download
 * libtensorflow at install time, so they are optional and loaded only when present), else tfjs's own wasm
 * backend. The backward pass is written out with explicit transposes and plain matMuls: wasm runs
 * transposed matMuls (what autodiff emits) at 0.7–1.6 GFLOP/s against 16–21 for plain ones.
 */
import type * as TfCore from '@tensorflow/tfjs-core';
import { engineUnavailable } from '../../errors.js';
import type { ModelSpec } from '../../model/spec.js';
import { paramLayout } from '../../model/spec.js';
import type { Device, Engine, EvalOutputs, LayerGradient, RowOutputs } from '../engine.js';

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

async function loadTf(device: Device): Promise<{ tf: Tf; backend: string }> {
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

export async function createTfjsEngine(spec: ModelSpec, device: Device): Promise<Engine> {
  const { tf, backend } = await loadTf(device);
  return new TfjsEngine(tf, spec, backend);
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
  ) {
    this.layout = paramLayout(spec);
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

  private forward(x: Float32Array, target: Float32Array, rows: number) {
    const tf = this.tf;
    const features = this.spec.sizes[0];
    const classes = this.spec.sizes[this.spec.sizes.length - 1];
    const xt = tf.tensor2d(x.slice(0, rows * features), [rows, features]);
    const tt = tf.tensor2d(target.slice(0, rows * classes), [rows, classes]);
    const hidden: TfCore.Tensor[] = [];
    let h: TfCore.Tensor = xt;
    const last = this.layout.layers.length - 1;
    for (let l = 0; l < last; l++) {
      h = this.activate(tf.add(tf.matMul(h as Tensor2D, this.weightsT[l]), this.biases[l]));
      hidden.push(h);
    }
    const logits = tf.add(tf.matMul(h as Tensor2D, this.weightsT[last]), this.biases[last]);
    const logp = tf.logSoftmax(logits);
    const rowLoss = tf.neg(tf.sum(tf.mul(tt, logp), 1));
    return { hidden, logits, logp, rowLoss, target: tt };
  }

  async rowPass(x: Float32Array, target: Float32Array, rows: number, invBatch: number, out: RowOutputs): Promise<void> {
    const tf = this.tf;
    const results = tf.tidy(() => {
      const f = this.forward(x, target, rows);
      const deltas: TfCore.Tensor[] = [];
      let delta = tf.mul(tf.sub(tf.exp(f.logp), f.target), invBatch);
      deltas.unshift(delta);
      for (let l = this.layout.layers.length - 2; l >= 0; l--) {
        const dh = tf.matMul(delta as Tensor2D, this.weights[l + 1]);
        delta = this.activationGrad(dh, f.hidden[l]);
        deltas.unshift(delta);
      }
      return [f.rowLoss, ...f.hidden, ...deltas];
    });
    const data = await Promise.all(results.map((t) => t.data() as Promise<Float32Array>));
    tf.dispose(results);
    let i = 0;
    out.rowLoss.set(data[i++]);
    for (const h of out.hidden) h.set(data[i++]);
    for (const d of out.deltas) d.set(data[i++]);
  }

  async weightPass(inputs: Float32Array[], deltas: Float32Array[], batch: number, units: readonly (readonly [number, number])[]): Promise<LayerGradient[]> {
    const tf = this.tf;
    const tensors = tf.tidy(() =>
      this.layout.layers.flatMap(({ fanIn, fanOut }, l) => {
        const a = tf.tensor2d(inputs[l].slice(0, batch * fanIn), [batch, fanIn]);
        const d = tf.tensor2d(deltas[l].slice(0, batch * fanOut), [batch, fanOut]);
        const part = tf.slice(d, [0, units[l][0]], [batch, units[l][1] - units[l][0]]);
        return [tf.matMul(tf.transpose(part), a), tf.sum(part, 0)];
      }),
    );
    const data = (await Promise.all(tensors.map((t) => t.data()))) as Float32Array[];
    tf.dispose(tensors);
    return this.layout.layers.map((_, l) => ({ weight: data[2 * l], bias: data[2 * l + 1] }));
  }

  async evaluate(x: Float32Array, target: Float32Array, rows: number, out: EvalOutputs): Promise<void> {
    const tf = this.tf;
    const [rowLoss, predicted] = tf.tidy(() => {
      const f = this.forward(x, target, rows);
      return [f.rowLoss, tf.argMax(f.logits, 1)];
    });
    out.rowLoss.set((await rowLoss.data()) as Float32Array);
    out.predicted.set((await predicted.data()) as Int32Array);
    tf.dispose([rowLoss, predicted]);
  }

  async dispose(): Promise<void> {
    this.tf.dispose([...this.weights, ...this.weightsT, ...this.biases]);
  }
}
