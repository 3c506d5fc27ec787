/**
 * The training state on the GPU for the tfjs engine (Engine.deviceState on its WebGPU backend): each
 * layer's W (and Wᵀ for the forward pass), b and their Adam moments are tensors kept on the device. A whole
 * step, or (a slot whose rows are shared) the row pass and the weight pass over the batch's rows, compute with
 * the engine's own ops on them, and Adam runs with tfjs ops in the wasm kernel's order (optim/adam.wat); only
 * rows, losses and one finiteness sum per layer are read back.
 */
import type * as TfCore from '@tensorflow/tfjs-core';
import type { ParamLayout } from '../../model/spec.js';
import { ADAM_SCALARS, type AdamScalars } from '../../optim/adam.js';
import { HeldStates } from '../held_states.js';
import type { DeviceState, RowOutputs, StateTensors } from '../engine.js';

type Tf = typeof TfCore;
type Tensor = TfCore.Tensor;
type Tensor2D = TfCore.Tensor2D;
type Tensor1D = TfCore.Tensor1D;

/** The parameters as the engine's forward pass reads them. */
export interface LayerTensors {
  weights: Tensor2D[];
  weightsT: Tensor2D[];
  biases: Tensor1D[];
}

/** The engine's ops the device state runs on its own parameters (TfjsEngine's, so their bits). */
export interface TfjsPasses {
  /** A whole step's rows' loss and each layer's [weight, bias] gradient (inside a tidy). */
  stepGradients(params: LayerTensors, x: Float32Array, target: Float32Array, rows: number): { rowLoss: Tensor; gradients: [Tensor, Tensor][] };
  /** Each layer's gradient over `units` from rows given as arrays (inside a tidy). */
  rowsGradients(inputs: Float32Array[], deltas: Float32Array[], batch: number, units: readonly (readonly [number, number])[]): [Tensor, Tensor][];
  /** The row pass on these parameters. */
  rowPassWith(params: LayerTensors, x: Float32Array, target: Float32Array, rows: number, invBatch: number, out: RowOutputs): Promise<void>;
}

/** One parameter tensor of the state and its two moments. */
interface Held {
  param: Tensor;
  m: Tensor;
  v: Tensor;
}

/** tf.tidy for a result whose tensors sit in plain objects that TensorContainer's type does not cover. */
function tidyKeeping<T>(tf: Tf, fn: () => T): T {
  return tf.tidy(fn as unknown as () => TfCore.TensorContainer) as unknown as T;
}

/** A state on the device: per layer [weight, bias] with their moments, and the parameters as the passes read them (with Wᵀ). */
interface State {
  layers: [Held, Held][];
  params: LayerTensors;
}

function tensorsOf(layers: [Held, Held][]): Tensor[] {
  return layers.flatMap(([w, b]) => [w.param, w.m, w.v, b.param, b.m, b.v]);
}

export class TfjsDeviceState implements DeviceState {
  private readonly states: HeldStates<State>;

  constructor(
    private readonly tf: Tf,
    private readonly layout: ParamLayout,
    private readonly passes: TfjsPasses,
  ) {
    this.states = new HeldStates((state) => tf.dispose([...tensorsOf(state.layers), ...state.params.weightsT]));
  }

  holds(key: string): boolean {
    return this.states.holds(key);
  }

  async load(state: StateTensors, key: string): Promise<void> {
    const tf = this.tf;
    const part = (offset: number, shape: number[]): Held => {
      const n = shape.reduce((a, b) => a * b, 1);
      const of = (a: Float32Array) => tf.tensor(a.slice(offset, offset + n), shape);
      return { param: of(state.params), m: of(state.m), v: of(state.v) };
    };
    const layers = this.layout.layers.map(({ fanIn, fanOut, weightOffset, biasOffset }) => [part(weightOffset, [fanOut, fanIn]), part(biasOffset, [fanOut])] as [Held, Held]);
    this.states.loaded(this.stateOf(layers), key);
  }

  async step(x: Float32Array, target: Float32Array, rows: number, rowLoss: Float32Array, adam: AdamScalars, nextKey: string): Promise<number[]> {
    if (rows < 2) throw new RangeError('DeviceState.step needs at least 2 rows');
    const { params } = this.states.current('step');
    return this.advanceBy('step', () => this.passes.stepGradients(params, x, target, rows), adam, nextKey, (loss) => rowLoss.set(loss.subarray(0, rows)));
  }

