/**
 * The trained model on disk, in two formats others can load:
 * - model.json + weights.bin: a TensorFlow.js LayersModel (Sequential of Dense layers, softmax last),
 *   for tf.loadLayersModel in Node or a browser;
 * - model.onnx: an inference ONNX model (input "input", outputs "logits" and "probabilities").
 * Plus dtrain.json, the spec and the parameters' hash, which `dtrain eval` and `predict` read.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildInferenceModel } from '../engine/onnx/graph.js';
import { paramLayout, type ModelSpec } from '../model/spec.js';
import { paramsSha256 } from '../model/checksum.js';

export interface SavedModelInfo {
  spec: ModelSpec;
  paramsSha256: string;
  dataset: string;
}

export function exportModel(dir: string, spec: ModelSpec, params: Float32Array, dataset: string): void {
  mkdirSync(dir, { recursive: true });
  const layout = paramLayout(spec);
  const weights: { name: string; shape: number[]; dtype: 'float32' }[] = [];
  const chunks: Buffer[] = [];
  const layers = layout.layers.map((layer, l) => {
    // Keras stores a Dense kernel as [in, out]: the transpose of PyTorch's (and dtrain's) [out, in].
    const kernel = Buffer.alloc(4 * layer.fanIn * layer.fanOut);
    for (let o = 0; o < layer.fanOut; o++) {
      for (let i = 0; i < layer.fanIn; i++) kernel.writeFloatLE(params[layer.weightOffset + o * layer.fanIn + i], 4 * (i * layer.fanOut + o));
    }
    const bias = Buffer.alloc(4 * layer.fanOut);
    for (let o = 0; o < layer.fanOut; o++) bias.writeFloatLE(params[layer.biasOffset + o], 4 * o);
    chunks.push(kernel, bias);
    const name = `dense_${l}`;
    weights.push({ name: `${name}/kernel`, shape: [layer.fanIn, layer.fanOut], dtype: 'float32' });
    weights.push({ name: `${name}/bias`, shape: [layer.fanOut], dtype: 'float32' });
    const last = l + 1 === layout.layers.length;
    return {
      class_name: 'Dense',
      config: {
        name,
        units: layer.fanOut,
        activation: last ? 'softmax' : spec.activation,
        use_bias: true,
        trainable: true,
        dtype: 'float32',
        ...(l === 0 ? { batch_input_shape: [null, layer.fanIn] } : {}),
      },
    };
  });
  const modelJson = {
    format: 'layers-model',
    generatedBy: 'dtrain',
    convertedBy: null,
    modelTopology: { class_name: 'Sequential', config: { name: 'dtrain_mlp', layers }, keras_version: 'tfjs-layers', backend: 'tensor_flow.js' },
    weightsManifest: [{ paths: ['weights.bin'], weights }],
  };
  writeFileSync(join(dir, 'model.json'), JSON.stringify(modelJson));
  writeFileSync(join(dir, 'weights.bin'), Buffer.concat(chunks));
  writeFileSync(join(dir, 'model.onnx'), buildInferenceModel(spec, params));
  const info: SavedModelInfo = { spec, paramsSha256: paramsSha256(params), dataset };
  writeFileSync(join(dir, 'dtrain.json'), `${JSON.stringify(info, null, 2)}\n`);
}

export function readModelInfo(dir: string): SavedModelInfo {
  try {
    return JSON.parse(readFileSync(join(dir, 'dtrain.json'), 'utf8')) as SavedModelInfo;
  } catch (e) {
    throw new Error(`${dir}: not a dtrain model directory (dtrain.json: ${(e as Error).message})`);
  }
}
