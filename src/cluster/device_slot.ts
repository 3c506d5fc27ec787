/**
 * A slot's training state on its engine's device (Engine.deviceState, a GPU): which state the device holds,
 * whether it is ahead of the shared optimizer memory (TrainingMemory.stateOnDevice), loading it there and
 * pulling it back. SlotRunner has one only when its engine keeps a state on a device, and asks it what
 * computes each pass: the device where it can, else the host's passes on a memory made current first. The
 * device is a speed-up, not a requirement: one that cannot open its state leaves the work to the host while
 * the memory holds the state.
 */
import type { DeviceState, Engine } from '../engine/engine.js';
import type { Range } from './plan.js';
import type { OptimizerMemory } from '../optim/optimizer_memory.js';
import { deviceAhead, markDeviceAhead, markHeldHere, optimizerMemoryOf, stateKey, type TrainingMemory } from './training_memory.js';

/** The passes that read the parameters a row needs: the engine's (on setParams'), or a device's (on its own). */
export type RowPasses = Pick<Engine, 'rowPass' | 'deltasPass'>;

export class DeviceSlot {
  private readonly optimizer: OptimizerMemory;
  /** The device state could not be opened: the host's passes do the work. */
  private failed = false;

  constructor(
    private readonly memory: TrainingMemory,
    /** The engine's Engine.deviceState: opens the state on the device on first use. */
    private readonly open: () => Promise<DeviceState>,
  ) {
    this.optimizer = optimizerMemoryOf(memory);
  }

  /** Whether the device holds a newer committed state than the memory. */
  get ahead(): boolean {
    return deviceAhead(this.memory);
  }

  /** The device state, or undefined when it could not be opened while the memory holds the state. */
  async device(): Promise<DeviceState | undefined> {
    if (this.failed) return undefined;
    try {
      return await this.open();
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
    const device = await this.open();
    if (device.holds(stateKey(this.memory, step, generation))) return device;
    await this.pull(step, generation);
    return undefined;
  }

  /** The device that applies a weight pass over every unit (DeviceState.apply), for a slot alone with the memory. */
  async applier(units: readonly Range[]): Promise<DeviceState | undefined> {
    const sizes = this.memory.spec.sizes;
    if (this.memory.slots !== 1 || !units.every(([u0, u1], l) => u0 === 0 && u1 === sizes[l + 1])) return undefined;
    return this.device();
  }

  /**
   * Advances the state of (step, generation) on the device by `run` (a step, or a weight pass, and Adam),
   * which writes the next state under the name it is given: loaded there first unless the device holds it
   * already. With no layer in the bad ones it returns, the device is ahead of the memory.
   */
  async advance(device: DeviceState, step: number, generation: number, run: (next: string) => Promise<number[]>): Promise<number[]> {
    const key = stateKey(this.memory, step, generation);
    if (!device.holds(key)) {
      if (this.ahead) throw new Error(`internal: the device is ahead of the memory but does not hold the state of step ${step}`);
      await device.load(this.optimizer.stateOf(generation), key);
    }
    const bad = await run(stateKey(this.memory, step + 1, generation ^ 1));
    if (bad.length === 0) markDeviceAhead(this.memory, step, generation);
    return bad;
  }

  /**
   * The device's state of `step` into `generation`: its latest, or the one its last step started from (a
   * step the trainer refused, or a replica's state before a step it applied early). `committed`: it is the
   * committed state, which the memory then holds (a device whose latest is a refused step reloads it).
   */
  async pull(step: number, generation: number, committed = true): Promise<void> {
    await (await this.open()).read(this.optimizer.stateOf(generation), stateKey(this.memory, step, generation));
    if (committed) markHeldHere(this.memory);
  }

  /** Brings the state back when the device is ahead (before a pass that reads the memory). */
  async current(step: number, generation: number): Promise<void> {
    if (this.ahead) await this.pull(step, generation);
  }
}
