import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import * as tfl from '@tensorflow/tfjs-layers';
import { encode } from 'fast-png';
import { createEngine } from '../src/engine/create.js';
import { loadDataset } from '../src/data/datasets.js';
import { train } from '../src/index.js';
import { evaluateSavedModel, loadSavedModel, predictImage } from '../src/inference.js';
import { listCheckpoints, readCheckpoint } from '../src/train/checkpoint.js';
import { oneHot } from './helpers.js';

const runDir = mkdtempSync(join(tmpdir(), 'dtrain-export-'));
const ROWS = 300;

async function trainedRun() {
  const summary = await train({ trainSamples: 1280, testSamples: ROWS, epochs: 1, threads: 2, out: runDir, logEvery: 1000 });
  const { params } = readCheckpoint(listCheckpoints(runDir)[0]);
  const dataset = loadDataset(undefined, { trainLimit: 1, testLimit: ROWS });
  // The trainer's own evaluation: the onnx engine's eval graph on the final parameters.
  const spec = { sizes: summary.model.sizes, activation: 'sigmoid' as const };
  const engine = await createEngine(spec, { engine: 'onnx', device: 'cpu' });
  engine.setParams(params);
  const own = { rowLoss: new Float32Array(ROWS), predicted: new Int32Array(ROWS) };
  await engine.evaluate(dataset.test.images, oneHot(dataset.test.labels, 10), ROWS, own);
  await engine.dispose();
  return { summary, dataset, predicted: own.predicted };
}
const run = trainedRun();

describe('model export', () => {
  it('loads in TensorFlow.js with tf.loadLayersModel and predicts the same classes as the trainer', async () => {
    const { dataset, predicted, summary } = await run;
    const modelDir = join(runDir, 'model');
    const json = JSON.parse(readFileSync(join(modelDir, 'model.json'), 'utf8'));
    const weightData = readFileSync(join(modelDir, 'weights.bin'));
    await tf.setBackend('cpu');
    // In Node without tfjs-node there is no file:// handler; this is what one does in its place.
    const model = await tfl.loadLayersModel({
      load: async () => ({
        modelTopology: json.modelTopology,
        weightSpecs: json.weightsManifest[0].weights,
        weightData: weightData.buffer.slice(weightData.byteOffset, weightData.byteOffset + weightData.byteLength),
      }),
    });
    const input = tf.tensor2d(dataset.test.images.slice(0, ROWS * 784), [ROWS, 784]);
    const probabilities = model.predict(input) as tf.Tensor2D;
    const classes = Array.from(await tf.argMax(probabilities, 1).data());
    expect(classes).toEqual(Array.from(predicted));
    expect(summary.epochs[0].testAccuracy).toBeCloseTo((100 * classes.filter((c, i) => c === dataset.test.labels[i]).length) / ROWS, 6);
  });

  it('runs as an ONNX model in onnxruntime with the same predictions, and dtrain eval agrees', async () => {
    const { dataset, predicted, summary } = await run;
    const model = await loadSavedModel(join(runDir, 'model'));
    const p = await model.probabilities(dataset.test.images, ROWS);
    await model.close();
    const classes = Array.from({ length: ROWS }, (_, r) => {
      const row = Array.from(p.subarray(r * 10, r * 10 + 10));
      return row.indexOf(Math.max(...row));
    });
    expect(classes).toEqual(Array.from(predicted));
    const report = await evaluateSavedModel(join(runDir, 'model'));
    expect(report.samples).toBe(10000);
    expect(report.confusion.flat().reduce((a, b) => a + b, 0)).toBe(10000);
    expect(summary.paramsSha256).toBe(JSON.parse(readFileSync(join(runDir, 'model', 'dtrain.json'), 'utf8')).paramsSha256);
  });

  it('classifies a 28×28 PNG, and names what is wrong with an image it cannot use', async () => {
    const { dataset, predicted } = await run;
    const pixels = Uint8Array.from(dataset.test.images.subarray(0, 784), (v) => Math.round(v * 255));
    const file = join(runDir, 'digit.png');
    writeFileSync(file, encode({ width: 28, height: 28, data: pixels, channels: 1, depth: 8 }));
    expect((await predictImage(join(runDir, 'model'), file)).predicted).toBe(predicted[0]);
    const big = join(runDir, 'big.png');
    writeFileSync(big, encode({ width: 30, height: 30, data: new Uint8Array(900), channels: 1, depth: 8 }));
    await expect(predictImage(join(runDir, 'model'), big)).rejects.toThrow(`${big}: expected 28×28 pixels (784), got 30×30`);
    const notPng = join(runDir, 'not.png');
    writeFileSync(notPng, 'hello');
    await expect(predictImage(join(runDir, 'model'), notPng)).rejects.toThrow(new RegExp(`^${notPng}: not a readable PNG`));
  });
});
