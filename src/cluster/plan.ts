/**
 * How a batch is cut up, and who computes what. The numbers a step produces never depend on this plan:
 *
 * - Rows are split into fixed micro-shards (--micro-batch rows each); a worker gets a contiguous run of
 *   whole micro-shards. The row pass is row-local, so any grouping gives the same bits.
 * - Every weight gradient is one reduction over all rows of the batch in row order (K = batch size in a
 *   single call), split only along the layer's output units, which is row-local again. So the sum is formed
 *   the same way for 1 worker or 16, without the cost of per-micro-shard weight gradients (a 16-row dW of
 *   784×512 is memory-bound: 1.4 ms against 1.0 ms for all 64 rows in one call).
 *
 * Both rest on the engine giving a row, and a unit, the same bits whatever the call's shape: true of
 * onnxruntime's CPU kernels and of its WebGPU provider (checked on lavapipe: test/webgpu.test.ts). The bits
 * still depend on the device kind, so a run keeps to one (remote/gate.ts refuses others unless allowed).
 */
export type Range = readonly [number, number];

/** The parts of [0, batch) that the given ranges do not cover, in order. */
export function missingRanges(batch: number, held: readonly Range[]): Range[] {
  const missing: Range[] = [];
  let next = 0;
  for (const [r0, r1] of [...held].sort((a, b) => a[0] - b[0])) {
    if (r0 > next) missing.push([next, r0]);
    next = Math.max(next, r1);
  }
  if (next < batch) missing.push([next, batch]);
  return missing;
}

export function batchCount(samples: number, batchSize: number): number {
  return Math.ceil(samples / batchSize);
}

export function batchRows(samples: number, batchSize: number, batch: number): number {
  return Math.min(batchSize, samples - batch * batchSize);
}

/** The fixed micro-shards of a batch of `rows` rows. */
export function microShards(rows: number, microBatch: number): Range[] {
  const shards: Range[] = [];
  for (let start = 0; start < rows; start += microBatch) shards.push([start, Math.min(rows, start + microBatch)]);
  return shards;
}

/** Splits n items into `parts` contiguous, nearly equal ranges (the first ones one larger); some may be empty. */
export function evenSplit(n: number, parts: number): Range[] {
  const ranges: Range[] = [];
  const base = Math.floor(n / parts);
  const extra = n % parts;
  let start = 0;
  for (let p = 0; p < parts; p++) {
    const size = base + (p < extra ? 1 : 0);
    ranges.push([start, start + size]);
    start += size;
  }
  return ranges;
}

/** Row ranges for each worker: contiguous runs of whole micro-shards (given in order), balanced by count. */
export function shardGroups(shards: Range[], workers: number): Range[] {
  return evenSplit(shards.length, workers).map(([a, b]) => (a === b ? [0, 0] : [shards[a][0], shards[b - 1][1]]) as Range);
}

/** Every output unit of each layer. */
export function allUnits(fanOuts: number[]): Range[] {
  return fanOuts.map((n) => [0, n] as Range);
}

/** For each worker, the range of output units it reduces in each layer. */
export function unitAssignment(fanOuts: number[], workers: number): Range[][] {
  return splitUnits(allUnits(fanOuts), workers);
}

/** [r0, r1) split evenly into `parts` contiguous ranges (evenSplit, offset by r0). */
export function splitRange([r0, r1]: Range, parts: number): Range[] {
  return evenSplit(r1 - r0, parts).map(([a, b]) => [r0 + a, r0 + b] as Range);
}

/** Each layer's range of units split evenly among `workers` (a remote participant's share among its threads). */
export function splitUnits(units: readonly Range[], workers: number): Range[][] {
  const perLayer = units.map((range) => splitRange(range, workers));
  return Array.from({ length: workers }, (_, w) => perLayer.map((ranges) => ranges[w]));
}

/**
 * Each layer's output units shared among participants in proportion to their speed (apportion): the
 * sharded weight pass, where a slower machine gets fewer units.
 */
export function shareUnits(fanOuts: number[], speeds: number[]): Range[][] {
  const perLayer = fanOuts.map((n) => {
    let next = 0;
    return apportion(n, speeds).map((count) => [next, (next += count)] as Range);
  });
  return speeds.map((_, p) => perLayer.map((ranges) => ranges[p]));
}

/** The training samples of one batch of an epoch, in order (shuffled: the epoch's permutation). */
export function batchSamples(samples: number, shuffled: Uint32Array | undefined, batch: number, batchSize: number): Int32Array {
  const rows = batchRows(samples, batchSize, batch);
  const index = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    const position = batch * batchSize + r;
    index[r] = shuffled ? shuffled[position] : position;
  }
  return index;
}

/** Shard ranges sorted, with adjacent ones merged. */
export function coalesce(ranges: Range[]): Range[] {
  const merged: [number, number][] = [];
  for (const [a, b] of [...ranges].sort((x, y) => x[0] - y[0])) {
    const last = merged[merged.length - 1];
    if (last && last[1] === a) last[1] = b;
    else merged.push([a, b]);
  }
  return merged;
}

/**
 * Splits n items in proportion to weights (largest remainder), deterministically. While there are at
 * least as many items as weights, everyone gets one: a slow participant gets less work, never none, so
 * its speed keeps being measured.
 */
export function apportion(n: number, weights: number[]): number[] {
  const floor = n >= weights.length ? 1 : 0;
  const total = weights.reduce((a, b) => a + b, 0);
  const exact = weights.map((w) => floor + ((n - floor * weights.length) * w) / total);
  const counts = exact.map(Math.floor);
  let left = n - counts.reduce((a, b) => a + b, 0);
  const order = exact.map((e, i) => [e - Math.floor(e), i]).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  for (let k = 0; left > 0; k++, left--) counts[order[k % order.length][1]]++;
  return counts;
}
