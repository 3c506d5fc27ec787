/**
 * Local worker threads: the coordinator's main thread computes slot 0 itself and a piscina pool of
 * threads - 1 worker threads computes the others, so N threads keep exactly N cores busy and half of the
 * task hand-offs disappear. Tasks are idempotent (a step reads generation g and writes g + 1), so a task
 * whose thread threw or died is run again, on another pool thread (piscina replaces a dead one) or, if the
 * pool keeps failing, in the main thread, with the same result.
 */
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import type { Task, TaskResult, WorkerInit } from './step_worker.js';
import { LocalWorker, type WorkerSet } from './workers.js';

/** The compiled worker file; under vitest (which runs src/*.ts) the build in dist/ next to it. */
export function threadWorkerFile(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.ts')) return here.replace(/[/\\]src[/\\]cluster[/\\]threads\.ts$/, '/dist/src/cluster/thread_worker.js');
  return here.replace(/threads\.js$/, 'thread_worker.js');
}

export interface ThreadOptions {
  /** Compute threads in all, the coordinator's main thread included (at least 2). */
  threads: number;
  /** Attempts of a task on the pool before the main thread computes it. */
  poolAttempts?: number;
}

export class ThreadWorkers implements WorkerSet {
  /** Tasks run again after their thread threw or died. */
  retries = 0;

  private constructor(
    private readonly local: LocalWorker,
    private readonly pool: Piscina,
    readonly size: number,
    private readonly poolAttempts: number,
  ) {}

  static async create(init: WorkerInit, options: ThreadOptions): Promise<ThreadWorkers> {
    const poolThreads = options.threads - 1;
    const pool = new Piscina({
      filename: threadWorkerFile(),
      minThreads: poolThreads,
      maxThreads: poolThreads,
      idleTimeout: Number.MAX_SAFE_INTEGER,
      // Every pass is awaited before the next, so a thread never needs more than one task.
      concurrentTasksPerWorker: 1,
      workerData: init,
    });
    // Start every thread's engine now, so that the first step does not pay for session creation.
    const [local] = await Promise.all([
      LocalWorker.create(init),
      ...Array.from({ length: poolThreads }, () => pool.run({ kind: 'describe' })),
    ]);
    return new ThreadWorkers(local as LocalWorker, pool, options.threads, options.poolAttempts ?? 3);
  }

  get description(): string {
    return `${this.size} threads (main + ${this.size - 1} piscina) × ${this.local.worker.backend}`;
  }

  /** The live pool threads (tests kill one mid-run). */
  get threads() {
    return this.pool.threads;
  }

  async runPass(tasks: Task[]): Promise<TaskResult[]> {
    // Hand the pool its tasks first, so they run while this thread computes slot 0.
    const others = tasks.slice(1).map((task) => this.runOnPool(task));
    const first = await this.local.run(tasks[0]);
    return [first, ...(await Promise.all(others))];
  }

  private async runOnPool(task: Task): Promise<TaskResult> {
    for (let attempt = 0; attempt < this.poolAttempts; attempt++) {
      try {
        return (await this.pool.run(task)) as TaskResult;
      } catch {
        this.retries++;
      }
    }
    return this.local.run(task);
  }

  async close(): Promise<void> {
    await Promise.all([this.pool.destroy(), this.local.dispose()]);
  }
}
