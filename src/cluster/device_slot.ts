/**
 * A slot's training state on its engine's device (Engine.deviceState, a GPU): which state the device holds,
 * whether it is ahead of the shared optimizer memory (TrainingMemory.stateOnDevice), loading it there and
 * pulling it back. SlotRunner asks it what computes each pass: the device where it can, else the host's
 * passes on a memory made current first. The device is a speed-up, not a requirement: one that cannot open
 * its state leaves the work to the host while the memory holds the state.
 */
import type { DeviceState, Engine } from '../engine/engine.js';
import type { OptimizerMemory } from '../optim/optimizer_memory.js';
import { deviceAhead, markDeviceAhead, markHeldHere, optimizerMemoryOf, type TrainingMemory } from './training_memory.js';

/** The passes that read the parameters a row needs: the engine's (on setParams'), or a device's (on its own). */
export type RowPasses = Pick<Engine, 'rowPass' | 'deltasPass'>;

export class DeviceSlot {
  private readonly optimizer: OptimizerMemory;
  /** The device state could not be opened: the host's passes do the work. */
  private failed = false;

  constructor(
    private readonly memory: TrainingMemory,
    private readonly engine: Engine,
  ) {
    this.optimizer = optimizerMemoryOf(memory);
  }

  /** What names the state of `step` in `generation` as loaded here (TrainingState.load moves stateLoads). */
  key(step: number, generation: number): string {
    return `${step}/${generation}/${Atomics.load(this.memory.stateLoads, 0)}`;
  }

  /** Whether the device holds a newer committed state than the memory. */
  get ahead(): boolean {
    return deviceAhead(this.memory);
  }

  /**
   * The engine's device state, or undefined when it has none or it could not be opened while the memory
   * holds the state.
   */
  async device(): Promise<DeviceState | undefined> {
    if (!this.engine.deviceState || this.failed) return undefined;
    try {
      return await this.engine.deviceState();
    } catch (e) {
      if (this.ahead) throw e;
      this.failed = true;
      process.emitWarning(`dtrain: the state stays on the host: the device could not keep it (${(e as Error).message})`);
      return undefined;
    }
  }

  /**
   * The device's passes for rows of the state of (step, generation), when it is ahead and holds that state;
   * undefined when the host's passes are to compute them (the memory then holds the state: pulled if need be).
   */
  async rowPasses(step: number, generation: number): Promise<RowPasses | undefined> {
    if (!this.ahead) return undefined;
    const device = await this.engine.deviceState!();
    if (device.holds(this.key(step, generation))) return device;
    await this.pull(step, generation);
    return undefined;
  }

  /** The device that applies a weight pass over every unit (DeviceState.apply), for a slot alone with the memory. */
  async applier(allUnits: boolean): Promise<DeviceState | undefined> {
    if (this.memory.slots !== 1 || !allUnits) return undefined;
    return this.device();
  }

  /** Makes the device hold the state of (step, generation): loaded from the memory unless it holds it already. */
  async hold(device: DeviceState, step: number, generation: number): Promise<void> {
    const key = this.key(step, generation);
    if (device.holds(key)) return;
    if (this.ahead) throw new Error(`internal: the device is ahead of the memory but does not hold the state of step ${step}`);
    await device.load(this.optimizer.stateOf(generation), key);
  }

  /** After the device advanced the state (no layer in `bad`): the memory says the device is ahead. */
  advanced(bad: number[]): number[] {
    if (bad.length === 0) markDeviceAhead(this.memory);
    return bad;
  }

  /**
   * The device's state of `step` into `generation`: its latest, or the one its last step started from (a
   * step the trainer refused, or a replica's state before a step it applied early). `committed`: it is the
   * committed state, which the memory then holds (a device whose latest is a refused step reloads it).
   */
  async pull(step: number, generation: number, committed = true): Promise<void> {
    if (!this.engine.deviceState) throw new Error(`internal: pull of the state of step ${step} from an engine without a device state`);
    await (await this.engine.deviceState()).read(this.optimizer.stateOf(generation), this.key(step, generation));
    if (committed) markHeldHere(this.memory, step, generation);
  }

  /** Brings the state back when the device is ahead (before a pass that reads the memory). */
  async current(step: number, generation: number): Promise<void> {
    if (this.ahead) await this.pull(step, generation);
  }
}
