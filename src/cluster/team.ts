/**
 * What the trainer sees of the machines that compute: a set of worker slots that each run one task of a
 * pass on the shared training memory. The trainer plans one task per slot and never cares how a slot is
 * implemented (this process alone, or with worker threads; remote machines are participants of the scheduler instead).
 */
import type { EngineCapabilities, SlotRunner, Task, TaskResult, SlotInit } from './slot_runner.js';

export interface Team {
  /** How many tasks of a pass the trainer should plan. */
  readonly size: number;
  /** What computes, e.g. "2 threads × onnxruntime-node 1.30.0 (cpu)". */
  readonly description: string;
  /** What every slot's engine can do (they all run the same engine). */
  readonly capabilities: EngineCapabilities;
  /** Runs task i on slot i, all at once; resolves when every task is done (re-run elsewhere if a slot failed). */
  runPass(tasks: Task[]): Promise<TaskResult[]>;
  close(): Promise<void>;
}

/**
 * The coordinator's own process as a worker. Calls are serialised: a slot's engine keeps scratch buffers
 * and cached parameters that two interleaved tasks must not share.
 */
export class MainSlot {
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(readonly worker: SlotRunner) {}

  static async create(init: SlotInit): Promise<MainSlot> {
    const { SlotRunner } = await import('./slot_runner.js');
    return new MainSlot(await SlotRunner.create(init));
  }

  run(task: Task): Promise<TaskResult> {
    const result = this.queue.then(() => this.worker.run(task));
    this.queue = result.catch(() => undefined);
    return result;
  }

  dispose(): Promise<void> {
    return this.worker.dispose();
  }
}

/** --threads 1: everything is computed in the coordinator's process, with no thread hop. */
export class SoloTeam implements Team {
  readonly size = 1;

  private constructor(private readonly local: MainSlot) {}

  static async create(init: SlotInit): Promise<SoloTeam> {
    return new SoloTeam(await MainSlot.create(init));
  }

  get description(): string {
    return `this process × ${this.local.worker.backend}`;
  }

  get capabilities(): EngineCapabilities {
    return this.local.worker.capabilities;
  }

  async runPass(tasks: Task[]): Promise<TaskResult[]> {
    const results: TaskResult[] = [];
    for (const task of tasks) results.push(await this.local.run(task));
    return results;
  }

  async close(): Promise<void> {
    await this.local.dispose();
  }
}
