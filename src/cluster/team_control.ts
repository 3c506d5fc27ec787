/**
 * The control block through which the main thread hands each pass to its team of pool threads: a task
 * record per slot in shared memory, a sequence number that publishes them all at once, and per-slot
 * completion words. Pool threads wait on the sequence number (spinning briefly, then Atomics.wait) and
 * the main thread on the completion counter, so a pass costs microseconds of hand-off instead of a
 * message round trip per task (~0.1 ms each way through piscina's queue, measured).
 *
 *   [SEQ] [SIGNAL] then per slot: [done seq] [failed seq] [bad-layer bits] [kind step generation batch a b gather]
 *                                 [claimed seq] [units…]
 *
 * A slot's task of a pass is run by whoever claims it first (claim): its pool thread, or the main thread,
 * which takes the task of a thread that has not started it by the time the main thread's own is done (a
 * thread descheduled on a busy machine would otherwise hold the whole pass).
 *
 * Every field of a task crosses the block: one left out takes its default on the pool thread (a rows task
 * whose gather flag was dropped re-gathered the batch from a stale index, and remote workers with local
 * data and two threads computed wrong rows).
 */
import type { Range } from './plan.js';
import type { Task, TaskResult } from './slot_runner.js';

const SEQ = 0;
/** Incremented (and notified) whenever a slot finishes or dies: what the main thread waits on. */
const SIGNAL = 1;
const HEADER = 2;
const KIND = { none: 0, rows: 1, weights: 2, eval: 3, step: 4, deltas: 5, pull: 6, exit: 9 } as const;
const FIELDS = 11;
/** Per slot: the last pass whose task was claimed. */
const CLAIMED = 10;

// Atomics.waitAsync is in Node 20 but not in the ES2022 library typings.
const waitAsync = (Atomics as unknown as {
  waitAsync(a: Int32Array, index: number, value: number, timeout: number): { async: boolean; value: Promise<unknown> | string };
}).waitAsync;

export class TeamControl {
  readonly words: Int32Array;

  constructor(
    readonly slots: number,
    readonly layers: number,
    buffer?: SharedArrayBuffer,
  ) {
    this.words = new Int32Array(buffer ?? new SharedArrayBuffer(4 * (HEADER + slots * this.record)));
  }

  get buffer(): SharedArrayBuffer {
    return this.words.buffer as SharedArrayBuffer;
  }

  private get record(): number {
    return FIELDS + 2 * this.layers;
  }

  private base(slot: number): number {
    return HEADER + slot * this.record;
  }

  get seq(): number {
    return Atomics.load(this.words, SEQ);
  }

  get signal(): number {
    return Atomics.load(this.words, SIGNAL);
  }

  /** Main thread: writes a slot's task (undefined: nothing to do this pass). */
  write(slot: number, task: Task | { kind: 'exit' } | undefined): void {
    const w = this.words;
    const b = this.base(slot);
    w[b + 2] = 0;
    w[b + 3] = task ? KIND[task.kind] : KIND.none;
    if (!task || task.kind === 'exit') return;
    w[b + 4] = task.step;
    w[b + 5] = task.generation;
    w[b + 6] = task.kind === 'eval' || task.kind === 'deltas' ? 0 : task.kind === 'pull' ? Number(task.committed) : task.batch;
    if (task.kind === 'weights') {
      w[b + 7] = task.slot;
      task.units.forEach(([u0, u1], l) => {
        w[b + FIELDS + 2 * l] = u0;
        w[b + FIELDS + 2 * l + 1] = u1;
      });
    } else if (task.kind !== 'step' && task.kind !== 'pull') {
      [w[b + 7], w[b + 8]] = task.range;
      w[b + 9] = task.kind === 'rows' && task.gather === false ? 0 : 1;
    }
  }

  /** Main thread: makes every written task visible and wakes the team. */
  publish(): number {
    const seq = Atomics.add(this.words, SEQ, 1) + 1;
    Atomics.notify(this.words, SEQ);
    return seq;
  }

