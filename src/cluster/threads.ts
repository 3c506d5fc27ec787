/**
 * Local worker threads on a piscina pool. Tasks are idempotent (a step reads generation g and writes
 * g + 1), so a task whose thread threw or died is simply run again, on whichever thread is free, with the
 * same result; piscina replaces a dead thread. A task that fails on every attempt ends the run.
 */
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { noWorkersLeft } from '../errors.js';
import type { Task, TaskResult, WorkerInit } from './step_worker.js';
import type { WorkerSet } from './workers.js';

/** The compiled worker file; under vitest (which runs src/*.ts) the build in dist/ next to it. */
export function threadWorkerFile(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.ts')) return here.replace(/[/\\]src[/\\]cluster[/\\]threads\.ts$/, '/dist/src/cluster/thread_worker.js');
  return here.replace(/threads\.js$/, 'thread_worker.js');
}

export interface ThreadOptions {
  threads: number;
  /** Attempts per task before the run fails (a retry goes to any thread; piscina respawns dead ones). */
  maxAttempts?: number;
}

export class ThreadWorkers implements WorkerSet {
  private backend = '';
  /** Tasks run again after their thread threw or died. */
  retries = 0;

  private constructor(
    private readonly pool: Piscina,
    readonly size: number,
    private readonly maxAttempts: number,
  ) {}

  static async create(init: WorkerInit, options: ThreadOptions): Promise<ThreadWorkers> {
    const pool = new Piscina({
      filename: threadWorkerFile(),
      minThreads: options.threads,
      maxThreads: options.threads,
      idleTimeout: Number.MAX_SAFE_INTEGER,
      // Every task is awaited before the next pass, so a thread never needs more than one.
      concurrentTasksPerWorker: 1,
      workerData: init,
    });
    const workers = new ThreadWorkers(pool, options.threads, options.maxAttempts ?? options.threads + 2);
    // Start every thread's engine now, so the first step does not pay for session creation.
    const backends = await Promise.all(Array.from({ length: options.threads }, () => pool.run({ kind: 'describe' })));
    workers.backend = backends[0] as string;
    return workers;
  }

  get description(): string {
    return `${this.size} threads × ${this.backend}`;
  }

  /** The live threads (tests use this to kill one mid-run). */
  get threads() {
    return this.pool.threads;
  }

  async run(task: Task): Promise<TaskResult> {
    let lastError: unknown;
    for (let attempt = 0; attempt < this.maxAttempts; attempt++) {
      try {
        return (await this.pool.run(task)) as TaskResult;
      } catch (e) {
        lastError = e;
        this.retries++;
      }
    }
    throw noWorkersLeft('step' in task ? task.step : -1, (lastError as Error)?.message ?? String(lastError));
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
