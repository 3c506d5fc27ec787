/**
 * The entry point of each piscina worker thread: builds its StepWorker from the shared memory handed over
 * in workerData (once), then runs the tasks it is sent. A task carries only step numbers and ranges.
 */
import { workerData } from 'node:worker_threads';
import { StepWorker, type Task, type TaskResult, type WorkerInit } from './step_worker.js';

let worker: Promise<StepWorker> | undefined;

export default async function runTask(task: Task | { kind: 'describe' }): Promise<TaskResult | string> {
  worker ??= StepWorker.create(workerData as WorkerInit);
  const w = await worker;
  if (task.kind === 'describe') return w.backend;
  const faults = (workerData as WorkerInit).faults;
  if (faults && task.kind === 'weights' && task.step === faults[0] && Atomics.sub(faults, 1, 1) > 0) {
    // Die between two engine calls, in JavaScript, the way an uncaught error would end the thread.
    setTimeout(() => process.exit(70), 0);
  }
  return w.run(task);
}
