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

  constructor(
    readonly params: number,
    readonly memory: WebAssembly.Memory = newSharedMemory(optimizerLayout(params).bytes),
  ) {
    this.layout = optimizerLayout(params);
    if (memory.buffer.byteLength < this.layout.bytes) throw new RangeError('optimizer memory is too small');
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

function newSharedMemory(bytes: number): WebAssembly.Memory {
  const pages = Math.ceil(bytes / PAGE);
  return new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
}

function align16(n: number): number {
  return Math.ceil(n / 16) * 16;
}
