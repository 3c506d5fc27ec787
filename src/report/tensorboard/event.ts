/**
 * The two protobuf messages of a scalar event file, encoded and decoded by hand (a few fields; no
 * protobuf runtime needed): tensorflow/core/util/event.proto's Event {wall_time = 1 (double), step = 2
 * (int64), file_version = 3 (string), summary = 5} and summary.proto's Summary {repeated Value value = 1},
 * Value {tag = 1 (string), simple_value = 2 (float)}.
 */

/** A file's first event: the version TensorBoard checks to know how to read the rest. */
export const FILE_VERSION = 'brain.Event:2';

export interface Scalar {
  tag: string;
  value: number;
}

export interface ScalarEvent {
  /** Seconds since the epoch. */
  wallTime: number;
  step: number;
  scalars: readonly Scalar[];
}

const VARINT = 0;
const FIXED64 = 1;
const LENGTH_DELIMITED = 2;
const FIXED32 = 5;

/** The bytes of a varint of a non-negative integer up to 2^53 (steps, lengths). */
function varintSize(value: number): number {
  let size = 1;
  for (let v = value; v >= 0x80; v = Math.floor(v / 0x80)) size++;
  return size;
}

/** Writes a varint at `at`; returns where it ends. Arithmetic, since bit operators stop at 32 bits. */
function writeVarint(target: Uint8Array, at: number, value: number): number {
  let v = value;
  while (v >= 0x80) {
    target[at++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  target[at++] = v;
  return at;
}

/** Appends protobuf fields to a growing list of byte chunks. */
class Encoder {
  private readonly chunks: Uint8Array[] = [];
  private size = 0;

  private push(bytes: Uint8Array): this {
    this.chunks.push(bytes);
    this.size += bytes.length;
    return this;
  }

  private varint(value: number): this {
    const bytes = Buffer.allocUnsafe(varintSize(value));
    writeVarint(bytes, 0, value);
    return this.push(bytes);
  }

  private key(field: number, wireType: number): this {
    return this.varint(field * 8 + wireType);
  }

  uint(field: number, value: number): this {
    return this.key(field, VARINT).varint(value);
  }

  double(field: number, value: number): this {
    const bytes = Buffer.alloc(8);
    bytes.writeDoubleLE(value);
    return this.key(field, FIXED64).push(bytes);
  }

  float(field: number, value: number): this {
    const bytes = Buffer.alloc(4);
    bytes.writeFloatLE(value);
    return this.key(field, FIXED32).push(bytes);
  }

  bytes(field: number, value: Uint8Array): this {
    return this.key(field, LENGTH_DELIMITED).varint(value.length).push(value);
  }

  string(field: number, value: string): this {
    return this.bytes(field, Buffer.from(value, 'utf8'));
  }

  finish(): Buffer {
    return Buffer.concat(this.chunks, this.size);
  }
}

export function encodeFileVersionEvent(wallTime: number): Buffer {
  return new Encoder().double(1, wallTime).uint(2, 0).string(3, FILE_VERSION).finish();
}

export function encodeScalarEvent({ wallTime, step, scalars }: ScalarEvent): Buffer {
  const summary = new Encoder();
  for (const { tag, value } of scalars) summary.bytes(1, new Encoder().string(1, tag).float(2, value).finish());
  return new Encoder().double(1, wallTime).uint(2, step).bytes(5, summary.finish()).finish();
}

/**
 * A scalar's Summary.value field up to its float (the field's key and length, the tag, simple_value's key):
 * the same for every event of a tag, so a log encodes its tags once (writeScalarEvent).
 */
export function scalarPrefix(tag: string): Buffer {
  const field = new Encoder().bytes(1, new Encoder().string(1, tag).float(2, 0).finish()).finish();
  return Buffer.from(field.subarray(0, field.length - 4));
}

const WALL_TIME_KEY = 1 * 8 + FIXED64;
const STEP_KEY = 2 * 8 + VARINT;
const SUMMARY_KEY = 5 * 8 + LENGTH_DELIMITED;

function summarySize(prefixes: readonly Buffer[]): number {
  let size = 0;
  for (const prefix of prefixes) size += prefix.length + 4;
  return size;
}

/** The size of encodeScalarEvent's bytes for a step and tags encoded by scalarPrefix. */
export function scalarEventSize(step: number, prefixes: readonly Buffer[]): number {
  const summary = summarySize(prefixes);
  return 1 + 8 + 1 + varintSize(step) + 1 + varintSize(summary) + summary;
}

/**
 * encodeScalarEvent's bytes written at `at` of `target` (scalarEventSize of them), from tags encoded once and
 * their values (`values[i]` of `prefixes[i]`), with no allocation: the training step's hot path.
 */
export function writeScalarEvent(target: Buffer, at: number, wallTime: number, step: number, prefixes: readonly Buffer[], values: ArrayLike<number>): void {
  target[at++] = WALL_TIME_KEY;
  at = target.writeDoubleLE(wallTime, at);
  target[at++] = STEP_KEY;
  at = writeVarint(target, at, step);
  target[at++] = SUMMARY_KEY;
  at = writeVarint(target, at, summarySize(prefixes));
  for (let i = 0; i < prefixes.length; i++) {
    at += prefixes[i].copy(target, at);
    at = target.writeFloatLE(values[i], at);
  }
}

/** The fields of a message, each with its wire type and its value (a number, or the bytes it holds). */
function* fields(message: Uint8Array): Generator<{ field: number; wireType: number; value: number | Uint8Array }> {
  const view = Buffer.from(message.buffer, message.byteOffset, message.byteLength);
  let at = 0;
  const varint = () => {
    let value = 0;
    for (let scale = 1; ; scale *= 0x80) {
      if (at >= view.length) throw new Error('protobuf: varint runs past the end');
      const byte = view[at++];
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
    }
  };
  while (at < view.length) {
    const key = varint();
    const wireType = key % 8;
    const field = Math.floor(key / 8);
    if (wireType === VARINT) {
      yield { field, wireType, value: varint() };
      continue;
    }
    const length = wireType === LENGTH_DELIMITED ? varint() : wireType === FIXED64 ? 8 : wireType === FIXED32 ? 4 : -1;
    if (length < 0) throw new Error(`protobuf: unsupported wire type ${wireType}`);
    if (at + length > view.length) throw new Error('protobuf: field runs past the end');
    yield { field, wireType, value: view.subarray(at, at + length) };
    at += length;
  }
}

/** An event's step and the tags of its scalars (what a resumed run needs to decide whether to keep it). */
export function decodeEventHeading(data: Uint8Array): { step: number; tags: string[] } {
  let step = 0;
  const tags: string[] = [];
  for (const event of fields(data)) {
    if (event.field === 2 && event.wireType === VARINT) step = event.value as number;
    if (event.field !== 5 || event.wireType !== LENGTH_DELIMITED) continue;
    for (const value of fields(event.value as Uint8Array)) {
      if (value.field !== 1 || value.wireType !== LENGTH_DELIMITED) continue;
      for (const part of fields(value.value as Uint8Array)) {
        if (part.field === 1 && part.wireType === LENGTH_DELIMITED) tags.push(Buffer.from(part.value as Uint8Array).toString('utf8'));
      }
    }
  }
  return { step, tags };
}
