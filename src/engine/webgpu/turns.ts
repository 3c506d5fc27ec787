/**
 * One GPU, one queue of work: onnxruntime's WebGPU sessions in a process share one Dawn device (the
 * provider's default context), whose command encoder must not be used from two threads at once (seen
 * here: "CommandEncoder is already finished" when two worker threads ran their sessions together). So the
 * sessions of a process take turns: a word of shared memory, made by the main thread and handed to its
 * worker threads (EngineOptions.webgpu), says who is on the device (0: nobody, else the holder's thread id
 * + 1). The wait is asynchronous (Atomics.waitAsync), so two engines of one thread waiting on each other
 * cannot block their event loop. A thread that dies on the device (its `finally` never runs) would hold the
 * turn for ever: the thread that started it gives the turn back when it sees it go (releaseTurnsOnExit).
 */
import type { EventEmitter } from 'node:events';
import { threadId } from 'node:worker_threads';

/** Atomics.waitAsync (Node 16+), which TypeScript's ES2022 library does not declare. */
type WaitAsync = (array: Int32Array, index: number, value: number) => { async: false; value: string } | { async: true; value: Promise<string> };
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

export function newTurnWord(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(4));
}

/** What the word holds while thread `id` is on the device. */
const holding = (id: number) => id + 1;

export class GpuTurns {
  constructor(private readonly word: Int32Array) {}

  /** Runs `work` when no other session of the process is on the device. */
  async take<T>(work: () => T | Promise<T>): Promise<T> {
    const me = holding(threadId);
    for (;;) {
      const holder = Atomics.compareExchange(this.word, 0, 0, me);
      if (holder === 0) break;
      const wait = waitAsync(this.word, 0, holder);
      if (wait.async) await wait.value;
    }
    try {
      return await work();
    } finally {
      release(this.word, me);
    }
  }
}

/** Gives the turn back if `holder` has it; wakes whoever waits. */
function release(word: Int32Array, holder: number): void {
  if (Atomics.compareExchange(word, 0, holder, 0) === holder) Atomics.notify(word, 0);
}

/** A thread pool as piscina is: its threads now, and events when one starts and when one is gone. */
interface ThreadPool extends Pick<EventEmitter, 'on'> {
  readonly threads: readonly { threadId: number }[];
}

/**
 * Gives back the turn when the thread holding it is one of the pool's and is gone (an exit, a crash, a
 * termination). The pool's threads are known by the ids they had when they started (an exited thread's
 * reads -1, and piscina hands out a new handle object at each event); a turn held by a thread of another
 * pool, or by a living one, is left alone.
 */
export function releaseTurnsOnExit(word: Int32Array, pool: ThreadPool): void {
  const ours = new Set<number>();
  pool.on('workerCreate', (thread: { id: number }) => ours.add(thread.id));
  pool.on('workerDestroy', () => {
    const holder = Atomics.load(word, 0);
    if (holder === 0) return;
    const id = holder - 1;
    if (ours.has(id) && !pool.threads.some((t) => t.threadId === id)) release(word, holder);
  });
}
