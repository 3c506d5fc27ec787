/**
 * Using an exported model (report/export.ts): `dtrain eval` (accuracy, average loss, confusion matrix on
 * a dataset's test split) and `dtrain predict` (the class of one 28×28 PNG), both through model.onnx in
 * onnxruntime — the same file any other onnxruntime user would load.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decode } from 'fast-png';
import type * as Ort from 'onnxruntime-node';
import { loadDataset } from './data/datasets.js';
import { readModelInfo, type SavedModelInfo } from './report/export.js';
import { datasetMismatch, imageInvalid } from './errors.js';

export interface SavedModel {
  info: SavedModelInfo;
  /** Class probabilities for `rows` inputs of `features` pixels each. */
  probabilities(input: Float32Array, rows: number): Promise<Float32Array>;
  close(): Promise<void>;
}

export async function loadSavedModel(dir: string): Promise<SavedModel> {
  const info = readModelInfo(dir);
  const ort = (await import('onnxruntime-node')).default as unknown as typeof Ort;
  const session = await ort.InferenceSession.create(readFileSync(join(dir, 'model.onnx')), { intraOpNumThreads: 1 });
  const features = info.spec.sizes[0];
  return {
    info,
    async probabilities(input, rows) {
      const result = await session.run({ input: new ort.Tensor('float32', input.slice(0, rows * features), [rows, features]) });
      return result.probabilities.data as Float32Array;
    },
    close: () => session.release(),
  };
}

export interface EvaluationReport {
  samples: number;
  accuracy: number;
  /** The tutorial's average loss: the mean over batches of 64 of each batch's mean cross-entropy. */
  avgLoss: number;
  /** confusion[label][predicted] = count. */
  confusion: number[][];
}

export async function evaluateSavedModel(dir: string, dataDir?: string, batchSize = 64): Promise<EvaluationReport> {
  const model = await loadSavedModel(dir);
  try {
    const dataset = loadDataset(dataDir, { trainLimit: 1 });
    const { sizes } = model.info.spec;
    const classes = sizes[sizes.length - 1];
    if (dataset.features !== sizes[0] || dataset.classes > classes) {
      throw datasetMismatch(dataset.dir, `has ${dataset.features} features and ${dataset.classes} classes, the model expects ${sizes[0]} and ${classes}`);
    }
    const { count, images, labels } = dataset.test;
    const confusion = Array.from({ length: classes }, () => new Array<number>(classes).fill(0));
    let correct = 0;
    let lossOfBatches = 0;
    let batches = 0;
    for (let start = 0; start < count; start += batchSize) {
      const rows = Math.min(batchSize, count - start);
      const p = await model.probabilities(images.subarray(start * sizes[0], (start + rows) * sizes[0]), rows);
      let loss = 0;
      for (let r = 0; r < rows; r++) {
        const row = p.subarray(r * classes, (r + 1) * classes);
        let best = 0;
        for (let k = 1; k < classes; k++) if (row[k] > row[best]) best = k;
        const label = labels[start + r];
        confusion[label][best]++;
        if (best === label) correct++;
        loss -= Math.log(Math.max(row[label], Number.MIN_VALUE));
      }
      lossOfBatches += loss / rows;
      batches++;
    }
    return { samples: count, accuracy: (100 * correct) / count, avgLoss: lossOfBatches / batches, confusion };
  } finally {
    await model.close();
  }
}

/**
 * Pixels of a PNG as the model's input: grayscale (RGB averaged, alpha over black), scaled to [0, 1] like
 * ToTensor. MNIST digits are light on dark; `invert` turns a dark-on-light drawing around.
 */
export function pngToInput(file: string, features: number, invert = false): Float32Array {
  let png;
  try {
    png = decode(readFileSync(file));
  } catch (e) {
    throw imageInvalid(file, `not a readable PNG (${(e as Error).message})`);
  }
  if (png.width * png.height !== features) {
    throw imageInvalid(file, `expected ${Math.sqrt(features)}×${Math.sqrt(features)} pixels (${features}), got ${png.width}×${png.height}`);
  }
  const max = 2 ** png.depth - 1;
  const input = new Float32Array(features);
  const color = png.channels >= 3 ? 3 : 1;
  const hasAlpha = png.channels === 2 || png.channels === 4;
  if (png.palette) throw imageInvalid(file, 'indexed-colour PNGs are not supported; save it as grayscale or RGB');
  for (let i = 0; i < features; i++) {
    let v = 0;
    for (let c = 0; c < color; c++) v += png.data[i * png.channels + c];
    v /= color * max;
    if (hasAlpha) v *= png.data[i * png.channels + png.channels - 1] / max;
    input[i] = invert ? 1 - v : v;
  }
  return input;
}

export async function predictImage(dir: string, file: string, invert = false): Promise<{ predicted: number; probabilities: number[] }> {
  const model = await loadSavedModel(dir);
  try {
    const p = await model.probabilities(pngToInput(file, model.info.spec.sizes[0], invert), 1);
    const probabilities = Array.from(p);
    return { predicted: probabilities.indexOf(Math.max(...probabilities)), probabilities };
  } finally {
    await model.close();
  }
}
