/**
 * What one worker does with the shared training memory: the row pass over some rows of the batch, the
 * weight pass (gradient reduction plus Adam) over some output units, both at once for a slot that computes
 * a whole step alone, the other deltas of rows received in compact form, and evaluation of some test rows.
 * The same code runs in the coordinator's process (--threads 1) and in every worker thread.
 */
import { createEngine } from '../engine/create.js';
import type { Engine, EngineOptions, LayerGradient } from '../engine/engine.js';
import { DeviceSlot, type RowPasses } from './device_slot.js';
import { paramLayout, type ParamLayout } from '../model/spec.js';
import { adamKernel, adamRange, adamScalars, type AdamKernel, type AdamOptions } from '../optim/adam.js';
import { OptimizerMemory } from '../optim/optimizer_memory.js';
import { unitAssignment, type Range } from './plan.js';
import { gatherBatchRows, optimizerMemoryOf, stateKey, type TrainingMemory } from './training_memory.js';

export type Task =
  /** gather: copy the rows' samples from the training set first (false when the caller already filled them). */
  | { kind: 'rows'; step: number; generation: number; batch: number; range: Range; gather?: boolean }
  /** slot: the task's place in its pass, which names the gradient scratch it may use. */
  | { kind: 'weights'; step: number; generation: number; batch: number; units: Range[]; slot: number }
  /** The whole batch on one slot: both passes, fused where the engine can (Engine.stepPass). */
  | { kind: 'step'; step: number; generation: number; batch: number }
  /** Rows whose activations and last-layer delta arrived from another worker: their other deltas. */
  | { kind: 'deltas'; step: number; generation: number; range: Range }
  | { kind: 'eval'; step: number; generation: number; range: Range }
  /**
   * The state of `step` from this slot's device (Engine.deviceState) into the optimizer memory's `generation`:
   * the committed state (the memory then holds it: the device is no longer ahead), or with `committed`
   * false the one before a step a replica applied early (the device stays ahead).
   */
  | { kind: 'pull'; step: number; generation: number; committed: boolean };

export interface EngineCapabilities {
  /** Engine.stepPass: both passes in one call. */
  wholeStep: boolean;
  /** Engine.deltasPass: rows can travel compact (activations and the last delta). */
  compactRows: boolean;
  /** Engine.deviceState: a single slot keeps the state on the device (whole steps, and shared rows where it can). */
  deviceState: boolean;
}

export interface TaskResult {
  /** Layers whose gradient (in this task's units) had a NaN or an infinity; the step must not be committed. */
  nonFiniteLayers: number[];
}

export interface SlotInit {
  memory: TrainingMemory;
  engine: EngineOptions;
  adam: AdamOptions;
  /**
   * Fault injection for tests of fault tolerance: [step, times, stall step, stall ms]. A pool thread that
   * receives the weights task of `step` exits in the middle of it, as a crashed thread would, until `times`
   * is used up; one that is handed the weights task of `stall step` sleeps `stall ms` before it claims it
   * (once), as a descheduled thread would.
   */
  faults?: Int32Array;
}

/** Test rows per engine call: bounds the scratch memory an evaluation needs. */
const EVAL_CHUNK = 2048;

export class SlotRunner {
  private readonly layout: ParamLayout;
  private readonly optimizer: OptimizerMemory;
  private readonly adam: AdamKernel;
  private loadedParams = '';
  /** The state on the engine's device, where it keeps one (a GPU); none on the CPU. */
  private readonly onDevice?: DeviceSlot;

  private constructor(
    private readonly init: SlotInit,
    private readonly engine: Engine,
  ) {
    this.layout = paramLayout(init.memory.spec);
    this.optimizer = optimizerMemoryOf(init.memory);
    this.adam = adamKernel(init.memory.optimizer);
    const open = engine.deviceState;
    if (open) this.onDevice = new DeviceSlot(init.memory, open);
  }

  static async create(init: SlotInit): Promise<SlotRunner> {
    return new SlotRunner(init, await createEngine(init.memory.spec, init.engine));
  }

