/**
 * What each side accepts. Nothing a peer sends is trusted: every decoded message is checked for its type,
 * fields, sizes and shapes before anyone reads it, and a message that fails is reported with a one-line
 * reason (a ProtocolError; the connection is then closed by the caller).
 *
 * One schema per message type and direction, in two tables keyed by type (FROM_WORKER, FROM_COORDINATOR):
 * the compiler checks that every type of ToCoordinator and ToWorker has its schema and that each schema
 * returns that type's message, so a new message cannot be sent without saying what the receiver accepts.
 * The schemas read what a side knows (its view: the model, what it asked for) to check sizes and steps.
 */
import { HOST, REMOTE_PLANS, WORKER_NAME } from '../../config.js';
import { DEVICES, ENGINES } from '../../engine/engine.js';
import { ACTIVATIONS, paramLayout, type ModelSpec } from '../../model/spec.js';
import type { AdamOptions } from '../../optim/adam.js';
import type { Range } from '../plan.js';
import { sliceLength } from '../unit_slices.js';
import { ABANDONED_KINDS, HANDSHAKE_FRAME_BYTES, MAX_FRAME_BYTES, NonFiniteError, PROTOCOL_VERSION, ProtocolError, RefusedError, type PeerLinksReport, type PeerRoster, type RowsDone, type RowsMessage, type SliceMessage, type SnapshotRequest, type ToCoordinator, type ToPeer, type ToWorker, type UpdateMessage } from './messages.js';

/** A decoded message before validation (codec.ts guarantees a map with a string "t"). */
type Raw = Record<string, unknown>;

/** One schema for each message type of a union: raw message and view in, that type's message out. */
type Schemas<M extends { t: string }, View> = { [T in M['t']]: (raw: Raw, view: View) => Extract<M, { t: T }> };

// ---------------------------------------------------------------- field helpers

/**
 * A value a peer sent, quoted in a reason: cut short (reasons are logged and sent back), and safe for
 * anything msgpack decodes, bigints included (JSON.stringify throws on them), binary shown by its size.
 */
function quote(v: unknown): string {
  if (typeof v === 'bigint') return `${v}n`;
  let text: string | undefined;
  try {
    text = JSON.stringify(v, function (this: Record<string, unknown>, key, x) {
      const original = this[key];
      if (original instanceof Uint8Array) return `<${original.length} bytes>`;
      return typeof x === 'bigint' ? `${x}n` : x;
    });
  } catch {
    // a cycle cannot come from msgpack; anything else unprintable is named by its kind
  }
  text ??= Object.prototype.toString.call(v);
  return text.length > 64 ? `${text.slice(0, 61)}...` : text;
}

function field(m: Raw, name: string): unknown {
  if (!(name in m)) throw new ProtocolError(`${m.t}: missing field "${name}"`);
  return m[name];
}

function int(m: Raw, name: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = field(m, name);
  if (!Number.isInteger(v) || (v as number) < min || (v as number) > max) {
    throw new ProtocolError(`${m.t}: field "${name}" must be an integer in [${min}, ${max}], got ${quote(v)}`);
  }
  return v as number;
}

function str(m: Raw, name: string, maxLength = 256): string {
  const v = field(m, name);
  if (typeof v !== 'string' || v.length > maxLength) throw new ProtocolError(`${m.t}: field "${name}" must be a string of at most ${maxLength} characters`);
  return v;
}

/** hello.name: shown, and used as a folder name by the run's records, so only WORKER_NAME's characters. */
function workerName(m: Raw): string {
  const v = field(m, 'name');
  if (typeof v !== 'string' || !WORKER_NAME.test(v)) throw new ProtocolError(`${m.t}: field "name" must be 1 to 64 of A-Z a-z 0-9 . _ -, got ${quote(v)}`);
  return v;
}

const PEER_ADDRESS = new RegExp(`^(${HOST}):(\\d{1,5})$`);

/** A peer listener's host:port as announced (hello.peerAddress, a roster's members): a dialable address, no more. */
function peerAddress(m: Raw, name: string): string {
  const v = field(m, name);
  const match = typeof v === 'string' && v.length <= 255 ? PEER_ADDRESS.exec(v) : null;
  if (!match || Number(match[2]) < 1 || Number(match[2]) > 65535) throw new ProtocolError(`${m.t}: field "${name}" must be HOST:PORT (a port in 1–65535), got ${quote(v)}`);
  return v as string;
}