  /** The weight pass over every unit of the rows given, then Adam, from the latest state. */
  async apply(inputs: Float32Array[], deltas: Float32Array[], batch: number, adam: AdamScalars, nextKey: string): Promise<number[]> {
    const units = this.layout.layers.map(({ fanOut }) => [0, fanOut] as const);
    return this.advanceBy('apply', () => ({ gradients: this.passes.rowsGradients(inputs, deltas, batch, units) }), adam, nextKey);
  }

  /** The row pass with the latest state's parameters. */
  rowPass(x: Float32Array, target: Float32Array, rows: number, invBatch: number, out: RowOutputs): Promise<void> {
    return this.passes.rowPassWith(this.states.current('rowPass').params, x, target, rows, invBatch, out);
  }

  /**
   * Adam over the gradients `gradientsOf` makes (and the rows' loss, when it gives one, to `readLoss`): the
   * next state becomes the latest unless a layer's gradient was not finite (those layers are returned).
   */
  private async advanceBy(
    what: string,
    gradientsOf: () => { rowLoss?: Tensor; gradients: [Tensor, Tensor][] },
    adam: AdamScalars,
    nextKey: string,
    readLoss?: (loss: Float32Array) => void,
  ): Promise<number[]> {
    const held = this.states.current(what).layers;
    const tf = this.tf;
    // tidy keeps every tensor in what it returns, nested objects included (Held is one, untyped as a container).
    const { loss, next, bad } = tidyKeeping(tf, () => {
      const { rowLoss: l, gradients } = gradientsOf();
      const scalar = (v: number) => tf.scalar(v, 'float32');
      const [c1, b2, c2, negStep, invBc2sqrt, eps] = ADAM_SCALARS.map((name) => scalar(adam[name]));
      // m = m + c1·(g − m); v = v·b2 + (c2·g)·g; p = p + negStep·(m / (sqrt(v)·invBc2sqrt + eps))
      const update = ({ param, m, v }: Held, g: Tensor): Held => {
        const m2 = tf.add(m, tf.mul(c1, tf.sub(g, m)));
        const v2 = tf.add(tf.mul(v, b2), tf.mul(tf.mul(c2, g), g));
        return { param: tf.add(param, tf.mul(negStep, tf.div(m2, tf.add(tf.mul(tf.sqrt(v2), invBc2sqrt), eps)))), m: m2, v: v2 };
      };
      const nan = (g: Tensor) => tf.sum(tf.mul(g, 0));
      return {
        loss: l,
        next: held.map(([w, b], i) => [update(w, gradients[i][0]), update(b, gradients[i][1])] as [Held, Held]),
        bad: tf.stack(gradients.map(([gW, gb]) => tf.add(nan(gW), nan(gb)))),
      };
    });
    let badData: Float32Array;
    try {
      // Both read back together: each is a wait on the device.
      const [badRead, lossRead] = await Promise.all([bad.data(), loss?.data()]);
      badData = badRead as Float32Array;
      if (lossRead) readLoss?.(lossRead as Float32Array);
    } catch (e) {
      tf.dispose(tensorsOf(next));
      throw e;
    } finally {
      tf.dispose(loss ? [loss, bad] : [bad]);
    }
    const layers = [...badData.keys()].filter((l) => !Number.isFinite(badData[l]));
    if (layers.length > 0) {
      // The latest state stays the last good one: the step's outputs are dropped.
      tf.dispose(tensorsOf(next));
      return layers;
    }
    this.states.stepped(this.stateOf(next), nextKey);
    return [];
  }

  async read(into: StateTensors, key: string): Promise<void> {
    const state = this.states.find(key);
    const reads = this.layout.layers.flatMap(({ weightOffset, biasOffset }, l) =>
      ([weightOffset, biasOffset] as const).flatMap((offset, i) => {
        const { param, m, v } = state.layers[l][i];
        return ([['params', param], ['m', m], ['v', v]] as const).map(async ([array, t]) => into[array].set((await t.data()) as Float32Array, offset));
      }),
    );
    await Promise.all(reads);
  }

  /** A state of these tensors, with Wᵀ made for its forward pass. */
  private stateOf(layers: [Held, Held][]): State {
    const weights = layers.map(([w]) => w.param as Tensor2D);
    const params = { weights, weightsT: weights.map((w) => this.tf.transpose(w)), biases: layers.map(([, b]) => b.param as Tensor1D) };
    return { layers, params };
  }

  dispose(): void {
    this.states.clear();
  }
}