  /**
   * Either side: claims the slot's task of pass `seq`; false if it was claimed already. Claimed passes only
   * grow, so whoever moves the word to `seq` first runs the task, and the other does not. A pool thread
   * claims before it reads its task: the main thread rewrites a record only once the pass it held is done.
   */
  claim(slot: number, seq: number): boolean {
    const at = this.base(slot) + CLAIMED;
    const last = Atomics.load(this.words, at);
    return last < seq && Atomics.compareExchange(this.words, at, last, seq) === last;
  }

  /** Pool thread: its task of the current pass. */
  read(slot: number): Task | { kind: 'exit' } | undefined {
    const w = this.words;
    const b = this.base(slot);
    const base = { step: w[b + 4], generation: w[b + 5] };
    switch (w[b + 3]) {
      case KIND.rows:
        return { kind: 'rows', ...base, batch: w[b + 6], range: [w[b + 7], w[b + 8]], gather: w[b + 9] === 1 };
      case KIND.weights: {
        const units: Range[] = [];
        for (let l = 0; l < this.layers; l++) units.push([w[b + FIELDS + 2 * l], w[b + FIELDS + 2 * l + 1]]);
        return { kind: 'weights', ...base, batch: w[b + 6], units, slot: w[b + 7] };
      }
      case KIND.eval:
        return { kind: 'eval', ...base, range: [w[b + 7], w[b + 8]] };
      case KIND.step:
        return { kind: 'step', ...base, batch: w[b + 6] };
      case KIND.deltas:
        return { kind: 'deltas', ...base, range: [w[b + 7], w[b + 8]] };
      case KIND.pull:
        return { kind: 'pull', ...base, committed: w[b + 6] === 1 };
      case KIND.exit:
        return { kind: 'exit' };
      default:
        return undefined;
    }
  }

  /** Pool thread: reports its task of pass `seq` done (with its result) or failed. */
  finish(slot: number, seq: number, result: TaskResult | 'failed'): void {
    const b = this.base(slot);
    if (result === 'failed') Atomics.store(this.words, b + 1, seq);
    else {
      this.words[b + 2] = result.nonFiniteLayers.reduce((bits, l) => bits | (1 << Math.min(l, 30)), 0);
      Atomics.store(this.words, b, seq);
    }
    this.wake();
  }

  /** Wakes the main thread's wait (a slot finished, failed or died). */
  wake(): void {
    Atomics.add(this.words, SIGNAL, 1);
    Atomics.notify(this.words, SIGNAL);
  }

  /** Main thread: the slot's outcome of pass `seq`, if it has one yet. */
  outcome(slot: number, seq: number): TaskResult | 'failed' | undefined {
    const b = this.base(slot);
    if (Atomics.load(this.words, b + 1) === seq) return 'failed';
    if (Atomics.load(this.words, b) !== seq) return undefined;
    const bits = this.words[b + 2];
    const nonFiniteLayers: number[] = [];
    for (let l = 0; l < 31; l++) if (bits & (1 << l)) nonFiniteLayers.push(l);
    return { nonFiniteLayers };
  }

  /** Pool thread: blocks until a pass newer than `seen` is published; returns its number. */
  awaitPass(seen: number): number {
    for (let spin = 0; spin < 20000; spin++) {
      const seq = Atomics.load(this.words, SEQ);
      if (seq !== seen) return seq;
    }
    for (;;) {
      Atomics.wait(this.words, SEQ, seen, 1000);
      const seq = Atomics.load(this.words, SEQ);
      if (seq !== seen) return seq;
    }
  }

  /**
   * How long the main thread spins for the team before it yields to the event loop (Atomics.waitAsync, whose
   * wake-up goes through the loop: ~0.1–1 ms late, twice a step). Long only when every slot has a core of
   * its own: spinning on a shared core would take it from the threads it waits for.
   */
  mainSpins = 2_000;

  /** Main thread: resolves when the signal moves past `seen` (without blocking the event loop for long). */
  async awaitSignal(seen: number): Promise<void> {
    for (let spin = 0; spin < this.mainSpins; spin++) if (Atomics.load(this.words, SIGNAL) !== seen) return;
    const { async, value } = waitAsync(this.words, SIGNAL, seen, 100);
    if (async) await value;
  }
}
