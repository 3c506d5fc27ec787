/**
 * The training state that every thread reads and writes in place: parameters, Adam's first and second
 * moments, and the batch gradient, in one shared wasm memory (so the Adam kernel can work on it directly).
 *
 * Parameters and moments are double-buffered: step t reads generation t % 2 and writes (t + 1) % 2. A step
 * whose gradient turns out non-finite is simply not committed, and the last good state is still there.
 */
const PAGE = 65536;

export interface OptimizerMemoryLayout {
  params: number;
  /** Byte offsets of each generation's arrays. */
  generations: [{ params: number; m: number; v: number }, { params: number; m: number; v: number }];
  grad: number;
  bytes: number;
}

export function optimizerLayout(params: number): OptimizerMemoryLayout {
  const size = align16(params * 4);
  const at = (i: number) => i * size;
  return {
    params,
    generations: [
      { params: at(0), m: at(1), v: at(2) },
      { params: at(3), m: at(4), v: at(5) },
    ],
    grad: at(6),
    bytes: at(7),
  };
}

export class OptimizerMemory {
  readonly layout: OptimizerMemoryLayout;

  /** A view of an existing memory (as a worker thread gets it). */
  constructor(
    readonly params: number,
    readonly memory: WebAssembly.Memory,
  ) {
    this.layout = optimizerLayout(params);
    if (memory.buffer.byteLength < this.layout.bytes) throw new RangeError('optimizer memory is too small');
  }

  /**
   * New, zeroed memory: shared between threads, or (one thread) plain, which onnxruntime can read in
   * place where it refuses shared buffers.
   */
  static allocate(params: number, shared: boolean): OptimizerMemory {
    const pages = Math.ceil(optimizerLayout(params).bytes / PAGE);
    return new OptimizerMemory(params, new WebAssembly.Memory({ initial: pages, maximum: pages, shared }));
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

  get grad(): Float32Array {
    return this.view(this.layout.grad);
  }
}

function align16(n: number): number {
  return Math.ceil(n / 16) * 16;
}
