/**
 * The row-shaped feeds and fetches of one engine call. onnxruntime multiplies a single row on another code
 * path (GEMV) that rounds differently from the multi-row kernels, so a one-row call runs on two copies of
 * the row, in scratch, and the first row of each output is copied out: the row then gets the same bits as
 * in any larger call. Calls of two rows or more read and write the caller's arrays in place.
 */
import type { Feed, Fetch } from './runner.js';

/** Scratch arrays by name, kept for the next call. */
export class Scratch {
  private readonly arrays = new Map<string, Float32Array>();

  get(name: string, length: number): Float32Array {
    let array = this.arrays.get(name);
    if (array?.length !== length) {
      array = new Float32Array(length);
      this.arrays.set(name, array);
    }
    return array;
  }
}

export class RowBatch {
  /** Whether the call runs on a single row twice. */
  readonly padded: boolean;
  /** The rows the graph runs on. */
  readonly runRows: number;
  private readonly copies: [to: Float32Array, from: Float32Array][] = [];

  constructor(
    readonly rows: number,
    private readonly scratch: Scratch,
  ) {
    this.padded = rows < 2;
    this.runRows = this.padded ? 2 : rows;
  }

  /** rows × width of `data` as the input `name`. */
  feed(name: string, data: Float32Array, width: number): Feed {
    const rows = data.subarray(0, this.rows * width);
    if (!this.padded) return { data: rows, dims: [this.rows, width] };
    const twice = this.scratch.get(`in:${name}`, 2 * width);
    twice.set(rows);
    twice.set(rows, width);
    return { data: twice, dims: [2, width] };
  }

  /** The output `name` into rows × width of `out` (rows alone without a width); see copyOut. */
  fetch(name: string, out: Float32Array, width?: number): Fetch {
    const dims = width === undefined ? [this.runRows] : [this.runRows, width];
    const rows = out.subarray(0, this.rows * (width ?? 1));
    if (!this.padded) return { data: rows, dims };
    const twice = this.scratch.get(`out:${name}`, 2 * (width ?? 1));
    this.copies.push([rows, twice.subarray(0, rows.length)]);
    return { data: twice, dims };
  }

  /** After the run: the padded outputs' first row into the caller's arrays. */
  copyOut(): void {
    for (const [to, from] of this.copies) to.set(from);
  }
}