/** A list of at most `max` integers in [0, limit]. */
function intList(m: Raw, name: string, max: number, limit = Number.MAX_SAFE_INTEGER): number[] {
  const v = field(m, name);
  if (!Array.isArray(v) || v.length > max || !v.every((x) => Number.isInteger(x) && x >= 0 && x <= limit)) {
    throw new ProtocolError(`${m.t}: field "${name}" must be a list of at most ${max} integers in [0, ${limit}]`);
  }
  return v as number[];
}

/** The most members one roster links (a full mesh: every pair holds a link). */
export const MAX_PEERS = 64;

function oneOf<T extends string>(m: Raw, name: string, choices: readonly T[]): T {
  const v = field(m, name);
  if (!(choices as readonly unknown[]).includes(v)) throw new ProtocolError(`${m.t}: field "${name}" must be one of ${choices.join(', ')}, got ${quote(v)}`);
  return v as T;
}

function bytes(m: Raw, name: string, length?: number): Uint8Array {
  const v = field(m, name);
  if (!(v instanceof Uint8Array)) throw new ProtocolError(`${m.t}: field "${name}" must be binary`);
  if (length !== undefined && v.length !== length) throw new ProtocolError(`${m.t}: field "${name}" must be ${length} bytes, got ${v.length}`);
  return v;
}

/**
 * A float32 array of exactly `count` elements (copied if the bytes are not 4-aligned), all finite unless
 * `finite` is false: the coordinator, which proved it knows the token, is not scanned value by value.
 */
function floats(label: string, v: unknown, count: number, finite = true): Float32Array {
  if (!(v instanceof Uint8Array)) throw new ProtocolError(`${label} must be binary float32 data`);
  if (v.byteLength !== count * 4) throw new ProtocolError(`${label} must hold ${count} float32 values (${count * 4} bytes), got ${v.byteLength} bytes`);
  // msgpackr hands out Buffers that may start at any byte; copy (new Uint8Array copies, Buffer#slice would not).
  const out = v.byteOffset % 4 === 0 ? new Float32Array(v.buffer, v.byteOffset, count) : new Float32Array(new Uint8Array(v).buffer);
  if (finite && !allFinite(out)) {
    const i = out.findIndex((x) => !Number.isFinite(x));
    throw new NonFiniteError(`${label} contains a non-finite value at index ${i}`);
  }
  return out;
}

/**
 * Whether every value is finite: x * 0 is 0 for a finite x and NaN otherwise, summed into four independent
 * sums (twice as fast as testing each value: the coordinator scans every float a worker sends).
 */
function allFinite(a: Float32Array): boolean {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  const n = a.length & ~3;
  for (let i = 0; i < n; i += 4) {
    s0 += a[i] * 0;
    s1 += a[i + 1] * 0;
    s2 += a[i + 2] * 0;
    s3 += a[i + 3] * 0;
  }
  for (let i = n; i < a.length; i++) s0 += a[i] * 0;
  return s0 + s1 + s2 + s3 === 0;
}

function floatList(m: Raw, name: string, counts: number[], finite = true): Float32Array[] {
  const v = field(m, name);
  if (!Array.isArray(v) || v.length !== counts.length) throw new ProtocolError(`${m.t}: field "${name}" must be a list of ${counts.length} arrays`);
  return v.map((x, i) => floats(`${m.t}: ${name}[${i}]`, x, counts[i], finite));
}

function range(m: Raw, name: string, max: number): Range {
  const v = field(m, name);
  if (!Array.isArray(v) || v.length !== 2 || !v.every(Number.isInteger) || v[0] < 0 || v[0] >= v[1] || v[1] > max) {
    throw new ProtocolError(`${m.t}: field "${name}" must be a non-empty row range within [0, ${max}], got ${quote(v)}`);
  }
  return [v[0], v[1]];
}

/**
 * A range of output units for each layer (a participant's share of a sharded step): within the layer's
 * width, possibly empty (a layer narrower than the number of participants).
 */
