/**
 * The MLP a run trains, and the one flat parameter layout every process agrees on:
 * for each layer in order, W as [out, in] row-major (PyTorch's nn.Linear.weight), then b as [out].
 */
import { invalidOption } from '../errors.js';

export const ACTIVATIONS = ['sigmoid', 'relu', 'tanh'] as const;
export type Activation = (typeof ACTIVATIONS)[number];

export interface ModelSpec {
  /** Width of every layer, input first, classes last: [784, 512, 256, 128, 64, 10]. */
  sizes: number[];
  /** Applied after every hidden layer; the last layer's logits go to softmax cross-entropy. */
  activation: Activation;
}

export interface LayerLayout {
  fanIn: number;
  fanOut: number;
  /** Offset of W (fanOut × fanIn floats) in the flat parameter vector. */
  weightOffset: number;
  /** Offset of b (fanOut floats). */
  biasOffset: number;
}

export interface ParamLayout {
  layers: LayerLayout[];
  total: number;
}

export const DEFAULT_HIDDEN = [512, 256, 128, 64];

export function makeSpec(inputSize: number, hidden: number[], classes: number, activation: Activation): ModelSpec {
  if (!Number.isInteger(inputSize) || inputSize < 1) throw invalidOption('input size', 'a positive integer', inputSize);
  if (!Number.isInteger(classes) || classes < 2) throw invalidOption('classes', 'an integer of at least 2', classes);
  for (const h of hidden) {
    if (!Number.isInteger(h) || h < 1) throw invalidOption('hidden', 'a comma-separated list of positive integers', hidden.join(','));
  }
  if (!ACTIVATIONS.includes(activation)) throw invalidOption('activation', ACTIVATIONS.join(' | '), activation);
  return { sizes: [inputSize, ...hidden, classes], activation };
}

export function paramLayout(spec: ModelSpec): ParamLayout {
  const layers: LayerLayout[] = [];
  let offset = 0;
  for (let l = 0; l + 1 < spec.sizes.length; l++) {
    const fanIn = spec.sizes[l];
    const fanOut = spec.sizes[l + 1];
    layers.push({ fanIn, fanOut, weightOffset: offset, biasOffset: offset + fanIn * fanOut });
    offset += fanIn * fanOut + fanOut;
  }
  return { layers, total: offset };
}

/** Widths of the activations a batch produces between layers (what the weight pass reads back). */
export function hiddenSizes(spec: ModelSpec): number[] {
  return spec.sizes.slice(1, -1);
}

export function describeSpec(spec: ModelSpec): string {
  return `${spec.sizes.join('→')} (${spec.activation})`;
}
