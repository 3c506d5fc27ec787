/**
 * The training state on the GPU (Engine.deviceState for onnxruntime's WebGPU provider): parameters and
 * Adam's moments live in device tensors that each whole step (the train graph: forward, backward and Adam)
 * reads and replaces, so no parameter crosses to the host between steps; only the rows' losses and one
 * finiteness sum per layer come back. Through onnxruntime-node's binding, whose sessions can keep outputs
 * on the device (preferredOutputLocation 'gpu-buffer') and take such outputs as inputs, also of another
 * session: that is how the state is uploaded and downloaded, by a copy graph run each way (the binding
 * cannot read a device tensor's data itself).
 */
import type * as Ort from 'onnxruntime-node';
import { paramLayout, type ModelSpec } from '../../model/spec.js';
import { ADAM_SCALARS, type AdamScalars } from '../../optim/adam.js';
import type { DeviceState, RowOutputs, StateTensors } from '../engine.js';
import type { GpuTurns } from '../webgpu/turns.js';
import { HeldStates } from '../held_states.js';
import { PlainViews } from './binding_runner.js';
import { adamInputName, biasName, buildApplyGraph, buildCopyGraph, buildTrainGraph, firstMomentName, nextName, secondMomentName, weightName, type GraphOptions } from './graph.js';

type OrtModule = typeof Ort;

/** Opens a session on the GPU with the project's options (runner.ts SESSION_OPTIONS), taking the device's turn. */
export type OpenSession = (model: Uint8Array, extra?: Ort.InferenceSession.SessionOptions) => Promise<Ort.InferenceSession>;

/** The engine's passes, run on parameters that are device tensors (OnnxEngine's, so their bits). */
export interface DevicePasses {
  rowPassWith(params: Record<string, Ort.Tensor>, x: Float32Array, target: Float32Array, rows: number, invBatch: number, out: RowOutputs): Promise<void>;
  deltasPassWith(params: Record<string, Ort.Tensor>, hidden: Float32Array[], last: Float32Array, rows: number, deltas: Float32Array[]): Promise<void>;
}

/** One tensor of the state: its graph name, which of the three arrays it is in, where, and its shape. */
interface StatePart {
  name: string;
  array: keyof StateTensors;
  offset: number;
  dims: number[];
}

/** Every tensor of the state: each layer's W and b, then their first and second moments. */
function stateParts(spec: ModelSpec): StatePart[] {
  const params = paramLayout(spec).layers.flatMap(({ fanIn, fanOut, weightOffset, biasOffset }, l) => [
    { name: weightName(l), offset: weightOffset, dims: [fanOut, fanIn] },
    { name: biasName(l), offset: biasOffset, dims: [fanOut] },
  ]);
  return [
    ...params.map((p) => ({ ...p, array: 'params' as const })),
    ...params.map((p) => ({ ...p, name: firstMomentName(p.name), array: 'm' as const })),
    ...params.map((p) => ({ ...p, name: secondMomentName(p.name), array: 'v' as const })),
  ];
}

const size = (dims: number[]) => dims.reduce((a, b) => a * b, 1);

/** The next state's outputs stay on the device (the rest, losses and finiteness sums, come to the CPU). */
function nextOnDevice(parts: StatePart[]): Record<string, 'gpu-buffer'> {
  return Object.fromEntries(parts.map((p) => [nextName(p.name), 'gpu-buffer' as const]));
}

/** A state on the device: its tensors by graph name, and the parameters among them (what the row passes read). */
interface Held {
  tensors: Record<string, Ort.Tensor>;
  params: Record<string, Ort.Tensor>;
}

export class ResidentState implements DeviceState {
  private readonly states = new HeldStates<Held>((held) => Object.values(held.tensors).forEach((t) => t.dispose()));
  private readonly plain = new PlainViews();
  private readonly scalars: Record<string, Ort.Tensor>;

