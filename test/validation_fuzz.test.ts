/**
 * Property-based tests (fast-check) of what each side accepts from the other. Over arbitrary msgpack-like
 * values, over objects whose "t" is a real message type, and over mutations of valid messages (a field
 * dropped or retyped, a binary array truncated or extended, ints out of range, NaN and infinities in
 * float arrays, wrong row ranges), validation either refuses with a ProtocolError (NonFiniteError is one)
 * or returns a message of exactly the shape the view expects, which encodes and validates again to the
 * same message. Decoding random bytes fails only with a ProtocolError. A failure prints fast-check's seed
 * and its shrunk counterexample; the runs are bounded so that the file takes a few seconds.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeRaw, encode } from '../src/cluster/remote/codec.js';
import { PROTOCOL_VERSION, ProtocolError, type ToCoordinator, type ToWorker } from '../src/cluster/remote/messages.js';
import { validateFromCoordinator, validateFromWorker, type CoordinatorView, type WorkerView } from '../src/cluster/remote/validation.js';
import { makeSpec, paramLayout } from '../src/model/spec.js';
import { sliceLength } from '../src/cluster/unit_slices.js';
import type { Range } from '../src/cluster/plan.js';

const RUNS = { numRuns: 300 };

// Two hidden layers, so that hidden and delta lists hold more than one array.
const spec = makeSpec(4, [3, 5], 2, 'relu');
const sizes = spec.sizes;
const total = paramLayout(spec).total;
const BATCH = 6;
const STEP = 7;
const ASKED: [number, number] = [2, 5];
// A share of a sharded step: some units of each layer (fan-outs 3, 5, 2), one layer's share empty.
const UNITS: Range[] = [[0, 2], [1, 5], [1, 1]];
const SHARE = sliceLength(spec, UNITS);

const floats = (n: number) => new Float32Array(n).fill(0.25);
const hiddenCounts = (rows: number) => sizes.slice(1, -1).map((n) => rows * n);
const deltaCounts = (rows: number, compact: boolean) => (compact ? sizes.slice(-1) : sizes.slice(1)).map((n) => rows * n);
const rowArrays = (rows: number, compact: boolean) => ({ hidden: hiddenCounts(rows).map(floats), deltas: deltaCounts(rows, compact).map(floats) });

// ---------------------------------------------------------------- views and valid messages

const owes = (compact: boolean): CoordinatorView => ({ spec, batchSize: BATCH, pendingStep: STEP, pendingRange: ASKED, pendingSnapshot: STEP, pendingCompact: compact, pendingLossOnly: false, pendingSlice: { step: STEP, units: UNITS } });
const owesNothing: CoordinatorView = { ...owes(false), pendingStep: undefined, pendingRange: undefined, pendingSnapshot: undefined, pendingSlice: undefined };
/** An owner of a sharded run asked for its shard of the state. */
const owesShard: CoordinatorView = { ...owes(false), pendingSnapshotUnits: UNITS };
/** A sole replica asked for its rows' losses only. */
const owesLosses: CoordinatorView = { ...owes(false), pendingLossOnly: true };
const COORDINATOR_VIEWS: (CoordinatorView | undefined)[] = [undefined, owes(false), owes(true), owesNothing, owesShard, owesLosses];

const beforeWelcome: WorkerView = { welcomed: false, spec: undefined, batchSize: 0 };
const beforeState: WorkerView = { ...beforeWelcome, welcomed: true };
const synced: WorkerView = { welcomed: true, spec, batchSize: BATCH };
const WORKER_VIEWS = [beforeWelcome, beforeState, synced];

