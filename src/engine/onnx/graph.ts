/**
 * Builds, in memory, the ONNX models the onnx engine runs for an MLP spec. Five small graphs, all with
 * dynamic row counts and the parameters fed as inputs (so one session serves every step):
 *
 * - rows:   forward and backward deltas for some rows of a batch. Every output row depends on its own
 *           input row only, so any split of a batch into calls gives bitwise the same numbers.
 * - weight: each layer's weight and bias gradient for a range of its output units, summed over the whole
 *           batch in a single fixed-shape reduction. Splitting the output units is row-local again, so the
 *           gradient is the same whichever thread computes which range.
 * - step:   rows and weight in one graph, for a slot that computes the whole batch alone.
 * - deltas: the rows graph's backward part alone, for rows received as activations and last delta.
 * - eval:   forward only, per-row loss and predicted class.
 */
import onnxProto from 'onnx-proto';
import { paramLayout, type ModelSpec } from '../../model/spec.js';
import { ADAM_SCALARS } from '../../optim/adam.js';

const { onnx } = onnxProto;
type INodeProto = onnxProto.onnx.INodeProto;
type IValueInfoProto = onnxProto.onnx.IValueInfoProto;
type ITensorProto = onnxProto.onnx.ITensorProto;

const FLOAT = onnx.TensorProto.DataType.FLOAT;
const INT64 = onnx.TensorProto.DataType.INT64;
const OPSET = 17;

/** How the graphs are written for a device (the defaults are the CPU's, whose bits the tests pin). */
export interface GraphOptions {
  /**
   * Only ops onnxruntime's WebGPU provider has kernels for. In 1.30 it has none for LogSoftmax and Sign,
   * which would otherwise run on the CPU with a copy each way per call: log-softmax is then written as
   * z − max − log Σ exp(z − max), and ReLU's derivative as Cast(h > 0).
   */
  webgpuOps?: boolean;
}

class GraphBuilder {
  readonly nodes: INodeProto[] = [];
  readonly inputs: IValueInfoProto[] = [];
  readonly outputs: IValueInfoProto[] = [];
  readonly initializers: ITensorProto[] = [];
  private counter = 0;

  input(name: string, dims: (number | string)[], type: number = FLOAT): string {
    this.inputs.push(valueInfo(name, dims, type));
    return name;
  }

  output(name: string, dims: (number | string)[], type: number = FLOAT): void {
    this.outputs.push(valueInfo(name, dims, type));
  }

  constInt64(values: number[]): string {
    const name = `const${this.counter++}`;
    this.initializers.push({ name, dataType: INT64, dims: [values.length], int64Data: values });
    return name;
  }

  constFloat(value: number): string {
    const name = `const${this.counter++}`;
    this.initializers.push({ name, dataType: FLOAT, dims: [], floatData: [value] });
    return name;
  }

  /** A float32 constant (weights of an exported model), stored as raw little-endian bytes. */
  initializer(name: string, dims: number[], data: Float32Array): string {
    const bytes = new Uint8Array(data.byteLength);
    const view = new DataView(bytes.buffer);
    data.forEach((v, i) => view.setFloat32(4 * i, v, true));
    this.initializers.push({ name, dataType: FLOAT, dims, rawData: bytes });
    return name;
  }

  op(opType: string, inputs: string[], attrs: Record<string, number | number[]> = {}, outName?: string): string {
    const out = outName ?? `${opType.toLowerCase()}${this.counter++}`;
    const attribute = Object.entries(attrs).map(([name, v]) =>
      Array.isArray(v)
        ? { name, type: onnx.AttributeProto.AttributeType.INTS, ints: v }
        : { name, type: onnx.AttributeProto.AttributeType.INT, i: v },
    );
    this.nodes.push({ opType, input: inputs, output: [out], name: `n${this.counter++}`, attribute });
    return out;
  }

