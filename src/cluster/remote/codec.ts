/**
 * How messages travel: a msgpack header (msgpackr) holding every field but the float and int arrays, which
 * follow it as their raw little-endian bytes, each at an offset that is a multiple of 4:
 *
 *   u32 LE header length | msgpack header | padding | array bytes | padding | array bytes | …
 *
 * In the header each such array is a reference {"@b": [offset, byteLength]} into the frame. A receiver
 * whose frame starts 4-aligned (ws hands a large message over in a buffer of its own) reads the arrays in
 * place, validates them there and copies them only into their destination; msgpack's own bin fields start
 * wherever the header puts them, which cost a copy of every array of a state snapshot or a slice. Decoding
 * only checks that a frame is a message at all (a map with a string "t", references within the frame);
 * what its fields must be is validation.ts's business. Also: the limits a WebSocket puts on both ends, the
 * largest frame accepted for a model, and close reasons cut to what a close frame carries.
 */
import { Packr } from 'msgpackr';
import { paramLayout, type ModelSpec } from '../../model/spec.js';
import { ProtocolError, type ToCoordinator, type ToPeer, type ToWorker } from './messages.js';

const packr = new Packr({ useRecords: false, moreTypes: false });

/** The key of an array reference in the header. */
const BLOB = '@b';
const align4 = (n: number) => (n + 3) & ~3;

/** The header: the message with each float/int array replaced by its index in `blobs` (offsets come later). */
function headerOf(value: unknown, blobs: Uint8Array[]): unknown {
  if (value instanceof Float32Array || value instanceof Int32Array) {
    blobs.push(new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
    return { [BLOB]: blobs.length - 1 };
  }
  if (Array.isArray(value)) return value.map((v) => headerOf(v, blobs));
  if (value && typeof value === 'object' && !(value instanceof Uint8Array)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, headerOf(v, blobs)]));
  }
  return value;
}

/** Replaces blob indices by [offset, byteLength], given where the first array starts. */
function placeBlobs(value: unknown, spans: [number, number][]): unknown {
  if (Array.isArray(value)) return value.map((v) => placeBlobs(v, spans));
  if (value && typeof value === 'object' && !(value instanceof Uint8Array)) {
    const map = value as Record<string, unknown>;
    if (BLOB in map) return { [BLOB]: spans[map[BLOB] as number] };
    return Object.fromEntries(Object.entries(map).map(([k, v]) => [k, placeBlobs(v, spans)]));
  }
  return value;
}

export function encode(message: ToWorker | ToCoordinator | ToPeer): Buffer {
  const blobs: Uint8Array[] = [];
  const indexed = headerOf(message, blobs);
  // The header's length depends on the offsets it holds: reserve for the widest (u32) ones, then place.
  const estimate = packr.pack(placeBlobs(indexed, blobs.map(() => [0xffffffff, 0xffffffff]))).length;
  let offset = align4(4 + estimate);
  const spans = blobs.map((b) => {
    const span: [number, number] = [offset, b.byteLength];
    offset = align4(offset + b.byteLength);
    return span;
  });
  // Offsets are reserved as u32: a frame of 4 GiB (~360 M parameters in a state) would outgrow them.
  if (offset > 0xffffffff) throw new RangeError(`a frame of ${offset} bytes is larger than the 4 GiB this format addresses`);
  const header = packr.pack(placeBlobs(indexed, spans));
  const frame = Buffer.allocUnsafe(offset);
  frame.writeUInt32LE(header.length, 0);
  header.copy(frame, 4);
  // The padding is zeroed: a frame's bytes are a function of its message (and no leftover memory leaks out).
  let end = 4 + header.length;
  blobs.forEach((b, i) => {
    frame.fill(0, end, spans[i][0]);
    frame.set(b, spans[i][0]);
    end = spans[i][0] + b.byteLength;
  });
  frame.fill(0, end);
  return frame;
}

/** How deep a message nests (its deepest is a list of arrays in a map in a list): more is refused. */
const MAX_DEPTH = 8;

/**
 * Array references replaced by views of the frame's bytes (checked to lie within it). References may
 * overlap: every receiver copies what it keeps, and a frame is never written to (it may be forwarded).
 */
function resolveBlobs(value: unknown, frame: Buffer, from: number, depth = 0): unknown {
  if (!value || typeof value !== 'object' || value instanceof Uint8Array) return value;
  if (depth > MAX_DEPTH) throw new ProtocolError(`undecodable frame (nested deeper than ${MAX_DEPTH} levels)`);
  if (Array.isArray(value)) return value.map((v) => resolveBlobs(v, frame, from, depth + 1));
  const map = value as Record<string, unknown>;
  if (BLOB in map) {
    const span = map[BLOB];
    const ok = Array.isArray(span) && span.length === 2 && span.every(Number.isInteger) && span[0] >= from && span[1] >= 0 && span[0] + span[1] <= frame.length;
    if (!ok) throw new ProtocolError(`undecodable frame (an array reference does not lie within its ${frame.length} bytes)`);
    return frame.subarray(span[0], span[0] + span[1]);
  }
  return Object.fromEntries(Object.entries(map).map(([k, v]) => [k, resolveBlobs(v, frame, from, depth + 1)]));
}

export function decodeRaw(data: Buffer | ArrayBuffer | Buffer[]): Record<string, unknown> {
  const frame = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
  if (frame.length < 4) throw new ProtocolError(`undecodable frame (${frame.length} bytes, too short for a header)`);
  const length = frame.readUInt32LE(0);
  if (length > frame.length - 4) throw new ProtocolError(`undecodable frame (a header of ${length} bytes does not fit in its ${frame.length} bytes)`);
  let value: unknown;
  try {
    value = packr.unpack(frame.subarray(4, 4 + length));
  } catch (e) {
    throw new ProtocolError(`undecodable frame (${(e as Error).message})`);
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new ProtocolError('a message must be a msgpack map');
  const t = (value as { t?: unknown }).t;
  if (typeof t !== 'string') throw new ProtocolError('a message needs a string field "t"');
  return resolveBlobs(value, frame, 4 + length) as Record<string, unknown>;
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