function unitRanges(m: Raw, name: string, fanOuts: number[]): Range[] {
  const v = field(m, name);
  const valid = (r: unknown, n: number) => Array.isArray(r) && r.length === 2 && r.every(Number.isInteger) && r[0] >= 0 && r[0] <= r[1] && r[1] <= n;
  if (!Array.isArray(v) || v.length !== fanOuts.length || !v.every((r, l) => valid(r, fanOuts[l]))) {
    throw new ProtocolError(`${m.t}: field "${name}" must be one unit range per layer within its width (${fanOuts.join(', ')}), got ${quote(v)}`);
  }
  return v.map((r: number[]) => [r[0], r[1]] as Range);
}

function sameUnits(a: readonly Range[], b: readonly Range[]): boolean {
  return a.length === b.length && a.every((r, l) => r[0] === b[l][0] && r[1] === b[l][1]);
}

/** The longest time a worker may report for one step's part (an hour: a step deadline is far shorter). */
const MAX_REPORTED_MS = 3_600_000;

/**
 * A worker's own report of a time (its rows' compute, its apply, its wait), ms: it weighs the scheduler's
 * shares and is shown and recorded, so it must be a finite number within [0, MAX_REPORTED_MS].
 */
function duration(m: Raw, name: string): number {
  const v = field(m, name);
  if (typeof v !== 'number' || !(v >= 0 && v <= MAX_REPORTED_MS)) {
    throw new ProtocolError(`${m.t}: field "${name}" must be a number of milliseconds within [0, ${MAX_REPORTED_MS}], got ${quote(v)}`);
  }
  return v;
}

/** Floats of each hidden layer's array for `rows` rows. */
function hiddenCounts(sizes: number[], rows: number): number[] {
  return sizes.slice(1, -1).map((n) => rows * n);
}

/** Floats of each delta array for `rows` rows: every layer's, or (compact) only the last layer's. */
function deltaCounts(sizes: number[], rows: number, compact: boolean): number[] {
  return (compact ? sizes.slice(-1) : sizes.slice(1)).map((n) => rows * n);
}

/** A received rows message (or update part) carries compact deltas when it holds a single delta array. */
function isCompact(m: Raw): boolean {
  return Array.isArray(m.deltas) && m.deltas.length === 1;
}

/** The schema of message type `t` in `schemas`; an own property only, so "constructor" is unknown too. */
function schemaOf<S extends object>(schemas: S, t: unknown): S[keyof S] {
  if (typeof t !== 'string' || !Object.hasOwn(schemas, t)) throw new ProtocolError(`unknown message type ${quote(t)}`);
  return schemas[t as keyof S];
}

// ---------------------------------------------------------------- worker → coordinator

/** What the coordinator knows when it validates a worker's message. */
export interface CoordinatorView {
  spec: ModelSpec;
  batchSize: number;
  /** The step whose rows this worker owes, or undefined when it owes none. */
  pendingStep: number | undefined;
  pendingRange: Range | undefined;
  /** The step whose state this worker was asked for, or undefined; and its units when it owns a shard. */
  pendingSnapshot: number | undefined;
  pendingSnapshotUnits?: Range[];
  /** The sharded step and units whose slice this worker owes, if any. */
  pendingSlice?: { step: number; units: Range[] };
  /** Whether the rows it owes come in compact form, or as their losses only. */
  pendingCompact: boolean;
  pendingLossOnly: boolean;
}

/** A slice's (or sliceDone's) step and units: exactly the ones the open update asked this owner for. */
function owedSlice(raw: Raw, view: CoordinatorView | undefined): { step: number; units: Range[]; spec: ModelSpec } {
  if (!view) throw new ProtocolError(`${raw.t}: sent before the worker was set up`);
  const step = int(raw, 'step');
  const owed = view.pendingSlice;
  if (!owed || step !== owed.step) throw new ProtocolError(`${raw.t}: step ${step} was not asked for (expected ${owed?.step ?? 'none'}): stale or replayed`);
  const units = unitRanges(raw, 'units', view.spec.sizes.slice(1));
  if (!sameUnits(units, owed.units)) throw new ProtocolError(`${raw.t}: units ${quote(units)} are not the ones it owns (${quote(owed.units)})`);
  return { step, units, spec: view.spec };
}

