/**
 * The one interface behind which a worker computes. A training step is split in two passes so that the
 * result does not depend on how the batch is spread over workers (see cluster/plan.ts):
 *
 * - rowPass:    for some rows of the batch, the forward activations, the per-row loss and the backward
 *               deltas. Row-local: the same numbers for a row whichever call computes it.
 * - weightPass: for every layer and a range of its output units, the weight and bias gradient summed
 *               over the whole batch in one fixed reduction.
 * - stepPass:   (optional) both at once, for a slot that computes a whole step alone.
 * - deltasPass: (optional) the row pass's backward part, for rows received in compact form.
 *
 * Arrays passed in may live in SharedArrayBuffers; an engine copies what its runtime cannot read in place.
 */
import type { AdamScalars } from '../optim/adam.js';
import type { WebGpuAdapter } from './webgpu/adapter.js';

export const ENGINES = ['onnx', 'tfjs'] as const;
export type EngineName = (typeof ENGINES)[number];
/** webgpu: onnx's WebGPU provider (Vulkan on Linux); cuda: onnx's CUDA build; gpu: tfjs-node-gpu. */
export const DEVICES = ['cpu', 'webgpu', 'cuda', 'gpu'] as const;
export type Device = (typeof DEVICES)[number];

export interface RowOutputs {
  /** rows: each row's cross-entropy loss. */
  rowLoss: Float32Array;
  /** For each hidden layer, rows × width activations. */
  hidden: Float32Array[];
  /** For each layer, rows × fanOut gradients of the batch-mean loss with respect to the layer's output. */
  deltas: Float32Array[];
}

export interface LayerGradient {
  weight: Float32Array;
  bias: Float32Array;
}

export interface EvalOutputs {
  rowLoss: Float32Array;
  predicted: Int32Array;
}

export interface Engine {
  readonly name: EngineName;
  /** What actually runs, e.g. "onnxruntime-node 1.30.0 (cpu)" or "tfjs 4.22.0 (wasm)". */
  readonly backend: string;
  /** Parameters for the next rowPass and evaluate calls (the engine keeps its own copy). */
  setParams(params: Float32Array): void;
  rowPass(x: Float32Array, target: Float32Array, rows: number, invBatch: number, out: RowOutputs): Promise<void>;
  /**
   * For every layer l, the gradient of W_l[units_l] ([units × fanIn], row-major) and b_l[units_l], from the
   * layer's input a_l (batch × fanIn) and delta d_l (batch × fanOut); valid until the next call.
   */
  weightPass(inputs: Float32Array[], deltas: Float32Array[], batch: number, units: readonly (readonly [number, number])[]): Promise<LayerGradient[]>;
  /**
   * Optional: rowPass over all `rows` (at least 2) and weightPass over every unit in one call, with the
   * same bits as the two passes (the loss goes to rowLoss; activations and deltas are not returned).
   * An engine that has it saves the hand-over between the passes when one slot computes a whole step.
   */
  stepPass?(x: Float32Array, target: Float32Array, rows: number, rowLoss: Float32Array): Promise<LayerGradient[]>;
  /**
   * Optional: for rows whose activations (hidden) and last-layer delta are known, every other layer's
   * delta into `deltas` (all but the last), with the bits rowPass gives them. Lets rows travel between
   * remote workers in compact form (activations and the last delta: half the bytes).
   */
  deltasPass?(hidden: Float32Array[], last: Float32Array, rows: number, deltas: Float32Array[]): Promise<void>;
  evaluate(x: Float32Array, target: Float32Array, rows: number, out: EvalOutputs): Promise<void>;
  /**
   * Optional (a GPU): the training state kept on the device between steps, Adam applied there (see
   * DeviceState), opened on first call. A single slot uses it for whole steps instead of stepPass, and for
   * shared rows where the device can (its optional passes).
   */
  deviceState?(): Promise<DeviceState>;
  dispose(): Promise<void>;
}

/** Parameters and Adam's moments, flat in the parameter layout (model/spec.ts). */
export interface StateTensors {
  params: Float32Array;
  m: Float32Array;
  v: Float32Array;
}

/**
 * The state on a device: uploaded once (load), advanced by steps that run forward, backward and Adam
 * there and bring back only the rows' losses, and downloaded when the host needs it (read). Each state it
 * holds is named by a key the caller chooses, so the caller knows whether it still holds the one wanted.
 * The state a step (or apply) started from is kept until the next one or a load: a step the caller then refuses (its
 * loss was not finite) can still be read back.
 */
export interface DeviceState {
  /** Whether the device's latest state is the one named `key` (the one the next step starts from). */
  holds(key: string): boolean;
  load(state: StateTensors, key: string): Promise<void>;
  /**
   * A whole step over `rows` rows (at least 2) from the latest state: the loss of each row into rowLoss; the
   * device's latest state is then the next one, named `nextKey`, unless a layer's gradient was not finite:
   * those layers are returned, and the latest state stays as it was.
   */
  step(x: Float32Array, target: Float32Array, rows: number, rowLoss: Float32Array, adam: AdamScalars, nextKey: string): Promise<number[]>;
  /** The state named `key`, the latest or the one the last step started from, into the host's arrays. */
  read(into: StateTensors, key: string): Promise<void>;
  /**
   * For a slot whose steps are not whole (a remote replica, or rows shared with remote workers): the row
   * pass (and, where the engine has one, the compact rows' deltas pass) with the latest state's parameters,
   * with the engine's bits, and the weight pass over every unit of the rows given followed by Adam, from the
   * latest state (as step() for what it returns and holds).
   */
  rowPass(x: Float32Array, target: Float32Array, rows: number, invBatch: number, out: RowOutputs): Promise<void>;
  deltasPass?(hidden: Float32Array[], last: Float32Array, rows: number, deltas: Float32Array[]): Promise<void>;
  apply(inputs: Float32Array[], deltas: Float32Array[], batch: number, adam: AdamScalars, nextKey: string): Promise<number[]>;
}

export interface EngineOptions {
  engine: EngineName;
  device: Device;
  /** --allow-software-gpu: a software WebGPU adapter (lavapipe) is refused without it. */
  allowSoftwareGpu?: boolean;
  /** Set by prepareEngine for --device webgpu: the adapter, and the word its sessions take turns by (webgpu/turns.ts). */
  webgpu?: { adapter: WebGpuAdapter; turns: Int32Array };
}