/** Each valid message of a direction, with the view that accepts it. */
const FROM_WORKER: [ToCoordinator, CoordinatorView | undefined][] = [
  [{ t: 'hello', protocol: PROTOCOL_VERSION, mac: new Uint8Array(32), nonce: new Uint8Array(32), engine: 'onnx', device: 'cpu', backend: 'onnx (cpu)', threads: 2, dataSha256: '' }, undefined],
  [{ t: 'hello', protocol: PROTOCOL_VERSION, mac: new Uint8Array(32), nonce: new Uint8Array(32), engine: 'onnx', device: 'cpu', backend: 'onnx (cpu)', threads: 2, dataSha256: '', rank: 3, name: 'gpu-box_2.lab' }, undefined],
  [{ t: 'rowsDone', step: STEP, range: ASKED, rowLoss: floats(3), ...rowArrays(3, false), ms: 1.5, applyMs: 2.25, waitMs: 0.5, queuedMs: 0.75 }, owes(false)],
  [{ t: 'rowsDone', step: STEP, range: ASKED, rowLoss: floats(3), ...rowArrays(3, true), ms: 1.5, applyMs: 2.25, waitMs: 0.5, queuedMs: 0.75 }, owes(true)],
  [{ t: 'rowsDone', step: STEP, range: ASKED, rowLoss: floats(3), hidden: [], deltas: [], ms: 1.5, applyMs: 2.25, waitMs: 0.5, queuedMs: 0.75 }, owesLosses],
  [{ t: 'checksum', step: STEP, sha256: 'ab'.repeat(32) }, owes(false)],
  [{ t: 'replicaState', step: STEP, params: floats(total), m: floats(total), v: floats(total) }, owes(false)],
  [{ t: 'replicaState', step: STEP, params: floats(SHARE), m: floats(SHARE), v: floats(SHARE) }, owesShard],
  [{ t: 'slice', step: STEP, units: UNITS, params: floats(SHARE) }, owes(false)],
  [{ t: 'error', message: 'out of memory' }, undefined],
];

const FROM_COORDINATOR: [ToWorker, WorkerView][] = [
  [{ t: 'challenge', protocol: PROTOCOL_VERSION, nonce: new Uint8Array(32) }, beforeWelcome],
  [{ t: 'welcome', proof: new Uint8Array(32), workerId: 3, heartbeatMs: 500, maxFrameBytes: 8 << 20 }, beforeWelcome],
  [
    {
      t: 'state',
      spec,
      batchSize: BATCH,
      adam: { lr: 0.001, beta1: 0.9, beta2: 0.999, eps: 1e-8 },
      step: STEP,
      generation: 1,
      params: floats(total),
      m: floats(total),
      v: floats(total),
      useLocalData: false,
      plan: 'replicated',
    },
    beforeState,
  ],
  [{ t: 'rows', step: STEP, batch: BATCH, range: ASKED, labels: Uint8Array.of(0, 1, 0, 1, 0, 1), compact: false, lossOnly: false, x: floats(BATCH * sizes[0]) }, synced],
  [{ t: 'rows', step: STEP, batch: BATCH, range: ASKED, labels: Uint8Array.of(1, 1, 0, 0, 1, 0), compact: true, lossOnly: true, index: Int32Array.of(5, 4, 3, 2, 1, 0) }, synced],
  [{ t: 'rowsDone', step: STEP, range: ASKED, rowLoss: floats(3), ...rowArrays(3, false), ms: 0, applyMs: 0, waitMs: 0, queuedMs: 0 }, synced],
  [{ t: 'rowsDone', step: STEP, range: ASKED, rowLoss: floats(3), ...rowArrays(3, true), ms: 0, applyMs: 0, waitMs: 0, queuedMs: 0 }, synced],
  [
    {
      t: 'update',
      step: STEP,
      batch: BATCH,
      parts: [
        { range: [0, 2], x: floats(2 * sizes[0]), ...rowArrays(2, false) },
        { range: [5, 6], x: floats(sizes[0]), ...rowArrays(1, true) },
      ],
    },
    synced,
  ],
  [{ t: 'update', step: STEP, batch: BATCH, parts: [], units: UNITS }, synced],
  [{ t: 'slice', step: STEP, units: UNITS, params: floats(SHARE) }, synced],
  [{ t: 'check', step: STEP }, synced],
  [{ t: 'snapshot', step: STEP }, synced],
  [{ t: 'snapshot', step: STEP, units: UNITS }, synced],
  [{ t: 'error', message: 'worker 3 did not answer' }, beforeWelcome],
];

