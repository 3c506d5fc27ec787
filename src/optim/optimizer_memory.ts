/**
 * The training state that every thread reads and writes in place: parameters and Adam's first and second
 * moments, in one wasm memory (so the Adam kernel works on it directly), plus a small gradient scratch per
 * compute slot: a gradient is streamed through it chunk by chunk straight into Adam, and never written out
 * whole (that saved three passes over 2.3 MB a step; Adam is bound by memory bandwidth here).
 *
 * Parameters and moments are double-buffered: step t reads generation t % 2 and writes (t + 1) % 2. A step
 * whose gradient turns out non-finite is simply not committed, and the last good state is still there.
 */
const PAGE = 65536;

export interface OptimizerMemoryLayout {
  params: number;
  /** Byte offsets of each generation's arrays. */
  generations: [{ params: number; m: number; v: number }, { params: number; m: number; v: number }];
  /** Byte offset of slot 0's gradient scratch; slot s starts GRAD_CHUNK floats later per slot. */
  scratch: number;
  slots: number;
  bytes: number;
}

/** Floats of gradient per Adam call: 64 KiB, which stays in the L2 cache between the copy and the kernel. */
export const GRAD_CHUNK = 16384;

export function optimizerLayout(params: number, slots: number): OptimizerMemoryLayout {
  const size = align16(params * 4);
  const at = (i: number) => i * size;
  return {
    params,
    generations: [
      { params: at(0), m: at(1), v: at(2) },
      { params: at(3), m: at(4), v: at(5) },
    ],
    scratch: at(6),
    slots,
    bytes: at(6) + slots * GRAD_CHUNK * 4,
  };
}

export class OptimizerMemory {
  readonly layout: OptimizerMemoryLayout;

  /** A view of an existing memory (as a worker thread gets it). */
  constructor(
    readonly params: number,
    readonly memory: WebAssembly.Memory,
    slots: number,
  ) {
    this.layout = optimizerLayout(params, slots);
    if (memory.buffer.byteLength < this.layout.bytes) throw new RangeError('optimizer memory is too small');
  }

  /**
   * New, zeroed memory: shared between threads, or (one thread) plain, which onnxruntime-node's binding
   * can read in place where it refuses shared buffers (without the native addon).
   */
  static allocate(params: number, shared: boolean, slots = 1): OptimizerMemory {
    const pages = Math.ceil(optimizerLayout(params, slots).bytes / PAGE);
    return new OptimizerMemory(params, new WebAssembly.Memory({ initial: pages, maximum: pages, shared }), slots);
  }

  private view(byteOffset: number): Float32Array {
    return new Float32Array(this.memory.buffer, byteOffset, this.params);
  }

  paramsOf(generation: number): Float32Array {
    return this.view(this.layout.generations[generation & 1].params);
  }

  firstMomentOf(generation: number): Float32Array {
    return this.view(this.layout.generations[generation & 1].m);
  }

  secondMomentOf(generation: number): Float32Array {
    return this.view(this.layout.generations[generation & 1].v);
  }

  /** A generation's parameters and moments. */
  stateOf(generation: number): { params: Float32Array; m: Float32Array; v: Float32Array } {
    return { params: this.paramsOf(generation), m: this.firstMomentOf(generation), v: this.secondMomentOf(generation) };
  }

  /** Byte offset and view of a slot's gradient scratch. */
  scratch(slot: number): { offset: number; floats: Float32Array } {
    if (slot < 0 || slot >= this.layout.slots) throw new RangeError(`no gradient scratch for slot ${slot} (${this.layout.slots} slots)`);
    const offset = this.layout.scratch + slot * GRAD_CHUNK * 4;
    return { offset, floats: new Float32Array(this.memory.buffer, offset, GRAD_CHUNK) };
  }
}

function align16(n: number): number {
  return Math.ceil(n / 16) * 16;
}
