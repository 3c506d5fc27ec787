/**
 * Seeded initialisation drawn like PyTorch's nn.Linear default: W and b from U(−1/√fan_in, 1/√fan_in).
 * The PRNG is our own (not torch's), so the numbers differ from PyTorch's but the distribution is the same,
 * and every process that knows the seed builds the same parameters.
 */
import { paramLayout, type ModelSpec } from './spec.js';

/** SplitMix32-seeded xoshiro128**: fast, well distributed, and its whole state is four uint32s. */
export class Rng {
  private s = new Uint32Array(4);

  constructor(seed: number) {
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
  }

  nextUint32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform in [0, 1) with 32 random bits. */
  nextFloat(): number {
    return this.nextUint32() / 4294967296;
  }

  /** Integer in [0, n). */
  nextInt(n: number): number {
    return Math.floor(this.nextFloat() * n);
  }

  getState(): number[] {
    return Array.from(this.s);
  }

  setState(state: readonly number[]): void {
    this.s.set(state);
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

export function initParams(spec: ModelSpec, seed: number, out?: Float32Array): Float32Array {
  const layout = paramLayout(spec);
  const params = out ?? new Float32Array(layout.total);
  const rng = new Rng(seed);
  for (const layer of layout.layers) {
    const bound = 1 / Math.sqrt(layer.fanIn);
    const end = layer.biasOffset + layer.fanOut;
    for (let i = layer.weightOffset; i < end; i++) params[i] = (2 * rng.nextFloat() - 1) * bound;
  }
  return params;
}

/** A seeded Fisher–Yates permutation of 0..n-1 (for --shuffle). */
export function permutation(n: number, rng: Rng): Uint32Array {
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = rng.nextInt(i + 1);
    const t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  return order;
}