// ---------------------------------------------------------------- what an accepted message must be

function expectFloats(a: unknown, count: number, finite: boolean): void {
  expect(a).toBeInstanceOf(Float32Array);
  expect((a as Float32Array).length).toBe(count);
  if (finite) expect((a as Float32Array).every(Number.isFinite)).toBe(true);
}

function expectRange(r: unknown, max: number): [number, number] {
  const [a, b] = r as [number, number];
  expect(r).toHaveLength(2);
  expect(Number.isInteger(a) && Number.isInteger(b) && a >= 0 && a < b && b <= max).toBe(true);
  return [a, b];
}

/** Rows' arrays, in full or (compact) only the last delta; `compact` undefined: either form. */
function expectRowArrays(m: { hidden: unknown[]; deltas: unknown[] }, rows: number, compact: boolean | undefined, finite: boolean): void {
  const deltas = deltaCounts(rows, compact ?? m.deltas.length === 1);
  expect(m.hidden).toHaveLength(hiddenCounts(rows).length);
  expect(m.deltas).toHaveLength(deltas.length);
  hiddenCounts(rows).forEach((n, i) => expectFloats(m.hidden[i], n, finite));
  deltas.forEach((n, i) => expectFloats(m.deltas[i], n, finite));
}

/** One unit range per layer, within its fan-out (possibly empty). */
function expectUnits(units: Range[]): void {
  expect(units).toHaveLength(sizes.length - 1);
  units.forEach(([u0, u1], l) => expect(Number.isInteger(u0) && Number.isInteger(u1) && u0 >= 0 && u0 <= u1 && u1 <= sizes[l + 1]).toBe(true));
}

function expectInt(v: unknown, min = 0, max = Number.MAX_SAFE_INTEGER): void {
  expect(Number.isInteger(v) && (v as number) >= min && (v as number) <= max).toBe(true);
}

/** A worker's accepted message is what the coordinator asked for, with every array of its size, finite. */
function expectWorkerShape(m: ToCoordinator, view: CoordinatorView | undefined): void {
  if (m.t === 'hello') {
    expect(m.protocol).toBe(PROTOCOL_VERSION);
    expect(m.nonce).toHaveLength(32);
    expect(m.mac).toBeInstanceOf(Uint8Array);
    expectInt(m.threads, 1, 1024);
    if (m.name !== undefined) expect(m.name).toMatch(/^[A-Za-z0-9._-]{1,64}$/);
  } else if (m.t === 'rowsDone') {
    expect(m.step).toBe(view!.pendingStep);
    expect(m.range).toEqual(view!.pendingRange);
    const rows = m.range[1] - m.range[0];
    expectFloats(m.rowLoss, rows, true);
    if (view!.pendingLossOnly) expect([m.hidden, m.deltas]).toEqual([[], []]);
    else expectRowArrays(m, rows, view!.pendingCompact, true);
    // A worker's reported times: finite, non-negative, at most an hour.
    for (const ms of [m.ms, m.applyMs, m.waitMs, m.queuedMs]) expect(Number.isFinite(ms) && ms >= 0 && ms <= 3_600_000).toBe(true);
  } else if (m.t === 'replicaState') {
    expect(m.step).toBe(view!.pendingSnapshot);
    const units = view!.pendingSnapshotUnits;
    for (const a of [m.params, m.m, m.v]) expectFloats(a, units ? sliceLength(spec, units) : total, true);
  } else if (m.t === 'slice') {
    expect(m.step).toBe(view!.pendingSlice!.step);
    expect(m.units).toEqual(view!.pendingSlice!.units);
    expectFloats(m.params, sliceLength(spec, m.units), true);
  } else if (m.t === 'checksum') {
    expectInt(m.step);
    expect(typeof m.sha256).toBe('string');
  } else {
    expect(typeof m.message).toBe('string');
  }
}

