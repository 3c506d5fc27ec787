/**
 * A graph run through onnxruntime-node's binding: the path without the native addon (or its C API), and
 * for CUDA. The binding refuses typed arrays over SharedArrayBuffers, so inputs there are read through the
 * addon's alias when it is built, else copied into scratch (a memcpy, ~0.2 ms for the tutorial MLP's 2.3 MB
 * of parameters); and it returns outputs in fresh arrays, which are copied into the fetches.
 */
import type * as Ort from 'onnxruntime-node';
import { sharedAlias } from './native.js';
import type { Feed, Fetch, GraphRunner } from './runner.js';

type OrtModule = typeof Ort;

/**
 * Float32 inputs as the binding takes them: the data itself, or for data in shared memory its alias (the
 * native addon's) or a copy, kept per input name for the next call.
 */
export class PlainViews {
  private readonly alias = sharedAlias();
  private readonly copies = new Map<string, Float32Array>();

  of(name: string, data: Float32Array): Float32Array {
    if (!(data.buffer instanceof SharedArrayBuffer)) return data;
    if (this.alias) return this.alias(data);
    let copy = this.copies.get(name);
    if (!copy || copy.length < data.length) {
      copy = new Float32Array(data.length);
      this.copies.set(name, copy);
    }
    const view = copy.subarray(0, data.length);
    view.set(data);
    return view;
  }
}

export class BindingRunner implements GraphRunner {
  private readonly plain = new PlainViews();
  /**
   * The tensor made of each input array, kept while the array is: an input fed again as the same array
   * (the parameters, from one setParams to the next) is neither aliased nor copied again.
   */
  private readonly tensors = new WeakMap<Float32Array | BigInt64Array, Ort.Tensor>();

  constructor(
    private readonly ort: OrtModule,
    private readonly session: Ort.InferenceSession,
  ) {}

  /** `given`: inputs that are tensors already (a device's, kept there): those the graph takes are fed as they are. */
  async run(feeds: Record<string, Feed>, fetches: Record<string, Fetch>, given: Record<string, Ort.Tensor> = {}): Promise<void> {
    const tensors: Record<string, Ort.Tensor> = {};
    for (const name of this.session.inputNames) if (given[name]) tensors[name] = given[name];
    for (const [name, { data, dims }] of Object.entries(feeds)) {
      let tensor = this.tensors.get(data);
      if (!tensor) {
        tensor = data instanceof BigInt64Array ? new this.ort.Tensor('int64', data, dims) : new this.ort.Tensor('float32', this.plain.of(name, data), dims);
        this.tensors.set(data, tensor);
      }
      tensors[name] = tensor;
    }
    const result = await this.session.run(tensors, Object.keys(fetches));
    for (const [name, { data }] of Object.entries(fetches)) (data as Float32Array).set(result[name].data as Float32Array);
  }

  release(): Promise<void> {
    return this.session.release();
  }
}
