/**
 * What the trainer sees of the machines that compute: a set of workers that each run tasks on the shared
 * training memory. The trainer plans one task per worker slot and never cares how a slot is implemented.
 */
import type { StepWorker, Task, TaskResult, WorkerInit } from './step_worker.js';

export interface WorkerSet {
  /** How many tasks of a pass the trainer should plan. */
  readonly size: number;
  /** What computes, e.g. "2 threads × onnxruntime-node 1.30.0 (cpu)". */
  readonly description: string;
  run(task: Task): Promise<TaskResult>;
  close(): Promise<void>;
}

/** --threads 1: the coordinator's own process computes everything, with no thread hop. */
export class InProcessWorkers implements WorkerSet {
  readonly size = 1;

  private constructor(private readonly worker: StepWorker) {}

  static async create(init: WorkerInit): Promise<InProcessWorkers> {
    const { StepWorker } = await import('./step_worker.js');
    return new InProcessWorkers(await StepWorker.create(init));
  }

  get description(): string {
    return `this process × ${this.worker.backend}`;
  }

  run(task: Task): Promise<TaskResult> {
    return this.worker.run(task);
  }

  async close(): Promise<void> {
    await this.worker.dispose();
  }
}
