import { describe, expect, it, beforeAll } from 'vitest';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { loadDataset, IDX_FILES } from '../src/data/datasets.js';
import { readIdxFile } from '../src/data/idx.js';

function idx(type: number, dims: number[], data: number[]): Buffer {
  const header = Buffer.alloc(4 + 4 * dims.length);
  header[2] = type;
  header[3] = dims.length;
  dims.forEach((d, i) => header.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([header, Buffer.from(data)]);
}

let dir: string;
const file = (name: string, bytes: Buffer) => {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
};

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dtrain-idx-'));
});

describe('IDX reader', () => {
  it('reads dimensions and elements, plain and gzip', () => {
    const bytes = idx(0x08, [2, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255]);
    for (const path of [file('plain', bytes), file('zipped.gz', gzipSync(bytes))]) {
      const a = readIdxFile(path, { type: 'uint8' });
      expect(a.dims).toEqual([2, 2, 3]);
      expect(Array.from(a.data)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255]);
    }
  });

  it.each([
    ['truncated', idx(0x08, [3, 2], [1, 2, 3, 4, 5]), /dimensions 3×2 need 18 bytes, the file has 17 \(truncated\?\)$/],
    ['trailing bytes', idx(0x08, [2], [1, 2, 3]), /dimensions 2 need 10 bytes, the file has 11 \(trailing bytes\)$/],
    ['wrong magic', Buffer.concat([Buffer.from([0x12, 0x34]), idx(0x08, [1], [1]).subarray(2)]), /expected magic bytes 0x00 0x00 at the start, got 0x12 0x34$/],
    ['unknown type', idx(0x07, [1], [1]), /unknown element type 0x07$/],
    ['wrong type', idx(0x0c, [1], [0, 0, 0, 1]), /expected uint8 elements, got int32$/],
    ['short header', Buffer.from([0, 0, 8, 3, 0, 0]), /header declares 3 dimensions \(16 bytes\) but the file has 6 bytes$/],
    ['tiny', Buffer.from([0, 0]), /expected at least a 4-byte header, got 2 bytes$/],
  ])('refuses a %s file with one line naming it', (name, bytes, message) => {
    const path = file(`bad-${name.replace(/ /g, '-')}`, bytes);
    expect(() => readIdxFile(path, { type: 'uint8' })).toThrow(message);
    expect(() => readIdxFile(path, { type: 'uint8' })).toThrow(`${path}: not a valid IDX file: `);
  });

  it('refuses corrupt gzip data', () => {
    const path = file('corrupt.gz', Buffer.concat([gzipSync(idx(0x08, [4], [1, 2, 3, 4])).subarray(0, 12)]));
    expect(() => readIdxFile(path)).toThrow(/not a valid IDX file: gzip data is corrupt/);
  });
});

describe('datasets', () => {
  const writeSet = (sub: string, trainCount: number, trainLabels: number) => {
    const d = join(dir, sub);
    mkdirSync(d, { recursive: true });
    const px = (n: number) => Array.from({ length: n * 4 }, (_, i) => (i * 51) % 256);
    writeFileSync(join(d, IDX_FILES.trainImages), idx(0x08, [trainCount, 2, 2], px(trainCount)));
    writeFileSync(join(d, `${IDX_FILES.trainLabels}.gz`), gzipSync(idx(0x08, [trainLabels], Array.from({ length: trainLabels }, (_, i) => i % 3))));
    writeFileSync(join(d, IDX_FILES.testImages), idx(0x08, [2, 2, 2], px(2)));
    writeFileSync(join(d, IDX_FILES.testLabels), idx(0x08, [2], [2, 0]));
    return d;
  };

  it('reads a directory of IDX files, plain or .gz, scaling pixels like ToTensor', () => {
    const ds = loadDataset(writeSet('good', 3, 3));
    expect(ds.features).toBe(4);
    expect(ds.classes).toBe(3);
    expect(ds.train.count).toBe(3);
    expect(ds.train.images[1]).toBe(Math.fround(51 / 255));
    expect(Array.from(ds.test.targets)).toEqual([0, 0, 1, 1, 0, 0]);
  });

  it('refuses images and labels of different counts', () => {
    const d = writeSet('mismatch', 3, 4);
    expect(() => loadDataset(d)).toThrow(`${d}: train-images-idx3-ubyte has 3 images but train-labels-idx1-ubyte has 4 labels`);
  });

  it('names a missing file', () => {
    expect(() => loadDataset(join(dir, 'nothing'))).toThrow(/nothing: missing train-images-idx3-ubyte \(or train-images-idx3-ubyte.gz\)$/);
  });

  it('embeds the real MNIST: 60000 + 10000 images of 28×28 in 10 classes', () => {
    const ds = loadDataset(undefined, { trainLimit: 100, testLimit: 100 });
    expect(ds.features).toBe(784);
    expect(ds.classes).toBe(10);
    expect(ds.train.count).toBe(100);
    // The first training image of MNIST is a 5.
    expect(ds.train.labels[0]).toBe(5);
    expect(ds.sha256).toMatch(/^[0-9a-f]{64}$/);
  });
});