/** The view is undefined until the worker authenticated: then only hello (and error) make sense. */
const FROM_WORKER: Schemas<ToCoordinator, CoordinatorView | undefined> = {
  hello(raw) {
    const protocol = int(raw, 'protocol');
    if (protocol !== PROTOCOL_VERSION) throw new RefusedError(`hello: protocol version ${protocol} is not supported (this coordinator speaks ${PROTOCOL_VERSION})`);
    return {
      t: 'hello',
      protocol,
      mac: bytes(raw, 'mac'),
      nonce: bytes(raw, 'nonce', 32),
      engine: str(raw, 'engine', 16),
      device: str(raw, 'device', 16),
      backend: str(raw, 'backend'),
      threads: int(raw, 'threads', 1, 1024),
      dataSha256: str(raw, 'dataSha256', 64),
      // Optional, but when present it must be a rank: absent and valid are the only two accepted forms.
      ...('rank' in raw ? { rank: int(raw, 'rank', 0, 1 << 20) } : {}),
      ...('name' in raw ? { name: workerName(raw) } : {}),
      ...('peerAddress' in raw ? { peerAddress: peerAddress(raw, 'peerAddress') } : {}),
    };
  },

  /** The rows it was asked for: exactly that step and range, finite, in the form asked for. */
  rowsDone(raw, view) {
    if (!view) throw new ProtocolError('rowsDone: sent before the worker was set up');
    const step = int(raw, 'step');
    if (view.pendingStep === undefined || step !== view.pendingStep) {
      throw new ProtocolError(`rowsDone: step ${step} was not asked for (expected ${view.pendingStep ?? 'none'}): stale or replayed`);
    }
    const r = range(raw, 'range', view.batchSize);
    if (!view.pendingRange || r[0] !== view.pendingRange[0] || r[1] !== view.pendingRange[1]) {
      throw new ProtocolError(`rowsDone: rows ${r[0]}–${r[1]} were not asked for`);
    }
    const rows = r[1] - r[0];
    const sizes = view.spec.sizes;
    return {
      t: 'rowsDone',
      step,
      range: r,
      rowLoss: floats('rowsDone: rowLoss', field(raw, 'rowLoss'), rows),
      hidden: floatList(raw, 'hidden', view.pendingLossOnly ? [] : hiddenCounts(sizes, rows)),
      deltas: floatList(raw, 'deltas', view.pendingLossOnly ? [] : deltaCounts(sizes, rows, view.pendingCompact)),
      ms: duration(raw, 'ms'),
      applyMs: duration(raw, 'applyMs'),
      waitMs: duration(raw, 'waitMs'),
      queuedMs: duration(raw, 'queuedMs'),
    };
  },

  checksum: (raw) => ({ t: 'checksum', step: int(raw, 'step'), sha256: str(raw, 'sha256', 64) }),

  /** The replica's state at the step it was asked for, finite. */
  replicaState(raw, view) {
    if (!view) throw new ProtocolError('replicaState: sent before the worker was set up');
    const step = int(raw, 'step');
    if (view.pendingSnapshot === undefined || step !== view.pendingSnapshot) {
      throw new ProtocolError(`replicaState: the state of step ${step} was not asked for (expected ${view.pendingSnapshot ?? 'none'})`);
    }
    // An owner's shard comes packed: its units' parameters and moments only.
    const units = view.pendingSnapshotUnits;
    const total = units ? sliceLength(view.spec, units) : paramLayout(view.spec).total;
    return {
      t: 'replicaState',
      step,
      params: floats('replicaState: params', field(raw, 'params'), total),
      m: floats('replicaState: m', field(raw, 'm'), total),
      v: floats('replicaState: v', field(raw, 'v'), total),
    };
  },

  /** Its units of the sharded step it was asked to apply: exactly those, finite. */
  slice(raw, view) {
    const { step, units, spec } = owedSlice(raw, view);
    return { t: 'slice', step, units, params: floats('slice: params', field(raw, 'params'), sliceLength(spec, units)) };
  },

  /** Its slice went to the others over the peer links: the step and units it was asked for, nothing more. */
  sliceDone(raw, view) {
    const { step, units } = owedSlice(raw, view);
    return { t: 'sliceDone', step, units };
  },

  peerLinks(raw, view) {
    if (!view) throw new ProtocolError('peerLinks: sent before the worker was set up');
    const report: PeerLinksReport = { t: 'peerLinks', epoch: int(raw, 'epoch'), linked: intList(raw, 'linked', MAX_PEERS) };
    if (raw.abandoned !== undefined) {
      const given = subMap(raw.abandoned, 'peerLinks abandoned', 'peerLinks: field "abandoned"');
      report.abandoned = { kind: oneOf(given, 'kind', ABANDONED_KINDS), step: int(given, 'step') };
    }
    return report;
  },

  error: (raw) => ({ t: 'error', message: str(raw, 'message', 2000) }),
};

