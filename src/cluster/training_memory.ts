/**
 * Everything workers share with the coordinator, allocated once per run: the optimizer memory, the batch
 * buffers the two passes of a step exchange through, the datasets and the evaluation outputs. It is plain
 * typed arrays over SharedArrayBuffers (and one shared wasm memory), so it can be handed to worker threads
 * as is: nothing in it is ever serialised.
 */
import type { Dataset } from '../data/datasets.js';
import { hiddenSizes, paramLayout, type ModelSpec } from '../model/spec.js';
import { OptimizerMemory } from '../optim/optimizer_memory.js';

export interface BatchBuffers {
  /** Dataset row of each batch row. */
  index: Int32Array;
  x: Float32Array;
  target: Float32Array;
  rowLoss: Float32Array;
  hidden: Float32Array[];
  deltas: Float32Array[];
}

export interface SplitBuffers {
  count: number;
  images: Float32Array;
  targets: Float32Array;
}

export interface TrainingMemory {
  spec: ModelSpec;
  batchSize: number;
  /** Compute slots (local threads) that share it; above 1 everything is in shared memory. */
  slots: number;
  optimizer: WebAssembly.Memory;
  batch: BatchBuffers;
  train: SplitBuffers;
  test: SplitBuffers;
  evalLoss: Float32Array;
  evalPredicted: Int32Array;
  /**
   * How many times a state was loaded into the optimizer memory (TrainingState.load): a slot that cached
   * its engine's parameters for a step and generation must reload them when this moves (a replica
   * resynchronised at the same step).
   */
  stateLoads: Int32Array;
  /**
   * 1 while the committed state is newer on a slot's device than here (Engine.deviceState: steps on a
   * GPU), until that slot's 'pull' task brings it back; TrainingState refuses to be read meanwhile.
   */
  stateOnDevice: Int32Array;
  /**
   * [step, generation] of the state a slot's device started from when it last went ahead of this memory,
   * which the memory still holds (device steps never write it): what is left when that device fails
   * (TrainingState.fallBackToHost).
   */
  hostState: Int32Array;
}

/** Whether a slot's device holds a newer committed state than the memory (stateOnDevice). */
export function deviceAhead(memory: TrainingMemory): boolean {
  return Atomics.load(memory.stateOnDevice, 0) === 1;
}

/**
 * A slot's device has advanced the state of (step, generation), which the memory holds, past the memory's:
 * that state is recorded as what is left if the device fails, the first time the device goes ahead.
 */
export function markDeviceAhead(memory: TrainingMemory, step: number, generation: number): void {
  if (deviceAhead(memory)) return;
  memory.hostState[0] = step;
  memory.hostState[1] = generation;
  Atomics.store(memory.stateOnDevice, 0, 1);
}

/** The memory holds the committed state (loaded here, or pulled back from the device): no device is ahead of it. */
export function markHeldHere(memory: TrainingMemory): void {
  Atomics.store(memory.stateOnDevice, 0, 0);
}

/**
 * What names the state of `step` in `generation` as loaded into the memory (TrainingState.load moves
 * stateLoads): an engine's parameters, or a device's state, are that state only under the same name.
 */
export function stateKey(memory: TrainingMemory, step: number, generation: number): string {
  return `${step}/${generation}/${Atomics.load(memory.stateLoads, 0)}`;
}

/**
 * `slots`: the local compute threads that will use it. A single thread gets plain buffers, which
 * onnxruntime-node's binding reads in place (it refuses SharedArrayBuffers: without the native addon,
 * threads pay a copy of what they feed it; see src/engine/onnx/binding_runner.ts).
 */
export function createTrainingMemory(spec: ModelSpec, dataset: Dataset, batchSize: number, slots: number): TrainingMemory {
  const shared = slots > 1;
  const features = spec.sizes[0];
  const classes = spec.sizes[spec.sizes.length - 1];
  const buffer = (bytes: number) => (shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes));
  const f32 = (n: number) => new Float32Array(buffer(4 * n));
  return {
    spec,
    batchSize,
    slots,
    optimizer: OptimizerMemory.allocate(paramLayout(spec).total, shared, slots).memory,
    batch: {
      index: new Int32Array(buffer(4 * batchSize)),
      x: f32(batchSize * features),
      target: f32(batchSize * classes),
      rowLoss: f32(batchSize),
      hidden: hiddenSizes(spec).map((n) => f32(batchSize * n)),
      deltas: spec.sizes.slice(1).map((n) => f32(batchSize * n)),
    },
    train: { count: dataset.train.count, images: dataset.train.images, targets: dataset.train.targets },
    test: { count: dataset.test.count, images: dataset.test.images, targets: dataset.test.targets },
    evalLoss: f32(dataset.test.count),
    evalPredicted: new Int32Array(buffer(4 * dataset.test.count)),
    stateLoads: new Int32Array(buffer(4)),
    stateOnDevice: new Int32Array(buffer(4)),
    hostState: new Int32Array(buffer(8)),
  };
}

/**
 * Copies the training samples of batch rows [r0, r1) (named by batch.index) into the batch's pixel
 * buffer, and their one-hot targets too unless `pixelsOnly`.
 */
export function gatherBatchRows(memory: TrainingMemory, [r0, r1]: readonly [number, number], pixelsOnly = false): void {
  const { batch: b, train, spec } = memory;
  const features = spec.sizes[0];
  const classes = spec.sizes[spec.sizes.length - 1];
  for (let r = r0; r < r1; r++) {
    const i = b.index[r];
    b.x.set(train.images.subarray(i * features, (i + 1) * features), r * features);
    if (!pixelsOnly) b.target.set(train.targets.subarray(i * classes, (i + 1) * classes), r * classes);
  }
}

export function optimizerMemoryOf(memory: TrainingMemory): OptimizerMemory {
  return new OptimizerMemory(paramLayout(memory.spec).total, memory.optimizer, memory.slots);
}

/**
 * Copies rows from batch row r0 on into the batch's activation and delta buffers. Compact rows (see
 * RowsMessage.compact) bring only the last layer's delta; returns true when the other deltas are still
 * to be rebuilt (Engine.deltasPass).
 */
export function placeBatchRows(memory: TrainingMemory, r0: number, hidden: Float32Array[], deltas: Float32Array[]): boolean {
  const { batch: b, spec } = memory;
  hidden.forEach((h, l) => b.hidden[l].set(h, r0 * spec.sizes[l + 1]));
  const first = b.deltas.length - deltas.length;
  deltas.forEach((d, k) => b.deltas[first + k].set(d, r0 * spec.sizes[first + k + 1]));
  return first > 0;
}
