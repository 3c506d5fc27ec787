/**
 * What the hub sends that is built out of the training memory: the samples of a rows request (pixels, or
 * only dataset indices for a worker with its own copy of the data) and the parts of an update (batch rows
 * a worker lacks, with their samples, activations and deltas). Kept apart so that the hub deals in
 * connections and requests, and this file alone knows the batch buffers' layout.
 */
import type { Range } from '../plan.js';
import type { TrainingMemory } from '../training_memory.js';
import type { UpdatePart } from './messages.js';

/**
 * The rows' samples (dataset indices given): pixels, or just the indices when the worker has the data.
 * Every worker of a step is sent the same batch: its labels and pixels are built once per batch (the
 * last one asked for, by identity) and the encoding of each request copies them.
 */
export class RowsInputs {
  private samples?: Int32Array;
  private labels = new Uint8Array(0);
  private x?: Float32Array;

  constructor(private readonly memory: TrainingMemory) {}

  of(samples: Int32Array, useLocalData: boolean): { x?: Float32Array; index?: Int32Array; labels: Uint8Array } {
    const { train, spec } = this.memory;
    const classes = spec.sizes[spec.sizes.length - 1];
    if (samples !== this.samples) {
      this.samples = samples;
      this.x = undefined;
      this.labels = new Uint8Array(samples.length);
      samples.forEach((i, r) => (this.labels[r] = train.targets.subarray(i * classes, (i + 1) * classes).indexOf(1)));
    }
    if (useLocalData) return { index: samples, labels: this.labels };
    if (!this.x) {
      const features = spec.sizes[0];
      const x = (this.x = new Float32Array(samples.length * features));
      samples.forEach((i, r) => x.set(train.images.subarray(i * features, (i + 1) * features), r * features));
    }
    return { x: this.x, labels: this.labels };
  }
}

/**
 * Batch rows [r0, r1) as an update part, views into the batch buffers; compact: only the last delta
 * (the coordinator holds only that of rows that came compact).
 */
export function updatePart(memory: TrainingMemory, [r0, r1]: Range, compact: boolean): UpdatePart {
  const { batch: b, spec } = memory;
  const sizes = spec.sizes;
  const last = b.deltas.length - 1;
  return {
    range: [r0, r1],
    x: b.x.subarray(r0 * sizes[0], r1 * sizes[0]),
    hidden: b.hidden.map((h, l) => h.subarray(r0 * sizes[l + 1], r1 * sizes[l + 1])),
    deltas: b.deltas.flatMap((d, l) => (compact && l < last ? [] : [d.subarray(r0 * sizes[l + 1], r1 * sizes[l + 1])])),
  };
}