  build(name: string): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'dtrain',
      opsetImport: [{ domain: '', version: OPSET }],
      graph: {
        name,
        node: this.nodes,
        input: this.inputs,
        output: this.outputs,
        initializer: this.initializers,
      },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

function valueInfo(name: string, dims: (number | string)[], elemType: number): IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

export const weightName = (l: number) => `W${l}`;
export const biasName = (l: number) => `b${l}`;
export const hiddenName = (l: number) => `h${l + 1}`;
export const deltaName = (l: number) => `d${l}`;

/**
 * Adds the forward pass; returns the hidden activations and the logits. The parameters are graph inputs
 * (training) or, given `params`, constants (an exported model).
 */
function forward(g: GraphBuilder, spec: ModelSpec, x: string, params?: Float32Array): { hidden: string[]; logits: string } {
  const layers = spec.sizes.length - 1;
  const layout = paramLayout(spec);
  const hidden: string[] = [];
  let h = x;
  for (let l = 0; l < layers; l++) {
    const { fanIn, fanOut, weightOffset, biasOffset } = layout.layers[l];
    const W = params
      ? g.initializer(weightName(l), [fanOut, fanIn], params.subarray(weightOffset, biasOffset))
      : g.input(weightName(l), [fanOut, fanIn]);
    const b = params
      ? g.initializer(biasName(l), [fanOut], params.subarray(biasOffset, biasOffset + fanOut))
      : g.input(biasName(l), [fanOut]);
    const z = g.op('Gemm', [h, W, b], { transB: 1 });
    if (l + 1 === layers) return { hidden, logits: z };
    h = activate(g, spec, z, l);
    hidden.push(h);
  }
  throw new Error('unreachable');
}

function activate(g: GraphBuilder, spec: ModelSpec, z: string, l: number): string {
  const name = hiddenName(l);
  switch (spec.activation) {
    case 'sigmoid':
      return g.op('Sigmoid', [z], {}, name);
    case 'relu':
      return g.op('Relu', [z], {}, name);
    case 'tanh':
      return g.op('Tanh', [z], {}, name);
  }
}

/** The activation's derivative, written in terms of its output h (all three allow that). */
function activationGrad(g: GraphBuilder, spec: ModelSpec, dh: string, h: string, out: string, options: GraphOptions): string {
  switch (spec.activation) {
    case 'sigmoid': {
      const oneMinus = g.op('Sub', [g.constFloat(1), h]);
      return g.op('Mul', [dh, g.op('Mul', [h, oneMinus])], {}, out);
    }
    case 'relu': {
      const positive = options.webgpuOps ? g.op('Cast', [g.op('Greater', [h, g.constFloat(0)])], { to: FLOAT }) : g.op('Sign', [h]);
      return g.op('Mul', [dh, positive], {}, out);
    }
    case 'tanh': {
      const oneMinusSq = g.op('Sub', [g.constFloat(1), g.op('Mul', [h, h])]);
      return g.op('Mul', [dh, oneMinusSq], {}, out);
    }
  }
}

function logSoftmax(g: GraphBuilder, logits: string, options: GraphOptions): string {
  if (!options.webgpuOps) return g.op('LogSoftmax', [logits], { axis: 1 });
  const shifted = g.op('Sub', [logits, g.op('ReduceMax', [logits], { axes: [1], keepdims: 1 })]);
  const logSum = g.op('Log', [g.op('ReduceSum', [g.op('Exp', [shifted]), g.constInt64([1])], { keepdims: 1 })]);
  return g.op('Sub', [shifted, logSum]);
}

/** Per-row softmax cross-entropy of the logits against a one-hot target; returns [rowLoss, logSoftmax]. */
function crossEntropy(g: GraphBuilder, logits: string, target: string, lossName: string, options: GraphOptions): [string, string] {
  const logp = logSoftmax(g, logits, options);
  const picked = g.op('ReduceSum', [g.op('Mul', [target, logp]), g.constInt64([1])], { keepdims: 0 });
  return [g.op('Neg', [picked], {}, lossName), logp];
}

/**
 * Adds the forward pass, the per-row loss "rowLoss" and the backward deltas (d_l, the gradient of the
 * batch-mean loss with respect to layer l's output) for inputs "x", "target" and "scale" (1/batch: the
 * mean's weight, so that rows computed in separate calls still add up to the batch mean).
 */
function rowsForwardBackward(g: GraphBuilder, spec: ModelSpec, options: GraphOptions): { x: string; hidden: string[]; deltas: string[] } {
  const classes = spec.sizes[spec.sizes.length - 1];
  const x = g.input('x', ['rows', spec.sizes[0]]);
  const target = g.input('target', ['rows', classes]);
  const scale = g.input('scale', [1]);
  const { hidden, logits } = forward(g, spec, x);
  const [, logp] = crossEntropy(g, logits, target, 'rowLoss', options);
  g.output('rowLoss', ['rows']);
  const layers = spec.sizes.length - 1;
  const last = g.op('Mul', [g.op('Sub', [g.op('Exp', [logp]), target]), scale], {}, deltaName(layers - 1));
  return { x, hidden, deltas: backwardDeltas(g, spec, hidden, last, options) };
}

/** Every layer's delta from the last layer's, back through the weights (inputs W1…) and the activations. */
function backwardDeltas(g: GraphBuilder, spec: ModelSpec, hidden: string[], last: string, options: GraphOptions): string[] {
  const layers = spec.sizes.length - 1;
  const deltas: string[] = [];
  deltas[layers - 1] = last;
  for (let l = layers - 2; l >= 0; l--) {
    const dh = g.op('MatMul', [deltas[l + 1], weightName(l + 1)]);
    deltas[l] = activationGrad(g, spec, dh, hidden[l], deltaName(l), options);
  }
  return deltas;
}

/**
 * The deltas of rows whose activations and last-layer delta are known (rows another worker computed and
 * sent in compact form): the row graph's backward part alone, the same ops on the same values, so the
 * same bits. Inputs h1…, d{L-1} and W1…; outputs d0…d{L-2}.
 */
export function buildDeltasGraph(spec: ModelSpec, options: GraphOptions = {}): Uint8Array {
  const g = new GraphBuilder();
  const layers = spec.sizes.length - 1;
  const hidden = spec.sizes.slice(1, -1).map((n, l) => g.input(hiddenName(l), ['rows', n]));
  const last = g.input(deltaName(layers - 1), ['rows', spec.sizes[layers]]);
  for (let l = 1; l < layers; l++) g.input(weightName(l), [spec.sizes[l + 1], spec.sizes[l]]);
  const deltas = backwardDeltas(g, spec, hidden, last, options);
  deltas.slice(0, -1).forEach((d, l) => g.output(d, ['rows', spec.sizes[l + 1]]));
  return g.build('dtrain_deltas');
}

/** gW_l = dᵀ · a over every row in one fixed reduction, and gb_l = Σ_rows d, as values gW{l} and gb{l}. */
function gradientOps(g: GraphBuilder, l: number, d: string, a: string): [string, string] {
  return [g.op('Gemm', [d, a], { transA: 1 }, `gW${l}`), g.op('ReduceSum', [d, g.constInt64([0])], { keepdims: 0 }, `gb${l}`)];
}

/** gradientOps, as the graph's outputs gW{l} and gb{l}. */
function layerGradient(g: GraphBuilder, spec: ModelSpec, l: number, d: string, a: string, units: number | string): void {
  gradientOps(g, l, d, a);
  g.output(`gW${l}`, [units, spec.sizes[l]]);
  g.output(`gb${l}`, [units]);
}

export function buildRowGraph(spec: ModelSpec, options: GraphOptions = {}): Uint8Array {
  const g = new GraphBuilder();
  const { hidden, deltas } = rowsForwardBackward(g, spec, options);
  hidden.forEach((h, l) => g.output(h, ['rows', spec.sizes[l + 1]]));
  deltas.forEach((d, l) => g.output(d, ['rows', spec.sizes[l + 1]]));
  return g.build('dtrain_rows');
}

/**
 * A whole step's gradient in one call, for a slot that computes every row and every unit itself: the row
 * graph's nodes followed by the weight graph's, with the same ops on the same values, so the gradient has
 * the same bits as the two passes give; but activations and deltas never leave onnxruntime (measured here:
 * ~0.3 ms a step less than two calls). Outputs rowLoss, gW{l} and gb{l}.
 */
export function buildStepGraph(spec: ModelSpec, options: GraphOptions = {}): Uint8Array {
  const g = new GraphBuilder();
  const { x, hidden, deltas } = rowsForwardBackward(g, spec, options);
  deltas.forEach((d, l) => layerGradient(g, spec, l, d, l === 0 ? x : hidden[l - 1], spec.sizes[l + 1]));
  return g.build('dtrain_step');
}

/** The names of a parameter tensor's Adam moments (train graph inputs; next_… its outputs). */
export const firstMomentName = (param: string) => `m_${param}`;
export const secondMomentName = (param: string) => `v_${param}`;
export const nextName = (name: string) => `next_${name}`;
/** The train graph's per-step Adam scalar inputs (ADAM_SCALARS), each [1], named adam_{scalar} (b2 is also a bias's name). */
export const adamInputName = (scalar: string) => `adam_${scalar}`;

/**
 * A whole step with the state on the device: the step graph, then Adam on every parameter tensor with the
 * wasm kernel's operations in its order (optim/adam.wat), so the next parameters and moments never leave
 * the device. Inputs: x, target, scale, W{l}, b{l}, their moments m_…, v_…, and ADAM_SCALARS; outputs:
 * rowLoss, next_… of every parameter and moment, and bad{l}, Σ g·0 over layer l's gradient (NaN exactly
 * when some element of it is not finite).
 */
export function buildTrainGraph(spec: ModelSpec, options: GraphOptions = {}): Uint8Array {
  const g = new GraphBuilder();
  const { x, hidden, deltas } = rowsForwardBackward(g, spec, options);
  const update = adamUpdate(g, spec);
  deltas.forEach((d, l) => update(l, gradientOps(g, l, d, l === 0 ? x : hidden[l - 1])));
  return g.build('dtrain_train');
}

/**
 * The weight pass over every unit of the rows given (inputs a{l} and d{l}, batch × width), then Adam, as the
 * train graph's second half: for a slot whose rows came from elsewhere (a remote replica's batch) while the
 * state stays on the device. Inputs and outputs otherwise as buildTrainGraph's, without rowLoss.
 */
export function buildApplyGraph(spec: ModelSpec): Uint8Array {
  const g = new GraphBuilder();
  const update = adamUpdate(g, spec);
  for (let l = 0; l + 1 < spec.sizes.length; l++) {
    const a = g.input(`a${l}`, ['batch', spec.sizes[l]]);
    const d = g.input(`d${l}`, ['batch', spec.sizes[l + 1]]);
    update(l, gradientOps(g, l, d, a));
  }
  return g.build('dtrain_apply');
}

/**
 * Adds the ADAM_SCALARS inputs; returns what applies Adam to layer l's parameters from its [weight, bias]
 * gradient: inputs W{l}, b{l} and their moments, outputs next_… of each and bad{l} (Σ g·0).
 */
function adamUpdate(g: GraphBuilder, spec: ModelSpec): (l: number, gradients: [string, string]) => void {
  const [c1, b2, c2, negStep, invBc2sqrt, eps] = ADAM_SCALARS.map((scalar) => g.input(adamInputName(scalar), [1]));
  const zero = g.constFloat(0);
  return (l, gradients) => {
    const dims = [[spec.sizes[l + 1], spec.sizes[l]], [spec.sizes[l + 1]]];
    [weightName(l), biasName(l)].forEach((name, i) => {
      const grad = gradients[i];
      const param = g.inputs.some((input) => input.name === name) ? name : g.input(name, dims[i]);
      const m = g.input(firstMomentName(name), dims[i]);
      const v = g.input(secondMomentName(name), dims[i]);
      // m = m + c1·(g − m); v = v·b2 + (c2·g)·g; p = p + negStep·(m / (sqrt(v)·invBc2sqrt + eps))
      const m2 = g.op('Add', [m, g.op('Mul', [c1, g.op('Sub', [grad, m])])], {}, nextName(m));
      const v2 = g.op('Add', [g.op('Mul', [v, b2]), g.op('Mul', [g.op('Mul', [c2, grad]), grad])], {}, nextName(v));
      const denominator = g.op('Add', [g.op('Mul', [g.op('Sqrt', [v2]), invBc2sqrt]), eps]);
      g.op('Add', [param, g.op('Mul', [negStep, g.op('Div', [m2, denominator])])], {}, nextName(param));
      for (const out of [param, m, v]) g.output(nextName(out), dims[i]);
    });
    const nan = (grad: string) => g.op('ReduceSum', [g.op('Mul', [grad, zero])], { keepdims: 0 });
    g.op('Add', [nan(gradients[0]), nan(gradients[1])], {}, `bad${l}`);
    g.output(`bad${l}`, []);
  };
}

/**
 * A copy of each named tensor: `in_{name}` to `out_{name}`. Run with its outputs kept on the device it
 * uploads the state; fed the device's tensors with outputs on the CPU it downloads them.
 */
export function buildCopyGraph(tensors: { name: string; dims: number[] }[]): Uint8Array {
  const g = new GraphBuilder();
  for (const { name, dims } of tensors) {
    g.op('Identity', [g.input(`in_${name}`, dims)], {}, `out_${name}`);
    g.output(`out_${name}`, dims);
  }
  return g.build('dtrain_copy');
}

/**
 * Every layer's gradient for a range of its output units, in one call: for layer l and units
 * [start_l, end_l), gW_l = d_l[:, start:end]ᵀ · a_l and gb_l = Σ_rows d_l[:, start:end]. An empty range gives
 * empty outputs. (One call for all layers rather than one per layer: four fewer call set-ups a step.)
 */
export function buildWeightGraph(spec: ModelSpec): Uint8Array {
  const g = new GraphBuilder();
  for (let l = 0; l + 1 < spec.sizes.length; l++) {
    const a = g.input(`a${l}`, ['batch', spec.sizes[l]]);
    const d = g.input(`d${l}`, ['batch', spec.sizes[l + 1]]);
    const start = g.input(`start${l}`, [1], INT64);
    const end = g.input(`end${l}`, [1], INT64);
    const part = g.op('Slice', [d, start, end, g.constInt64([1])]);
    layerGradient(g, spec, l, part, a, `units${l}`);
  }
  return g.build('dtrain_weight');
}

export function buildEvalGraph(spec: ModelSpec, options: GraphOptions = {}): Uint8Array {
  const g = new GraphBuilder();
  const classes = spec.sizes[spec.sizes.length - 1];
  const x = g.input('x', ['rows', spec.sizes[0]]);
  const target = g.input('target', ['rows', classes]);
  const { logits } = forward(g, spec, x);
  crossEntropy(g, logits, target, 'rowLoss', options);
  g.op('ArgMax', [logits], { axis: 1, keepdims: 0 }, 'predicted');
  g.output('rowLoss', ['rows']);
  g.output('predicted', ['rows'], INT64);
  return g.build('dtrain_eval');
}

/**
 * A standalone inference model of trained parameters: input "input" [N, features] (pixels in [0, 1]),
 * outputs "logits" and "probabilities" [N, classes]. Runs in onnxruntime in any language.
 */
export function buildInferenceModel(spec: ModelSpec, params: Float32Array): Uint8Array {
  const g = new GraphBuilder();
  const x = g.input('input', ['N', spec.sizes[0]]);
  const { logits } = forward(g, spec, x, params);
  g.op('Identity', [logits], {}, 'logits');
  g.op('Softmax', [logits], { axis: 1 }, 'probabilities');
  const classes = spec.sizes[spec.sizes.length - 1];
  g.output('logits', ['N', classes]);
  g.output('probabilities', ['N', classes]);
  return g.build('dtrain_mlp');
}