export function validateFromWorker(raw: Raw, view: CoordinatorView | undefined): ToCoordinator {
  const schema = schemaOf(FROM_WORKER, raw.t) as (raw: Raw, view: CoordinatorView | undefined) => ToCoordinator;
  return schema(raw, view);
}

// ---------------------------------------------------------------- coordinator → worker

/** What a worker knows when it validates the coordinator's message. */
export interface WorkerView {
  /** Whether the coordinator proved it knows the token (its welcome came and checked out). */
  welcomed: boolean;
  spec: ModelSpec | undefined;
  batchSize: number;
}

function specOf(raw: Raw): ModelSpec {
  const spec = field(raw, 'spec') as ModelSpec;
  if (
    !spec || !Array.isArray(spec.sizes) || spec.sizes.length < 2 || spec.sizes.length > 64 ||
    !spec.sizes.every((n) => Number.isInteger(n) && n > 0 && n <= 1 << 20) ||
    !(ACTIVATIONS as readonly string[]).includes(spec.activation)
  ) {
    throw new ProtocolError('state: field "spec" is not a valid model spec');
  }
  return { sizes: spec.sizes, activation: spec.activation };
}

/** state.peers: the members to link with, each once, this worker among them. */
function rosterOf(raw: Raw): PeerRoster {
  const roster = subMap(raw.peers, 'state peers', 'state: field "peers"');
  const members = field(roster, 'members');
  if (!Array.isArray(members) || members.length < 2 || members.length > MAX_PEERS) throw new ProtocolError(`state: field "peers.members" must list 2 to ${MAX_PEERS} members`);
  const list = members.map((m: unknown) => {
    const member = subMap(m, 'state peer', 'state: each peer member');
    return { id: int(member, 'id'), address: peerAddress(member, 'address') };
  });
  const self = int(roster, 'self');
  if (new Set(list.map((m) => m.id)).size !== list.length || !list.some((m) => m.id === self)) throw new ProtocolError('state: field "peers" must list each member once, this worker among them');
  return { epoch: int(roster, 'epoch'), secret: bytes(roster, 'secret', 32), self, members: list };
}

function adamOf(raw: Raw): AdamOptions {
  const adam = field(raw, 'adam') as AdamOptions;
  if (!adam || ![adam.lr, adam.beta1, adam.beta2, adam.eps].every((x) => typeof x === 'number' && Number.isFinite(x))) {
    throw new ProtocolError('state: field "adam" is not valid');
  }
  return { lr: adam.lr, beta1: adam.beta1, beta2: adam.beta2, eps: adam.eps };
}

/** The spec a message needs the worker to have received already (in a state message). */
function specNeeded(spec: ModelSpec | undefined, t: string): ModelSpec {
  if (!spec) throw new ProtocolError(`${t}: sent before the state`);
  return spec;
}

/**
 * A map inside a message (`what`: how an error names it), as a Raw whose fields' errors name it `label`.
 * Checked before the spread: a binary value would become one property per byte.
 */
function subMap(v: unknown, label: string, what: string): Raw {
  if (!v || typeof v !== 'object' || Array.isArray(v) || ArrayBuffer.isView(v)) throw new ProtocolError(`${what} must be a map`);
  return { ...(v as Raw), t: label };
}

/**
 * Another member's rows of step `step` (forwarded by the coordinator, or from a peer link) with the model's
 * sizes; `finite`: scanned for non-finite values (a peer's). Its times are not this worker's to read.
 */
function rowsBody(raw: Raw, sizes: number[], batch: number, { step, compact, finite }: { step: number; compact: boolean; finite: boolean }): RowsDone {
  const r = range(raw, 'range', batch);
  const rows = r[1] - r[0];
  return {
    t: 'rowsDone',
    step,
    range: r,
    rowLoss: floats('rowsDone: rowLoss', field(raw, 'rowLoss'), rows, finite),
    hidden: floatList(raw, 'hidden', hiddenCounts(sizes, rows), finite),
    deltas: floatList(raw, 'deltas', deltaCounts(sizes, rows, compact), finite),
    ms: 0,
    applyMs: 0,
    waitMs: 0,
    queuedMs: 0,
  };
}