  get backend(): string {
    return this.engine.backend;
  }

  /** What this slot's engine can do beyond the two passes (the step mode is chosen from it). */
  get capabilities(): EngineCapabilities {
    return { wholeStep: !!this.engine.stepPass, compactRows: !!this.engine.deltasPass, deviceState: !!this.engine.deviceState };
  }

  async run(task: Task): Promise<TaskResult> {
    switch (task.kind) {
      case 'rows':
        await this.rows(task.step, task.generation, task.batch, task.range, task.gather ?? true);
        return { nonFiniteLayers: [] };
      case 'weights':
        return { nonFiniteLayers: await this.weights(task) };
      case 'step':
        return { nonFiniteLayers: await this.wholeStep(task) };
      case 'deltas':
        await this.deltas(task.step, task.generation, task.range);
        return { nonFiniteLayers: [] };
      case 'eval':
        await this.evaluate(task.step, task.generation, task.range);
        return { nonFiniteLayers: [] };
      case 'pull':
        if (!this.onDevice) throw new Error(`internal: pull of the state of step ${task.step} from an engine without a device state`);
        await this.onDevice.pull(task.step, task.generation, task.committed);
        return { nonFiniteLayers: [] };
    }
  }

  private useParams(step: number, generation: number): void {
    const key = stateKey(this.init.memory, step, generation);
    if (this.loadedParams === key) return;
    this.engine.setParams(this.optimizer.paramsOf(generation));
    this.loadedParams = key;
  }

  /**
   * What computes rows of the state of (step, generation): the device when it is ahead and holds that state
   * (its passes read its own parameters), else the engine on this memory's parameters.
   */
  private async rowPasses(step: number, generation: number): Promise<RowPasses> {
    const device = this.onDevice?.ahead ? await this.onDevice.rowPasses(step, generation) : undefined;
    if (device) return device;
    this.useParams(step, generation);
    return this.engine;
  }

  private async rows(step: number, generation: number, batch: number, [r0, r1]: Range, gather: boolean): Promise<void> {
    if (r0 === r1) return;
    const engine = await this.rowPasses(step, generation);
    const { batch: b, spec } = this.init.memory;
    const features = spec.sizes[0];
    const classes = spec.sizes[spec.sizes.length - 1];
    if (gather) gatherBatchRows(this.init.memory, [r0, r1]);
    const rowsOf = (a: Float32Array, width: number) => a.subarray(r0 * width, r1 * width);
    await engine.rowPass(rowsOf(b.x, features), rowsOf(b.target, classes), r1 - r0, 1 / batch, {
      rowLoss: b.rowLoss.subarray(r0, r1),
      hidden: b.hidden.map((h, l) => rowsOf(h, spec.sizes[l + 1])),
      deltas: b.deltas.map((d, l) => rowsOf(d, spec.sizes[l + 1])),
    });
  }

  private async weights({ step, generation, batch, units, slot }: Extract<Task, { kind: 'weights' }>): Promise<number[]> {
    const { batch: b, spec } = this.init.memory;
    const rowsOf = (a: Float32Array, l: number) => a.subarray(0, batch * spec.sizes[l]);
    const inputs = [rowsOf(b.x, 0), ...b.hidden.map((h, l) => rowsOf(h, l + 1))];
    const deltas = b.deltas.map((d, l) => rowsOf(d, l + 1));
    if (this.onDevice) {
      const device = await this.onDevice.applier(units);
      if (device) return this.onDevice.advance(device, step, generation, (next) => device.apply(inputs, deltas, batch, adamScalars(this.init.adam, step + 1), next));
      await this.onDevice.current(step, generation);
    }
    return this.applyAdam(step, generation, await this.engine.weightPass(inputs, deltas, batch, units), units, slot);
  }