/** The coordinator's accepted message fits the model the worker holds (its arrays are not scanned for values). */
function expectCoordinatorShape(m: ToWorker, view: WorkerView): void {
  if (!view.welcomed) expect(['challenge', 'welcome', 'error']).toContain(m.t);
  switch (m.t) {
    case 'challenge':
      return expect(m.nonce).toHaveLength(32);
    case 'welcome':
      return expectInt(m.heartbeatMs, 1, 3_600_000);
    case 'state': {
      const n = paramLayout(m.spec).total;
      for (const a of [m.params, m.m, m.v]) expectFloats(a, n, true);
      return expectInt(m.batchSize, 1, 1 << 16);
    }
    case 'rows': {
      expectInt(m.batch, 1, view.batchSize);
      expectRange(m.range, m.batch);
      expect(m.labels).toHaveLength(m.batch);
      expect(m.labels.every((l) => l < sizes[sizes.length - 1])).toBe(true);
      if (m.x) expectFloats(m.x, m.batch * sizes[0], false);
      else expect(m.index).toBeInstanceOf(Int32Array), expect(m.index).toHaveLength(m.batch);
      return;
    }
    case 'rowsDone': {
      const [a, b] = expectRange(m.range, view.batchSize);
      expectFloats(m.rowLoss, b - a, false);
      return expectRowArrays(m, b - a, undefined, false);
    }
    case 'slice':
      expectUnits(m.units);
      return expectFloats(m.params, sliceLength(spec, m.units), false);
    case 'snapshot':
      if (m.units) expectUnits(m.units);
      return;
    case 'update':
      if (m.units) expectUnits(m.units);
      expectInt(m.batch, 1, view.batchSize);
      for (const part of m.parts) {
        const [a, b] = expectRange(part.range, m.batch);
        expectFloats(part.x, (b - a) * sizes[0], false);
        expectRowArrays(part, b - a, undefined, false);
      }
      return;
    default:
      return;
  }
}

/** A message as the wire carries it: messages compare by their encoding (binary fields come back as Buffers). */
const wire = (m: ToCoordinator | ToWorker) => encode(m).toString('hex');

/**
 * Validates `raw`: a ProtocolError is a fine answer; an accepted message must have the expected shape and
 * survive the wire again unchanged. Any other exception fails the property.
 */
function checked<V, M extends ToCoordinator | ToWorker>(validate: (raw: Record<string, unknown>, view: V) => M, expectShape: (m: M, view: V) => void) {
  return (raw: Record<string, unknown>, view: V): void => {
    let accepted: M;
    try {
      accepted = validate(raw, view);
    } catch (e) {
      if (e instanceof ProtocolError) return;
      throw e;
    }
    expectShape(accepted, view);
    expect(wire(validate(decodeRaw(encode(accepted)), view))).toEqual(wire(accepted));
  };
}

const checkFromWorker = checked(validateFromWorker, expectWorkerShape);
const checkFromCoordinator = checked(validateFromCoordinator, expectCoordinatorShape);

// ---------------------------------------------------------------- arbitraries

const TYPES = [...new Set([...FROM_WORKER, ...FROM_COORDINATOR].map(([m]) => m.t)), 'constructor', '__proto__', 'toString'];
const FIELDS = [...new Set([...FROM_WORKER, ...FROM_COORDINATOR].flatMap(([m]) => Object.keys(m))), 'sizes', 'activation', 'lr'];

/** Values that sit at the edges of what validation checks (fresh copies: mutations change them in place). */
const edgeValue = fc.constantFrom<unknown>(
  -1, 0, 1, 1.5, -0, NaN, Infinity, -Infinity, 2 ** 31, 2 ** 53, Number.MAX_VALUE, 2n ** 64n - 1n, -(2n ** 63n),
  '', 'x'.repeat(3000), null, true, [], {}, [3, 2], [0, BATCH + 1], [-1, 2], [2, 2], [1.5, 3], [2, 5, 6], [2n, 5n],
  new Uint8Array(0), new Uint8Array(3), new Date(0),
).map((v) => structuredClone(v));

