/** Pending (src/cluster/remote/requests.ts): the hub's one request mechanism, with its deadlines. */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { ReplicaState, RowsDone } from '../src/cluster/remote/messages.js';
import { Pending } from '../src/cluster/remote/requests.js';
import { HELD_UP_MS } from '../src/cluster/remote/stall_timer.js';

const rows = (step: number): RowsDone => ({ t: 'rowsDone', step, range: [0, 1], rowLoss: new Float32Array(1), hidden: [], deltas: [], ms: 0, applyMs: 0, waitMs: 0, queuedMs: 0 });
const state: ReplicaState = { t: 'replicaState', step: 3, params: new Float32Array(0), m: new Float32Array(0), v: new Float32Array(0) };

describe("the hub's one request mechanism (Pending)", () => {
  // Deadlines run on performance.now (stall_timer.ts), faked with the timers; holdUp moves it on, as a stopped
  // process's clock does, without running any timer (fake timers' setSystemTime moves Date only).
  let heldUpMs = 0;
  const holdUp = (ms: number) => void (heldUpMs += ms);
  // A deadline decides in a setImmediate (after the reads its process owes); a fake one set within a tick runs 1 ms on.
  const pastDeadline = (ms: number) => vi.advanceTimersByTime(ms + 1);
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setImmediate', 'clearImmediate', 'setInterval', 'clearInterval', 'Date', 'performance'] });
    heldUpMs = 0;
    const now = performance.now.bind(performance);
    vi.spyOn(performance, 'now').mockImplementation(() => now() + heldUpMs);
  });
  afterEach(() => {
    vi.restoreAllMocks();
    vi.useRealTimers();
  });

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
    pastDeadline(400);
    await failed;
  });

  it('without a policy only the late request fails: the others stay open, and a late answer is ignored', async () => {
    const pending = new Pending();
    const check = pending.expect('checksum', { step: 5 }, 100);
    const snapshot = pending.expect('snapshot', { step: 3 }, 1000);
    const failed = expect(check).rejects.toThrow('no checksum answer within 100 ms');
    pastDeadline(100);
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

  it('starts a deadline once more when it fired after the coordinator was held up (its answer may wait unread)', async () => {
    const pending = new Pending();
    const onTimeout = vi.fn();
    const asked = pending.expect('slice', { step: 9, units: [[0, 4]] }, 2000, onTimeout);
    // The coordinator is stopped for 3.7 s: the wall clock moves on, no timer runs (SIGSTOP, then SIGCONT).
    holdUp(3667);
    pastDeadline(2000);
    expect(onTimeout).not.toHaveBeenCalled();
    // The answer read after the deadline that fired late: it counts.
    const done = { t: 'sliceDone' as const, step: 9 };
    expect(pending.answer('slice', done)).toBe(true);
    expect(await asked).toBe(done);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('starts it once only: held up twice, or late again on time, the policy runs', async () => {
    const pending = new Pending();
    const onTimeout = vi.fn();
    const asked = pending.expect('rows', { step: 1, range: [0, 1], compact: false, lossOnly: false }, 2000, onTimeout);
    const failed = expect(asked).rejects.toThrow('no rows answer within 2000 ms');
    holdUp(3667);
    pastDeadline(2000);
    holdUp(3667);
    pastDeadline(2000);
    expect(onTimeout).toHaveBeenCalledTimes(1);
    await failed;
    // A deadline fired a little late (a busy loop, under HELD_UP_MS) is not started again.
    const late = pending.expect('checksum', { step: 2 }, 100, onTimeout);
    const lateFailed = expect(late).rejects.toThrow('no checksum answer within 100 ms');
    holdUp(HELD_UP_MS - 100);
    pastDeadline(100);
    expect(onTimeout).toHaveBeenCalledTimes(2);
    await lateFailed;
  });
});