  /** The train and apply graphs' sessions (session()): a slot needs one of them. */
  private readonly lazy = new Map<'train' | 'apply', Promise<Ort.InferenceSession>>();

  private constructor(
    private readonly ort: OrtModule,
    private readonly spec: ModelSpec,
    private readonly graphOptions: GraphOptions,
    private readonly parts: StatePart[],
    private readonly sessions: { upload: Ort.InferenceSession; download: Ort.InferenceSession },
    private readonly passes: DevicePasses,
    private readonly open: OpenSession,
    private readonly turns?: GpuTurns,
  ) {
    this.scalars = Object.fromEntries(ADAM_SCALARS.map((scalar) => [adamInputName(scalar), new ort.Tensor('float32', new Float32Array(1), [1])]));
  }

  static async open(ort: OrtModule, spec: ModelSpec, graphOptions: GraphOptions, passes: DevicePasses, open: OpenSession, turns?: GpuTurns): Promise<ResidentState> {
    const parts = stateParts(spec);
    const copyGraph = buildCopyGraph(parts);
    const opened = await Promise.allSettled([open(copyGraph, { preferredOutputLocation: 'gpu-buffer' }), open(copyGraph, { preferredOutputLocation: 'cpu' })]);
    const failed = opened.find((o) => o.status === 'rejected');
    if (failed) {
      // The sessions that did open are released: the caller may try again.
      await Promise.all(opened.map((o) => (o.status === 'fulfilled' ? o.value.release() : undefined)));
      throw (failed as PromiseRejectedResult).reason;
    }
    const [upload, download] = opened.map((o) => (o as PromiseFulfilledResult<Ort.InferenceSession>).value);
    return new ResidentState(ort, spec, graphOptions, parts, { upload, download }, passes, open, turns);
  }

  /** A session of its own graph for whole steps (train) or shared rows (apply), opened on first use. */
  private session(name: 'train' | 'apply'): Promise<Ort.InferenceSession> {
    let session = this.lazy.get(name);
    if (!session) {
      const model = name === 'train' ? buildTrainGraph(this.spec, this.graphOptions) : buildApplyGraph(this.spec);
      // A failed opening is not kept: the next call tries again.
      session = this.open(model, { preferredOutputLocation: nextOnDevice(this.parts) }).catch((e: Error) => (this.lazy.delete(name), Promise.reject(e)));
      this.lazy.set(name, session);
    }
    return session;
  }

  private run<T>(work: () => Promise<T>): Promise<T> {
    return this.turns ? this.turns.take(work) : work();
  }

  holds(key: string): boolean {
    return this.states.holds(key);
  }

  /** A state of these tensors (from a session's outputs named by `nameOf`). */
  private heldOf(out: Ort.InferenceSession.ReturnType, nameOf: (name: string) => string): Held {
    const tensors = Object.fromEntries(this.parts.map(({ name }) => [name, out[nameOf(name)]]));
    const params = Object.fromEntries(this.parts.filter((p) => p.array === 'params').map(({ name }) => [name, tensors[name]]));
    return { tensors, params };
  }

  async load(state: StateTensors, key: string): Promise<void> {
    const feeds: Record<string, Ort.Tensor> = {};
    for (const { name, array, offset, dims } of this.parts) {
      const data = this.plain.of(`in_${name}`, state[array].subarray(offset, offset + size(dims)));
      feeds[`in_${name}`] = new this.ort.Tensor('float32', data, dims);
    }
    const copied = await this.run(() => this.sessions.upload.run(feeds));
    this.states.loaded(this.heldOf(copied, (name) => `out_${name}`), key);
  }