/** What msgpackr can hand to validation, and more: typed arrays, bigints, null prototypes, sparse arrays. */
const anyValue = fc.oneof(
  { weight: 3, arbitrary: fc.anything({ maxDepth: 3, withBigInt: true, withTypedArray: true, withNullPrototype: true, withSparseArray: true, withDate: true }) },
  { weight: 2, arbitrary: edgeValue },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }) },
);

/** An object with a real message type and fields named like real ones, holding anything. */
const typedObject = fc
  .tuple(fc.constantFrom(...TYPES), fc.dictionary(fc.oneof(fc.constantFrom(...FIELDS), fc.string()), anyValue, { maxKeys: 10 }))
  .map(([t, fields]) => ({ ...fields, t }));

/** Where in a decoded message a mutation applies: the field path, as keys and indices. */
function paths(value: unknown, prefix: (string | number)[] = []): (string | number)[][] {
  if (ArrayBuffer.isView(value) || value === null || typeof value !== 'object') return [];
  return Object.keys(value).flatMap((k) => {
    const key = Array.isArray(value) ? Number(k) : k;
    const path = [...prefix, key];
    return [path, ...paths((value as Record<string, unknown>)[k], path)];
  });
}

type Mutation =
  | { op: 'delete'; at: number }
  | { op: 'replace'; at: number; value: unknown }
  | { op: 'resize'; at: number; by: number }
  | { op: 'poison'; at: number; index: number; value: number }
  | { op: 'append'; at: number; value: unknown };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('delete' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('replace' as const), at: fc.nat(), value: anyValue }),
  fc.record({ op: fc.constant('resize' as const), at: fc.nat(), by: fc.integer({ min: -9, max: 9 }).filter((n) => n !== 0) }),
  fc.record({ op: fc.constant('poison' as const), at: fc.nat(), index: fc.nat(), value: fc.constantFrom(NaN, Infinity, -Infinity) }),
  fc.record({ op: fc.constant('append' as const), at: fc.nat(), value: anyValue }),
);

/** Applies a mutation to a decoded message in place (binary arrays are copied before they change). */
function mutate(raw: Record<string, unknown>, m: Mutation): void {
  const all = paths(raw).filter((p) => p.join() !== 't');
  if (all.length === 0) return;
  const path = all[m.at % all.length];
  const parent = path.slice(0, -1).reduce<any>((o, k) => o[k], raw);
  const key = path[path.length - 1];
  const target = parent[key];
  if (m.op === 'delete') {
    if (Array.isArray(parent)) parent.splice(key as number, 1);
    else delete parent[key];
  } else if (m.op === 'replace') {
    parent[key] = m.value;
  } else if (m.op === 'append' && Array.isArray(target)) {
    target.push(m.value);
  } else if (m.op === 'resize' && target instanceof Uint8Array) {
    const length = Math.max(0, target.length + m.by);
    const resized = new Uint8Array(length);
    resized.set(target.subarray(0, length));
    parent[key] = resized;
  } else if (m.op === 'poison' && target instanceof Uint8Array && target.length >= 4) {
    const copy = new Uint8Array(target);
    new DataView(copy.buffer).setFloat32(4 * (m.index % Math.floor(copy.length / 4)), m.value, true);
    parent[key] = copy;
  }
}

/** A valid message through the wire (as the receiver decodes it), then 1–3 mutations. */
function mutated<M extends ToCoordinator | ToWorker, V>(cases: [M, V][]) {
  return fc.tuple(fc.constantFrom(...cases), fc.array(mutation, { minLength: 1, maxLength: 3 })).map(([[message, view], mutations]) => {
    const raw = decodeRaw(encode(message));
    for (const m of mutations) mutate(raw, m);
    return { raw, view, mutations };
  });
}

// ---------------------------------------------------------------- properties