/** Another owner's units of a sharded step: their parameters, sized by the spec; `finite`: scanned (a peer's). */
function sliceBody(raw: Raw, spec: ModelSpec, { step, finite }: { step: number; finite: boolean }): SliceMessage {
  const units = unitRanges(raw, 'units', spec.sizes.slice(1));
  return { t: 'slice', step, units, params: floats('slice: params', field(raw, 'params'), sliceLength(spec, units), finite) };
}

/** One part of an update: rows the worker lacks, with their samples (not scanned: see floats). */
function updatePart(p: unknown, batch: number, sizes: number[]) {
  const part = subMap(p, 'update part', 'update: each part');
  const r = range(part, 'range', batch);
  const rows = r[1] - r[0];
  return {
    range: r,
    x: floats('update: x', field(part, 'x'), rows * sizes[0], false),
    hidden: floatList(part, 'hidden', hiddenCounts(sizes, rows), false),
    deltas: floatList(part, 'deltas', deltaCounts(sizes, rows, isCompact(part)), false),
  };
}

/** The coordinator proved it knows the token: its arrays are checked for size, not scanned for values. */
const FROM_COORDINATOR: Schemas<ToWorker, WorkerView> = {
  challenge: (raw) => ({
    t: 'challenge',
    protocol: int(raw, 'protocol'),
    nonce: bytes(raw, 'nonce', 32),
    ...('engine' in raw ? { engine: oneOf(raw, 'engine', ENGINES) } : {}),
    ...('device' in raw ? { device: oneOf(raw, 'device', DEVICES) } : {}),
  }),

  welcome: (raw) => ({
    t: 'welcome',
    proof: bytes(raw, 'proof'),
    workerId: int(raw, 'workerId'),
    heartbeatMs: int(raw, 'heartbeatMs', 1, 3_600_000),
    maxFrameBytes: int(raw, 'maxFrameBytes', HANDSHAKE_FRAME_BYTES, MAX_FRAME_BYTES),
  }),

  state(raw) {
    const spec = specOf(raw);
    const total = paramLayout(spec).total;
    const adam = adamOf(raw);
    return {
      t: 'state',
      spec,
      batchSize: int(raw, 'batchSize', 1, 1 << 16),
      adam,
      step: int(raw, 'step'),
      generation: int(raw, 'generation', 0, 1),
      params: floats('state: params', field(raw, 'params'), total),
      m: floats('state: m', field(raw, 'm'), total),
      v: floats('state: v', field(raw, 'v'), total),
      useLocalData: field(raw, 'useLocalData') === true,
      plan: oneOf(raw, 'plan', REMOTE_PLANS),
      ...(raw.peers !== undefined ? { peers: rosterOf(raw) } : {}),
    };
  },

  rows(raw, view) {
    const spec = specNeeded(view.spec, 'rows');
    const batch = int(raw, 'batch', 1, view.batchSize);
    const r = range(raw, 'range', batch);
    // The samples of the whole batch: the rows others compute are forwarded without them.
    const message: RowsMessage = { t: 'rows', step: int(raw, 'step'), batch, range: r, labels: bytes(raw, 'labels', batch), compact: raw.compact === true, lossOnly: raw.lossOnly === true };
    if (raw.peers === true) message.peers = true;
    if (raw.x !== undefined) message.x = floats('rows: x', raw.x, batch * spec.sizes[0], false);
    else {
      const index = bytes(raw, 'index', batch * 4);
      message.index = new Int32Array(new Uint8Array(index).buffer);
    }
    const classes = spec.sizes[spec.sizes.length - 1];
    if (message.labels.some((l) => l >= classes)) throw new ProtocolError(`rows: a label is not below ${classes}`);
    return message;
  },

  /** Another worker's rows, forwarded as the coordinator received (and validated) them. */
  rowsDone(raw, view) {
    const sizes = specNeeded(view.spec, 'rowsDone').sizes;
    return rowsBody(raw, sizes, view.batchSize, { step: int(raw, 'step'), compact: isCompact(raw), finite: false });
  },

  update(raw, view) {
    const sizes = specNeeded(view.spec, 'update').sizes;
    const batch = int(raw, 'batch', 1, view.batchSize);
    const parts = field(raw, 'parts');
    if (!Array.isArray(parts) || parts.length > batch) throw new ProtocolError('update: field "parts" must be a list');
    const message: UpdateMessage = { t: 'update', step: int(raw, 'step'), batch, parts: parts.map((p: unknown) => updatePart(p, batch, sizes)) };
    if (raw.units !== undefined) message.units = unitRanges(raw, 'units', sizes.slice(1));
    if (raw.peers === true) message.peers = true;
    return message;
  },

  /** Another owner's units of a sharded step, forwarded as the coordinator received (and validated) them. */
  slice: (raw, view) => sliceBody(raw, specNeeded(view.spec, 'slice'), { step: int(raw, 'step'), finite: false }),

  check: (raw) => ({ t: 'check', step: int(raw, 'step') }),

  snapshot(raw, view) {
    const request: SnapshotRequest = { t: 'snapshot', step: int(raw, 'step') };
    if (raw.units !== undefined) request.units = unitRanges(raw, 'units', specNeeded(view.spec, 'snapshot').sizes.slice(1));
    return request;
  },

  error: (raw) => ({ t: 'error', message: str(raw, 'message', 2000) }),
};

