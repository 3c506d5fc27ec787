/**
 * `dtrain worker --connect ws://HOST:PORT`: a remote machine that joins a run. It proves it knows the
 * token (and checks that the coordinator does too), receives a snapshot of the training state, and then
 * for every step computes the rows it is asked for and applies the step to its own replica from the rows
 * the others computed, with the same kernels as the coordinator, so every replica stays bit-identical
 * (and a coordinator without compute threads of its own takes its state from a replica when it needs it).
 *
 * This file is the worker's entry point: its options and events, and the reconnect loop. After a dropped
 * connection it reconnects with exponential backoff and resynchronises from a new snapshot. One
 * connection is worker_session.ts; the replica it keeps across connections is replica.ts.
 */
import { WORKER_DEFAULTS } from '../../config.js';
import type { Dataset } from '../../data/datasets.js';
export { WORKER_DEFAULTS };
import type { Device, EngineName } from '../../engine/engine.js';
import { session, type ReplicaSlot } from './worker_session.js';

export interface WorkerOptions {
  connect: string;
  token?: string;
  /** PEM file of a private CA that signed the coordinator's certificate (wss://). */
  ca?: string;
  threads: number;
  engine: EngineName;
  device: Device;
  /** A local copy of the dataset: the coordinator then sends row indices instead of pixels. */
  dataset?: Dataset;
  /** Give up after this many failed connection attempts in a row (0 = never). */
  maxRetries: number;
  /**
   * Give up when no connection has synchronised for this long (0 or absent = never): a launched rank
   * (dtrain run) waits for rank 0 no longer than rank 0 waits for it, so a job whose rank 0 is gone ends.
   */
  retryForMs?: number;
  /** This process's rank in a launched job (dtrain run), sent in the hello: a coordinator then names missing ranks. */
  rank?: number;
  /** Largest frame accepted from the coordinator (a state snapshot of the model must fit). */
  maxFrameBytes: number;
  onEvent?: (event: WorkerEvent) => void;
  signal?: AbortSignal;
}

export type WorkerEvent =
  | { type: 'connected'; url: string; workerId: number }
  | { type: 'synced'; step: number; parameters: number }
  | { type: 'disconnected'; reason: string; retryInMs: number }
  | { type: 'step'; step: number }
  | { type: 'error'; message: string }
  | { type: 'finished' };


/** Runs a worker until the signal aborts it or it gives up reconnecting. */
export async function runWorker(userOptions: Partial<WorkerOptions> & { connect: string }): Promise<void> {
  const options: WorkerOptions = { ...WORKER_DEFAULTS, ...userOptions };
  const emit = options.onEvent ?? (() => {});
  const slot: ReplicaSlot = {};
  let failures = 0;
  let lastSynced = performance.now();
  try {
    while (!options.signal?.aborted) {
      const outcome = await session(options, emit, slot);
      if (options.signal?.aborted) break;
      if (outcome.finished) {
        emit({ type: 'finished' });
        break;
      }
      if (outcome.fatal) throw new Error(outcome.reason);
      failures = outcome.synced ? 0 : failures + 1;
      if (outcome.synced) lastSynced = performance.now();
      if (options.maxRetries > 0 && failures >= options.maxRetries) {
        throw new Error(`gave up after ${failures} failed connection attempts to ${options.connect} (last: ${outcome.reason})`);
      }
      const waited = performance.now() - lastSynced;
      if (options.retryForMs && waited >= options.retryForMs) {
        throw new Error(`gave up after ${Math.round(waited)} ms without a connection to ${options.connect} (last: ${outcome.reason})`);
      }
      const delay = Math.min(10_000, 250 * 2 ** Math.min(failures, 6));
      emit({ type: 'disconnected', reason: outcome.reason, retryInMs: delay });
      await sleep(delay, options.signal);
    }
  } finally {
    await slot.replica?.close();
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
