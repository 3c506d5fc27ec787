/**
 * --verify RATE: a seeded random share of each remote participant's micro-shards is computed again on
 * this process's own slots and compared bit for bit. Only dtrain can offer this, because its rows are
 * bit-reproducible whoever computes them (docs/ARCHITECTURE.md): any difference is a wrong row, not noise.
 * The draw depends on the seed, the step and the micro-shard only, so a run verifies the same rows again.
 */
import type { Range } from './plan.js';
import type { TrainingMemory } from './training_memory.js';

/** A remote participant's rows of a step, as accepted (whole micro-shards). */
export interface AcceptedRows<P> {
  peer: P;
  shardRange: Range;
}

export class RowVerifier {
  constructor(
    private readonly rate: number,
    private readonly seed: number,
  ) {}

  get enabled(): boolean {
    return this.rate > 0;
  }

  /** The micro-shards of `shardRange` drawn for verification at `step`. */
  pick(step: number, [s0, s1]: Range): number[] {
    const picked: number[] = [];
    for (let s = s0; s < s1; s++) if (unitHash(this.seed, step, s) < this.rate) picked.push(s);
    return picked;
  }
}

/**
 * Copies of batch rows [r0, r1) as a participant sends them: each row's loss, activations and deltas (in
 * compact form only the last layer's delta travels; the others are rebuilt here and not compared).
 */
export function rowsOf(memory: TrainingMemory, [r0, r1]: Range, compact: boolean): Float32Array[] {
  const { batch, spec } = memory;
  const cut = (a: Float32Array, width: number) => a.slice(r0 * width, r1 * width);
  const deltas = batch.deltas.map((d, l) => cut(d, spec.sizes[l + 1]));
  return [batch.rowLoss.slice(r0, r1), ...batch.hidden.map((h, l) => cut(h, spec.sizes[l + 1])), ...(compact ? deltas.slice(-1) : deltas)];
}

/** Bit-for-bit equality (NaN payloads and signed zeros included), not numeric equality. */
export function sameBits(a: Float32Array[], b: Float32Array[]): boolean {
  if (a.length !== b.length) return false;
  return a.every((x, i) => {
    const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
    const v = new Uint32Array(b[i].buffer, b[i].byteOffset, b[i].length);
    return u.length === v.length && u.every((w, k) => w === v[k]);
  });
}

/** A number in [0, 1) from (seed, step, shard): splitmix-style mixing, the same on every machine. */
function unitHash(seed: number, step: number, shard: number): number {
  let h = (Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(step + 1, 0xc2b2ae35) ^ Math.imul(shard + 1, 0x27d4eb2f)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b) >>> 0;
  return ((h ^ (h >>> 16)) >>> 0) / 4294967296;
}