/**
 * What a worker takes before the coordinator proved it knows the token: otherwise a lost welcome (or an
 * impostor that skips it) would have the worker load a state from whoever answered.
 */
const HANDSHAKE: readonly string[] = ['challenge', 'welcome', 'error'];

export function validateFromCoordinator(raw: Raw, view: WorkerView): ToWorker {
  const schema = schemaOf(FROM_COORDINATOR, raw.t) as (raw: Raw, view: WorkerView) => ToWorker;
  if (!view.welcomed && !HANDSHAKE.includes(raw.t as string)) throw new ProtocolError(`${raw.t}: sent before the welcome`);
  return schema(raw, view);
}

// ---------------------------------------------------------------- worker ↔ worker (peer links)

/** What a member knows when it validates a frame from a peer link. */
export interface PeerView {
  /** Whether the link's handshake is done: only then are rows and slices taken. */
  linked: boolean;
  spec: ModelSpec | undefined;
  batchSize: number;
  /** The step its replica is at: a peer may be one step ahead of it, never behind nor further. */
  step: number;
}

/** A peer step's number: this member's step or the next (a peer that committed first may send the next one's rows). */
function peerStep(m: Raw, view: PeerView): number {
  const step = int(m, 'step');
  if (step !== view.step && step !== view.step + 1) throw new ProtocolError(`${m.t}: step ${step} is neither this member's step ${view.step} nor the next`);
  return step;
}

/**
 * A peer is another worker, no more trusted than one: its rows and parameters are scanned for non-finite
 * values as the coordinator scans a worker's, and their sizes are the model's.
 */
const FROM_PEER: Schemas<ToPeer, PeerView> = {
  peerChallenge: (raw) => ({ t: 'peerChallenge', nonce: bytes(raw, 'nonce', 32) }),
  peerHello: (raw) => ({ t: 'peerHello', epoch: int(raw, 'epoch'), from: int(raw, 'from'), nonce: bytes(raw, 'nonce', 32), mac: bytes(raw, 'mac', 32) }),
  peerWelcome: (raw) => ({ t: 'peerWelcome', proof: bytes(raw, 'proof', 32) }),

  /** A member's rows in full (every layer's delta), finite. */
  rowsDone(raw, view) {
    const sizes = specNeeded(view.spec, 'rowsDone').sizes;
    return rowsBody(raw, sizes, view.batchSize, { step: peerStep(raw, view), compact: false, finite: true });
  },

  /** A member's units of a sharded step, finite. */
  slice: (raw, view) => sliceBody(raw, specNeeded(view.spec, 'slice'), { step: peerStep(raw, view), finite: true }),

  error: (raw) => ({ t: 'error', message: str(raw, 'message', 2000) }),
};

const PEER_HANDSHAKE: readonly string[] = ['peerChallenge', 'peerHello', 'peerWelcome', 'error'];

export function validateFromPeer(raw: Raw, view: PeerView): ToPeer {
  const schema = schemaOf(FROM_PEER, raw.t) as (raw: Raw, view: PeerView) => ToPeer;
  if (view.linked === PEER_HANDSHAKE.includes(raw.t as string) && raw.t !== 'error') {
    throw new ProtocolError(view.linked ? `${raw.t}: sent after the link's handshake` : `${raw.t}: sent before the link's handshake`);
  }
  return schema(raw, view);
}
