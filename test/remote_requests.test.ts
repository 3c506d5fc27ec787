import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { PROTOCOL_VERSION, ProtocolError, type ReplicaState, type RowsDone } from '../src/cluster/remote/messages.js';
import { Pending } from '../src/cluster/remote/requests.js';
import { validateFromCoordinator, validateFromWorker } from '../src/cluster/remote/validation.js';

const rows = (step: number): RowsDone => ({ t: 'rowsDone', step, range: [0, 1], rowLoss: new Float32Array(1), hidden: [], deltas: [], ms: 0, applyMs: 0, waitMs: 0, queuedMs: 0 });
const state: ReplicaState = { t: 'replicaState', step: 3, params: new Float32Array(0), m: new Float32Array(0), v: new Float32Array(0) };

describe("the hub's one request mechanism (Pending)", () => {
  beforeEach(() => void vi.useFakeTimers());
  afterEach(() => void vi.useRealTimers());

  it('resolves a request with its answer, and shows its key only while it is open', async () => {
    const pending = new Pending();
    const asked = pending.expect('rows', { step: 2, range: [0, 1], compact: true, lossOnly: false }, 1000);
    expect(pending.keyOf('rows')).toEqual({ step: 2, range: [0, 1], compact: true, lossOnly: false });
    expect(pending.keyOf('snapshot')).toBeUndefined();
    expect(pending.answer('rows', rows(2))).toBe(true);
    expect(await asked).toEqual(rows(2));
    expect(pending.keyOf('rows')).toBeUndefined();
    expect(pending.answer('rows', rows(2))).toBe(false);
  });

  it('rejects every open request when the peer is gone, and every later one at once', async () => {
    const pending = new Pending();
    const a = pending.expect('rows', { step: 0, range: [0, 1], compact: false, lossOnly: false }, 1000);
    const b = pending.expect('snapshot', { step: 0 }, 1000);
    const c = pending.expect('checksum', { step: 0 }, 1000);
    pending.close(new Error('worker 1 left: gone'));
    for (const p of [a, b, c]) await expect(p).rejects.toThrow('worker 1 left: gone');
    await expect(pending.expect('checksum', { step: 1 }, 1000)).rejects.toThrow('worker 1 left: gone');
    expect(vi.getTimerCount()).toBe(0);
  });

  it("at the deadline runs the caller's policy first: dropping the peer rejects with the drop's reason", async () => {
    const pending = new Pending();
    const asked = pending.expect('snapshot', { step: 3 }, 400, () => pending.close(new Error('worker 1 left: did not send its state')));
    const failed = expect(asked).rejects.toThrow('worker 1 left: did not send its state');
    vi.advanceTimersByTime(400);
    await failed;
  });

  it('without a policy only the late request fails: the others stay open, and a late answer is ignored', async () => {
    const pending = new Pending();
    const check = pending.expect('checksum', { step: 5 }, 100);
    const snapshot = pending.expect('snapshot', { step: 3 }, 1000);
    const failed = expect(check).rejects.toThrow('no checksum answer within 100 ms');
    vi.advanceTimersByTime(100);
    await failed;
    expect(pending.answer('checksum', 'abc')).toBe(false);
    expect(pending.answer('snapshot', state)).toBe(true);
    expect(await snapshot).toBe(state);
  });

  it('supersedes an open request of the same kind, whose deadline then no longer fires', async () => {
    const pending = new Pending();
    const onTimeout = vi.fn();
    const first = pending.expect('rows', { step: 1, range: [0, 1], compact: false, lossOnly: false }, 100, onTimeout);
    const second = pending.expect('rows', { step: 1, range: [1, 2], compact: false, lossOnly: false }, 1000);
    await expect(first).rejects.toThrow('superseded by a new rows request');
    vi.advanceTimersByTime(500);
    expect(onTimeout).not.toHaveBeenCalled();
    expect(pending.keyOf('rows')?.range).toEqual([1, 2]);
    pending.answer('rows', rows(1));
    await second;
  });
});

describe('validation tables', () => {
  const view = { welcomed: false, spec: undefined, batchSize: 0 };
  const hello = { t: 'hello', protocol: PROTOCOL_VERSION, mac: new Uint8Array(0), nonce: new Uint8Array(32), engine: 'onnx', device: 'cpu', backend: 'b', threads: 1, dataSha256: '' };

  it('takes a hello with a rank (a launched job\'s) or without one, and nothing else in its place', () => {
    expect(validateFromWorker(hello, undefined)).not.toHaveProperty('rank');
    expect(validateFromWorker({ ...hello, rank: 2 }, undefined)).toMatchObject({ t: 'hello', rank: 2 });
    for (const rank of [-1, 1.5, '1', null, 1 << 21]) {
      expect(() => validateFromWorker({ ...hello, rank }, undefined)).toThrow(`hello: field "rank" must be an integer in [0, ${1 << 20}], got ${JSON.stringify(rank)}`);
    }
  });

  it.each(['nope', 'constructor', 'toString', '__proto__', 'hasOwnProperty'])('refuses message type %j on both sides as unknown', (t) => {
    expect(() => validateFromWorker({ t }, undefined)).toThrow(`unknown message type ${JSON.stringify(t)}`);
    expect(() => validateFromCoordinator({ t }, view)).toThrow(`unknown message type ${JSON.stringify(t)}`);
  });

  it('takes nothing past the handshake from the coordinator before its welcome proved it knows the token', () => {
    expect(() => validateFromCoordinator({ t: 'check', step: 0 }, view)).toThrow(new ProtocolError('check: sent before the welcome'));
    expect(validateFromCoordinator({ t: 'check', step: 0 }, { ...view, welcomed: true })).toEqual({ t: 'check', step: 0 });
    expect(validateFromCoordinator({ t: 'error', message: 'bye' }, view)).toEqual({ t: 'error', message: 'bye' });
  });
});