  async step(x: Float32Array, target: Float32Array, rows: number, rowLoss: Float32Array, adam: AdamScalars, nextKey: string): Promise<number[]> {
    if (rows < 2) throw new RangeError('DeviceState.step needs at least 2 rows');
    const features = this.spec.sizes[0];
    const classes = this.spec.sizes[this.spec.sizes.length - 1];
    const feeds = {
      x: new this.ort.Tensor('float32', this.plain.of('x', x.subarray(0, rows * features)), [rows, features]),
      target: new this.ort.Tensor('float32', this.plain.of('target', target.subarray(0, rows * classes)), [rows, classes]),
      scale: new this.ort.Tensor('float32', Float32Array.of(1 / rows), [1]),
    };
    return this.advanceBy('step', await this.session('train'), feeds, adam, nextKey, (out) => rowLoss.set(out.rowLoss.data as Float32Array));
  }

  async apply(inputs: Float32Array[], deltas: Float32Array[], batch: number, adam: AdamScalars, nextKey: string): Promise<number[]> {
    const feeds: Record<string, Ort.Tensor> = {};
    this.spec.sizes.slice(0, -1).forEach((fanIn, l) => {
      const fanOut = this.spec.sizes[l + 1];
      feeds[`a${l}`] = new this.ort.Tensor('float32', this.plain.of(`a${l}`, inputs[l].subarray(0, batch * fanIn)), [batch, fanIn]);
      feeds[`d${l}`] = new this.ort.Tensor('float32', this.plain.of(`d${l}`, deltas[l].subarray(0, batch * fanOut)), [batch, fanOut]);
    });
    return this.advanceBy('apply', await this.session('apply'), feeds, adam, nextKey);
  }

  /**
   * Runs a session that advances the latest state (train or apply): the next state becomes the latest
   * unless a layer's gradient was not finite (those layers are returned, and the outputs dropped).
   */
  private async advanceBy(
    what: string,
    session: Ort.InferenceSession,
    feeds: Record<string, Ort.Tensor>,
    adam: AdamScalars,
    nextKey: string,
    read?: (out: Ort.InferenceSession.ReturnType) => void,
  ): Promise<number[]> {
    const from = this.states.current(what);
    for (const scalar of ADAM_SCALARS) (this.scalars[adamInputName(scalar)].data as Float32Array)[0] = adam[scalar];
    const out = await this.run(() => session.run({ ...from.tensors, ...this.scalars, ...feeds }));
    const next = this.heldOf(out, nextName);
    try {
      read?.(out);
    } catch (e) {
      Object.values(next.tensors).forEach((t) => t.dispose());
      throw e;
    }
    const layers = this.spec.sizes.length - 1;
    const bad = Array.from({ length: layers }, (_, l) => l).filter((l) => !Number.isFinite((out[`bad${l}`].data as Float32Array)[0]));
    if (bad.length > 0) {
      // The latest state stays the last good one: the step's outputs are dropped.
      Object.values(next.tensors).forEach((t) => t.dispose());
      return bad;
    }
    this.states.stepped(next, nextKey);
    return [];
  }

  rowPass(x: Float32Array, target: Float32Array, rows: number, invBatch: number, out: RowOutputs): Promise<void> {
    return this.passes.rowPassWith(this.states.current('rowPass').params, x, target, rows, invBatch, out);
  }

  deltasPass(hidden: Float32Array[], last: Float32Array, rows: number, deltas: Float32Array[]): Promise<void> {
    return this.passes.deltasPassWith(this.states.current('deltasPass').params, hidden, last, rows, deltas);
  }

  async read(into: StateTensors, key: string): Promise<void> {
    const { tensors } = this.states.find(key);
    const feeds = Object.fromEntries(Object.entries(tensors).map(([name, tensor]) => [`in_${name}`, tensor]));
    const copied = await this.run(() => this.sessions.download.run(feeds));
    for (const { name, array, offset } of this.parts) into[array].set(copied[`out_${name}`].data as Float32Array, offset);
  }

  async dispose(): Promise<void> {
    this.states.clear();
    const lazy = await Promise.all([...this.lazy.values()].map((p) => p.catch(() => undefined)));
    await Promise.all([...Object.values(this.sessions), ...lazy.filter((s) => s !== undefined)].map((s) => s!.release()));
  }
}