/** Both directions, each with its valid messages, the views its receiver may be in, and its validation. */
const SIDES = [
  { side: 'a worker sends (the coordinator side)', cases: FROM_WORKER, views: COORDINATOR_VIEWS, validate: validateFromWorker, check: checkFromWorker },
  { side: 'the coordinator sends (the worker side)', cases: FROM_COORDINATOR, views: WORKER_VIEWS, validate: validateFromCoordinator, check: checkFromCoordinator },
] as unknown as {
  side: string;
  cases: [ToCoordinator | ToWorker, unknown][];
  views: unknown[];
  validate: (raw: Record<string, unknown>, view: unknown) => ToCoordinator | ToWorker;
  check: (raw: Record<string, unknown>, view: unknown) => void;
}[];

describe.each(SIDES)('validation of what $side', ({ cases, views, validate, check }) => {
  it('accepts every valid message in the view it was made for', () => {
    for (const [message, view] of cases) expect(wire(validate(decodeRaw(encode(message)), view))).toBe(wire(message));
  });

  it('throws only ProtocolError, and accepts only well-shaped messages, for any value in any view', () => {
    fc.assert(
      fc.property(fc.oneof(typedObject, fc.object({ maxDepth: 2 })), fc.constantFrom(...views), (raw, view) => check(raw, view)),
      RUNS,
    );
  });

  it('refuses or shapes right every mutation of a valid message (dropped and retyped fields, resized arrays, NaN, ranges)', () => {
    fc.assert(
      fc.property(mutated(cases), fc.constantFrom(...views, 'own' as const), ({ raw, view }, other) => {
        check(raw, other === 'own' ? view : other);
      }),
      { numRuns: 500 },
    );
  });
});

describe('reasons quoting what a peer sent', () => {
  // Found by the properties above: JSON.stringify threw a TypeError on the bigints msgpack decodes 64-bit ints to.
  it('quote bigints and binary safely, and cut long values short', () => {
    const hello = (protocol: unknown) => () => validateFromWorker({ t: 'hello', protocol }, undefined);
    expect(hello(2n ** 64n - 1n)).toThrow(new ProtocolError('hello: field "protocol" must be an integer in [0, 9007199254740991], got 18446744073709551615n'));
    expect(hello([new Uint8Array(9), -1n])).toThrow(new ProtocolError('hello: field "protocol" must be an integer in [0, 9007199254740991], got ["<9 bytes>","-1n"]'));
    expect(hello('x'.repeat(1000))).toThrow(new ProtocolError(`hello: field "protocol" must be an integer in [0, 9007199254740991], got "${'x'.repeat(60)}...`));
  });
});

describe('decoding frames', () => {
  // Random bytes may happen to be a valid frame: decoding them and refusing them with a ProtocolError both
  // pass; what the property excludes is any other exception (the decoder itself failing).
  const decodes = (bytes: Uint8Array) => {
    try {
      decodeRaw(Buffer.from(bytes));
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
    }
  };

  it('fails only with ProtocolError on random bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 512 }), decodes), RUNS);
  });

  it('fails only with ProtocolError, or validates safely, on valid frames with bytes flipped or cut', () => {
    const frames = [...FROM_WORKER.map(([m, v]) => [encode(m), v, 'worker'] as const), ...FROM_COORDINATOR.map(([m, v]) => [encode(m), v, 'coordinator'] as const)];
    const damage = fc.record({ flips: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { maxLength: 4 }), cut: fc.option(fc.nat()) });
    fc.assert(
      fc.property(fc.constantFrom(...frames), damage, ([frame, view, from], { flips, cut }) => {
        const bytes = Buffer.from(frame);
        for (const [at, mask] of flips) bytes[at % bytes.length] ^= mask;
        const damaged = cut === null ? bytes : bytes.subarray(0, cut % bytes.length);
        let raw: Record<string, unknown>;
        try {
          raw = decodeRaw(damaged);
        } catch (e) {
          if (e instanceof ProtocolError) return;
          throw e;
        }
        if (from === 'worker') checkFromWorker(raw, view as CoordinatorView | undefined);
        else checkFromCoordinator(raw, view as WorkerView);
      }),
      { numRuns: 500 },
    );
  });
});
