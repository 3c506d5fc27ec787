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
import { prepareEngine, type Device, type EngineName, type EngineOptions } from '../../engine/engine.js';
import { deviceOf, session, type ReplicaSlot } from './worker_session.js';

export interface WorkerOptions {
  connect: string;
  token?: string;
  /** PEM file of a private CA that signed the coordinator's certificate (wss://). */
  ca?: string;
  threads: number;
  engine: EngineName;
  device: Device;
  /** With --device webgpu: accept a software adapter (lavapipe). */
  allowSoftwareGpu: boolean;
  /** Set by runWorker at start for --device webgpu (engine.ts prepareEngine): the adapter its replica computes on. */
  webgpu?: EngineOptions['webgpu'];
  /** A local copy of the dataset: the coordinator then sends row indices instead of pixels. */
  dataset?: Dataset;
  /** Give up after this many failed connection attempts in a row (0 = never). */
  maxRetries: number;
  /** Largest frame accepted from the coordinator (a state snapshot of the model must fit). */
  maxFrameBytes: number;
  onEvent?: (event: WorkerEvent) => void;
  signal?: AbortSignal;
}

export type WorkerEvent =
  /** At start: what this worker computes on (for --device webgpu, the adapter). */
  | { type: 'device'; description: string }
  | { type: 'connected'; url: string; workerId: number }
  | { type: 'synced'; step: number; parameters: number }
  | { type: 'disconnected'; reason: string; retryInMs: number }
  | { type: 'step'; step: number }
  | { type: 'error'; message: string }
  | { type: 'finished' };


/** Runs a worker until the signal aborts it or it gives up reconnecting. */
export async function runWorker(userOptions: Partial<WorkerOptions> & { connect: string }): Promise<void> {
  const given: WorkerOptions = { ...WORKER_DEFAULTS, ...userOptions };
  const emit = given.onEvent ?? (() => {});
  // Before connecting: a worker without a usable device says so at once instead of joining and failing.
  const { webgpu } = await prepareEngine(given);
  const options: WorkerOptions = { ...given, webgpu };
  emit({ type: 'device', description: deviceOf(options) });
  const slot: ReplicaSlot = {};
  let failures = 0;
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
      if (options.maxRetries > 0 && failures >= options.maxRetries) {
        throw new Error(`gave up after ${failures} failed connection attempts to ${options.connect} (last: ${outcome.reason})`);
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
