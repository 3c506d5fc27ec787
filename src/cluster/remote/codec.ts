/**
 * How messages travel: msgpack maps (msgpackr), with every float and int array sent as its raw
 * little-endian bytes rather than as a msgpack list (a state snapshot is megabytes of floats), and the
 * limits a WebSocket puts on both ends: the largest frame accepted for a model, and close reasons cut
 * to what a close frame carries. Decoding only checks that a frame is a message at all (a map with a
 * string "t"); what its fields must be is validation.ts's business.
 */
import { Packr } from 'msgpackr';
import { paramLayout, type ModelSpec } from '../../model/spec.js';
import { ProtocolError, type ToCoordinator, type ToWorker } from './messages.js';

const packr = new Packr({ useRecords: false, moreTypes: false });

function bytesOf(a: Float32Array | Int32Array | Uint8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function encodeValue(value: unknown): unknown {
  if (value instanceof Float32Array || value instanceof Int32Array) return bytesOf(value);
  if (Array.isArray(value)) return value.map(encodeValue);
  if (value && typeof value === 'object' && !(value instanceof Uint8Array)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, encodeValue(v)]));
  }
  return value;
}

export function encode(message: ToWorker | ToCoordinator): Buffer {
  return packr.pack(encodeValue(message));
}

export function decodeRaw(data: Buffer | ArrayBuffer | Buffer[]): Record<string, unknown> {
  const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
  let value: unknown;
  try {
    value = packr.unpack(buf);
  } catch (e) {
    throw new ProtocolError(`undecodable frame (${(e as Error).message})`);
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new ProtocolError('a message must be a msgpack map');
  const t = (value as { t?: unknown }).t;
  if (typeof t !== 'string') throw new ProtocolError('a message needs a string field "t"');
  return value as Record<string, unknown>;
}

/** Longest close reason a WebSocket close frame carries, in UTF-8 bytes (RFC 6455: 125 less the code). */
const MAX_CLOSE_REASON_BYTES = 123;

/**
 * A close reason cut to what a close frame can carry, in UTF-8 bytes and on a character boundary: ws
 * throws on a longer one, and reasons quote what peers sent (any bytes at all).
 */
export function closeReason(text: string): string {
  if (Buffer.byteLength(text) <= MAX_CLOSE_REASON_BYTES) return text;
  let out = '';
  let bytes = 0;
  for (const ch of text) {
    const n = Buffer.byteLength(ch);
    if (bytes + n > MAX_CLOSE_REASON_BYTES - 3) break;
    out += ch;
    bytes += n;
  }
  return `${out}...`;
}

/** The largest frame either side accepts for a model: a full state snapshot plus room for the rest. */
export function maxFrameBytes(spec: ModelSpec, batchSize: number): number {
  const params = paramLayout(spec).total;
  const rowWidth = spec.sizes.reduce((a, b) => a + b, 0) * 2;
  return 3 * 4 * params + 4 * batchSize * rowWidth + (1 << 20);
}