  private async wholeStep({ step, generation, batch }: Extract<Task, { kind: 'step' }>): Promise<number[]> {
    const device = this.onDevice && batch >= 2 ? await this.onDevice.device() : undefined;
    if (device) {
      // The state on the device: loaded there when it does not hold this step's (the first step, or after
      // a load here), advanced there, and left there: the memory says so until a pull.
      const { x, target, rowLoss } = this.wholeBatch(batch);
      return this.onDevice!.advance(device, step, generation, (next) => device.step(x, target, batch, rowLoss, adamScalars(this.init.adam, step + 1), next));
    }
    const units = unitAssignment(this.init.memory.spec.sizes.slice(1), 1)[0];
    // A one-row step takes the two passes (which bring the device's state back where they cannot use it).
    if (!this.engine.stepPass || batch < 2) {
      await this.rows(step, generation, batch, [0, batch], true);
      return this.weights({ kind: 'weights', step, generation, batch, units, slot: 0 });
    }
    this.useParams(step, generation);
    const { x, target, rowLoss } = this.wholeBatch(batch);
    return this.applyAdam(step, generation, await this.engine.stepPass(x, target, batch, rowLoss), units, 0);
  }

  /** The batch's samples gathered, as a whole step reads them, and where its rows' losses go. */
  private wholeBatch(batch: number): { x: Float32Array; target: Float32Array; rowLoss: Float32Array } {
    const { batch: b, spec } = this.init.memory;
    gatherBatchRows(this.init.memory, [0, batch]);
    const classes = spec.sizes[spec.sizes.length - 1];
    return { x: b.x.subarray(0, batch * spec.sizes[0]), target: b.target.subarray(0, batch * classes), rowLoss: b.rowLoss.subarray(0, batch) };
  }

  private async deltas(step: number, generation: number, [r0, r1]: Range): Promise<void> {
    if (r0 === r1) return;
    if (!this.engine.deltasPass) throw new Error(`the ${this.engine.name} engine cannot rebuild deltas of compact rows`);
    const engine = await this.rowPasses(step, generation);
    const { batch: b, spec } = this.init.memory;
    const rowsOf = (a: Float32Array, l: number) => a.subarray(r0 * spec.sizes[l + 1], r1 * spec.sizes[l + 1]);
    const last = b.deltas.length - 1;
    await engine.deltasPass!(b.hidden.map(rowsOf), rowsOf(b.deltas[last], last), r1 - r0, b.deltas.slice(0, last).map(rowsOf));
  }

  /** Adam over each layer's gradient (of units[l]); returns the layers whose gradient was not finite. */
  private applyAdam(step: number, generation: number, gradients: LayerGradient[], units: Range[], slot: number): number[] {
    const bad: number[] = [];
    const scalars = adamScalars(this.init.adam, step + 1);
    this.layout.layers.forEach(({ fanIn, weightOffset, biasOffset }, l) => {
      const u0 = units[l][0];
      const g = gradients[l];
      const badWeight = adamRange(this.adam, this.optimizer, slot, generation, weightOffset + u0 * fanIn, g.weight, scalars);
      const badBias = adamRange(this.adam, this.optimizer, slot, generation, biasOffset + u0, g.bias, scalars);
      if (badWeight || badBias) bad.push(l);
    });
    return bad;
  }

  private async evaluate(step: number, generation: number, [r0, r1]: Range): Promise<void> {
    if (r0 === r1) return;
    await this.onDevice?.current(step, generation);
    this.useParams(step, generation);
    const { test, evalLoss, evalPredicted, spec } = this.init.memory;
    const features = spec.sizes[0];
    const classes = spec.sizes[spec.sizes.length - 1];
    for (let a = r0; a < r1; a += EVAL_CHUNK) {
      const e = Math.min(r1, a + EVAL_CHUNK);
      await this.engine.evaluate(test.images.subarray(a * features, e * features), test.targets.subarray(a * classes, e * classes), e - a, {
        rowLoss: evalLoss.subarray(a, e),
        predicted: evalPredicted.subarray(a, e),
      });
    }
  }

  async dispose(): Promise<void> {
    await this.engine.dispose();
  }
}
