/**
 * A participant's share of a sharded weight pass, as it travels: for each layer a range of output units,
 * whose parameters are rows u0…u1 of W ([out, in] row-major, so contiguous) and entries u0…u1 of b. A
 * slice packs them in layer order (W rows, then b) into one array; placing it writes them back.
 */
import { paramLayout, type ModelSpec } from '../model/spec.js';
import type { Range } from './plan.js';

/** The pieces of the flat parameter vector a slice covers: [offset, length] pairs in packing order. */
function pieces(spec: ModelSpec, units: readonly Range[]): [number, number][] {
  return paramLayout(spec).layers.flatMap(({ fanIn, weightOffset, biasOffset }, l) => {
    const [u0, u1] = units[l];
    return [
      [weightOffset + u0 * fanIn, (u1 - u0) * fanIn],
      [biasOffset + u0, u1 - u0],
    ] as [number, number][];
  });
}

/** Floats in the packed slice of `units`. */
export function sliceLength(spec: ModelSpec, units: readonly Range[]): number {
  return pieces(spec, units).reduce((n, [, length]) => n + length, 0);
}

/** The values of `units` in a flat parameter-sized array, packed. */
export function packSlice(spec: ModelSpec, from: Float32Array, units: readonly Range[]): Float32Array {
  const packed = new Float32Array(sliceLength(spec, units));
  let at = 0;
  for (const [offset, length] of pieces(spec, units)) {
    packed.set(from.subarray(offset, offset + length), at);
    at += length;
  }
  return packed;
}

/** Writes a packed slice of `units` into a flat parameter-sized array. */
export function placeSlice(spec: ModelSpec, into: Float32Array, units: readonly Range[], packed: Float32Array): void {
  let at = 0;
  for (const [offset, length] of pieces(spec, units)) {
    into.set(packed.subarray(at, at + length), offset);
    at += length;
  }
}

/** Output units a slice covers, over all layers (a step is complete when slices cover them all). */
export function unitsIn(units: readonly Range[]): number {
  return units.reduce((n, [u0, u1]) => n + u1 - u0, 0);
}
