/**
 * One GPU, one queue of work: onnxruntime's WebGPU sessions in a process share one Dawn device (the
 * provider's default context), whose command encoder must not be used from two threads at once (seen
 * here: "CommandEncoder is already finished" when two worker threads ran their sessions together). So the
 * sessions of a process take turns: a word of shared memory, made by the main thread and handed to its
 * worker threads (EngineOptions.webgpu), says whether the device is busy. The wait is asynchronous
 * (Atomics.waitAsync), so two engines of one thread waiting on each other cannot block their event loop.
 */

/** Atomics.waitAsync (Node 16+), which TypeScript's ES2022 library does not declare. */
type WaitAsync = (array: Int32Array, index: number, value: number) => { async: false; value: string } | { async: true; value: Promise<string> };
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

export function newTurnWord(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(4));
}

export class GpuTurns {
  constructor(private readonly word: Int32Array) {}

  /** Runs `work` when no other session of the process is on the device. */
  async take<T>(work: () => T | Promise<T>): Promise<T> {
    while (Atomics.compareExchange(this.word, 0, 0, 1) !== 0) {
      const wait = waitAsync(this.word, 0, 1);
      if (wait.async) await wait.value;
    }
    try {
      return await work();
    } finally {
      Atomics.store(this.word, 0, 0);
      Atomics.notify(this.word, 0);
    }
  }
}
