/**
 * The one owner of the training state: parameters and Adam's moments (double-buffered in the optimizer
 * memory), the generation that holds the committed state, and the step. Everything that reads, loads or
 * advances the state goes through it — the trainer, a remote worker's replica, checkpoints — so the
 * generation flip and the weight tasks that produce the next generation are written once.
 *
 * Step t reads generation g and its weight pass writes g ^ 1; commit() then makes g ^ 1 the committed
 * one. A step that is not committed (a non-finite gradient) leaves the last good state where it was.
 */
import type { ModelSpec } from '../model/spec.js';
import type { OptimizerMemory } from '../optim/optimizer_memory.js';
import { splitUnits, unitAssignment, type Range } from './plan.js';
import type { Task } from './slot_runner.js';
import type { StateTensors } from '../engine/engine.js';
import { deviceAhead, markHeldHere, optimizerMemoryOf, type TrainingMemory } from './training_memory.js';

/** Parameters and Adam's moments, flat in the parameter layout (the engine's StateTensors). */
export type StateArrays = StateTensors;

/** The committed state at a step: views of the optimizer memory (copy them to keep them). */
export interface StateSnapshot extends StateArrays {
  step: number;
  generation: number;
}

export class TrainingState {
  readonly spec: ModelSpec;
  private readonly optimizer: OptimizerMemory;
  /** The generation (0 or 1) that holds the committed state. */
  generation = 0;
  step = 0;

  constructor(private readonly memory: TrainingMemory) {
    this.spec = memory.spec;
    this.optimizer = optimizerMemoryOf(memory);
  }

  /** Parameters of the committed state. */
  get params(): Float32Array {
    this.guard(this.generation);
    return this.optimizer.paramsOf(this.generation);
  }

  /** Whether a slot's device holds a newer committed state than this memory (see TrainingMemory.stateOnDevice). */
  get onDevice(): boolean {
    return deviceAhead(this.memory);
  }

  /**
   * The arrays of a generation (the committed one by default). The committed one may not be read while a
   * device holds a newer state: a read there would get an old state without a word.
   */
  arrays(generation = this.generation): StateArrays {
    this.guard(generation);
    return this.optimizer.stateOf(generation);
  }

  private guard(generation: number): void {
    if (generation === this.generation && this.onDevice) throw new Error(`internal: the state of step ${this.step} was read here while a device holds it (pull it first)`);
  }

  snapshot(): StateSnapshot {
    return { step: this.step, generation: this.generation, ...this.arrays() };
  }

  /** Makes the given arrays the committed state of `step` (in `generation`, by default the current one). */
  load(arrays: StateArrays, step: number, generation = this.generation): void {
    this.generation = generation & 1;
    this.step = step;
    const into = this.optimizer.stateOf(this.generation);
    into.params.set(arrays.params);
    into.m.set(arrays.m);
    into.v.set(arrays.v);
    Atomics.add(this.memory.stateLoads, 0, 1);
    // What is loaded here is the state now: a device's is older.
    markHeldHere(this.memory);
  }

  /**
   * The device that held the committed state failed before giving it back: the state becomes the last one
   * this memory held (TrainingMemory.hostState: device steps never write the memory). Returns its step.
   */
  fallBackToHost(): number {
    markHeldHere(this.memory);
    [this.step, this.generation] = this.memory.hostState;
    return this.step;
  }

  /**
   * The weight pass of the current step on `slots` local slots: each reduces the gradient of its share of
   * every layer's output units over the batch's rows and applies Adam to it, into the next generation.
   * `within`: only these units of each layer (a participant's share of a sharded weight pass).
   */
  weightTasks(batch: number, slots: number, within?: readonly Range[]): Task[] {
    const units = within ? splitUnits(within, slots) : unitAssignment(this.spec.sizes.slice(1), slots);
    return units.map((u, slot) => ({ kind: 'weights', step: this.step, generation: this.generation, batch, units: u, slot }));
  }

  /**
   * The next generation (written by the current step's weight pass, or only counted here when remote
   * replicas applied the step) becomes the committed state.
   */
  commit(): void {
    this.generation ^= 1;
    this.step++;
  }

  /**
   * Goes back `steps` steps, to a state this memory still holds because those steps were only counted
   * here, not applied (remote replicas applied them): the generation flips back with the count.
   */
  rewind(steps: number): void {
    this.step -= steps;
    this.generation ^= steps & 1;
  }
}
