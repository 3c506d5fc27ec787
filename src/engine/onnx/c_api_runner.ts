/**
 * A graph run through onnxruntime's C API (native.ts): inputs read where they lie, shared memory included,
 * and outputs written straight into the given arrays. onnxruntime-node's binding instead copies every
 * output into a fresh ArrayBuffer: ~0.5 ms a step for the tutorial MLP, measured.
 */
import type { NativeAddon, NativeHandle, NativeSessionOptions } from './native.js';
import { type Feed, type Fetch, type GraphRunner, SESSION_OPTIONS } from './runner.js';

/** The C API's ExecutionMode and GraphOptimizationLevel values for the binding's names of them. */
const EXECUTION_MODES = { sequential: 0, parallel: 1 } as const;
const OPTIMIZATION_LEVELS = { disabled: 0, basic: 1, extended: 2, layout: 3, all: 99 } as const;

/** SESSION_OPTIONS as the C API takes them. */
export const C_API_SESSION_OPTIONS: NativeSessionOptions = {
  intraOpNumThreads: SESSION_OPTIONS.intraOpNumThreads,
  interOpNumThreads: SESSION_OPTIONS.interOpNumThreads,
  executionMode: EXECUTION_MODES[SESSION_OPTIONS.executionMode],
  graphOptimizationLevel: OPTIMIZATION_LEVELS[SESSION_OPTIONS.graphOptimizationLevel],
};

export class CApiRunner implements GraphRunner {
  /** Held for as long as the plan: the native session is released when this handle is collected. */
  private readonly session: NativeHandle;
  /** The names in the order the native plan takes them, fixed by the first run. */
  private plan?: { handle: NativeHandle; inputs: string[]; outputs: string[] };

  /** provider: the C API's name of the device's execution provider (EXECUTION_PROVIDERS); none for the CPU. */
  constructor(
    private readonly native: NativeAddon,
    model: Uint8Array,
    provider?: string,
  ) {
    this.session = native.session(model, provider ? { ...C_API_SESSION_OPTIONS, executionProvider: provider } : C_API_SESSION_OPTIONS);
  }

  /** Runs the graph synchronously; outputs are written into the fetches' arrays. */
  run(feeds: Record<string, Feed>, fetches: Record<string, Fetch>): void {
    if (!this.plan) {
      const [inputs, outputs] = [Object.keys(feeds), Object.keys(fetches)];
      this.plan = { handle: this.native.plan(this.session, inputs, outputs), inputs, outputs };
    }
    const { handle, inputs, outputs } = this.plan;
    this.native.run(
      handle,
      inputs.map((n) => feeds[n].data),
      inputs.map((n) => feeds[n].dims),
      outputs.map((n) => fetches[n].data),
      outputs.map((n) => fetches[n].dims),
    );
  }

  /** Nothing to do: the native session goes with its handle. */
  async release(): Promise<void> {}
}
