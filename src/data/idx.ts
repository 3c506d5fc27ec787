/**
 * IDX files (MNIST's format): a big-endian header — two zero bytes, an element-type code, the number of
 * dimensions — then one uint32 per dimension, then the elements. Plain or gzip-compressed.
 */
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { idxInvalid } from '../errors.js';

const ELEMENT_TYPES: Record<number, { name: string; bytes: number }> = {
  0x08: { name: 'uint8', bytes: 1 },
  0x09: { name: 'int8', bytes: 1 },
  0x0b: { name: 'int16', bytes: 2 },
  0x0c: { name: 'int32', bytes: 4 },
  0x0d: { name: 'float32', bytes: 4 },
  0x0e: { name: 'float64', bytes: 8 },
};

export interface IdxArray {
  type: string;
  dims: number[];
  /** The raw elements (uint8 data is returned as is; dtrain only reads uint8 IDX files). */
  data: Uint8Array;
}

export function readIdxFile(file: string, expect?: { type?: string; rank?: number }): IdxArray {
  let bytes: Uint8Array = readFileSync(file);
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = gunzipSync(bytes);
    } catch (e) {
      throw idxInvalid(file, `gzip data is corrupt (${(e as Error).message})`);
    }
  }
  return parseIdx(bytes, file, expect);
}

export function parseIdx(bytes: Uint8Array, file: string, expect?: { type?: string; rank?: number }): IdxArray {
  if (bytes.length < 4) throw idxInvalid(file, `expected at least a 4-byte header, got ${bytes.length} bytes`);
  if (bytes[0] !== 0 || bytes[1] !== 0) {
    throw idxInvalid(file, `expected magic bytes 0x00 0x00 at the start, got 0x${hex(bytes[0])} 0x${hex(bytes[1])}`);
  }
  const element = ELEMENT_TYPES[bytes[2]];
  if (!element) throw idxInvalid(file, `unknown element type 0x${hex(bytes[2])}`);
  const rank = bytes[3];
  if (rank < 1) throw idxInvalid(file, 'expected at least one dimension, got 0');
  const headerBytes = 4 + 4 * rank;
  if (bytes.length < headerBytes) {
    throw idxInvalid(file, `header declares ${rank} dimensions (${headerBytes} bytes) but the file has ${bytes.length} bytes`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dims: number[] = [];
  for (let i = 0; i < rank; i++) dims.push(view.getUint32(4 + 4 * i, false));
  if (expect?.type && element.name !== expect.type) {
    throw idxInvalid(file, `expected ${expect.type} elements, got ${element.name}`);
  }
  if (expect?.rank && rank !== expect.rank) {
    throw idxInvalid(file, `expected ${expect.rank} dimensions, got ${rank} (${dims.join('×')})`);
  }
  const count = dims.reduce((a, b) => a * b, 1);
  const expectedBytes = headerBytes + count * element.bytes;
  if (bytes.length !== expectedBytes) {
    throw idxInvalid(
      file,
      `dimensions ${dims.join('×')} need ${expectedBytes} bytes, the file has ${bytes.length}` +
        (bytes.length < expectedBytes ? ' (truncated?)' : ' (trailing bytes)'),
    );
  }
  return { type: element.name, dims, data: bytes.subarray(headerBytes) };
}

function hex(b: number): string {
  return b.toString(16).padStart(2, '0');
}
