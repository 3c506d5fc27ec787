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
import { hostname } from 'node:os';
import { checkWorkerName, WORKER_DEFAULTS } from '../../config.js';
import { prepareEngine } from '../../engine/create.js';
import type { WorkerEvent, WorkerOptions } from './worker_options.js';
import { deviceOf, session, type ReplicaSlot } from './worker_session.js';

export { WORKER_DEFAULTS };
export type { WorkerEvent, WorkerOptions };

/** Runs a worker until the signal aborts it or it gives up reconnecting. */
export async function runWorker(userOptions: Partial<WorkerOptions> & { connect: string }): Promise<void> {
  // Named by its rank when it has one; else by --name, else by its host: the same across reconnections.
  checkWorkerName(userOptions.name);
  const given: WorkerOptions = { ...WORKER_DEFAULTS, ...userOptions, name: userOptions.name ?? (userOptions.rank === undefined ? hostName() : undefined) };
  const emit = given.onEvent ?? (() => {});
  // Before connecting: a worker without a usable device says so at once instead of joining and failing.
  const { webgpu } = await prepareEngine(given);
  const options: WorkerOptions = { ...given, webgpu };
  emit({ type: 'device', description: deviceOf(options) });
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
    // The peer listener too: a worker whose run is over must let its process exit.
    slot.links?.close();
    await slot.replica?.close();
  }
}

/** This machine's hostname as a worker name (WORKER_NAME's characters only; its first label). */
function hostName(): string {
  const name = hostname().split('.')[0].replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 64);
  return name || 'worker';
}

/** Waits ms, or less if the signal aborts; leaves no listener behind (a worker may reconnect many times). */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done);
  });
}
