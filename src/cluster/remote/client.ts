/**
 * `dtrain worker --connect ws://HOST:PORT`: a remote machine that joins a run. It proves it knows the
 * token (and checks that the coordinator does too), receives a snapshot of the training state, and then
 * for every step computes the rows it is asked for and applies the step to its own replica from the rows
 * the others computed, with the same kernels as the coordinator, so every replica stays bit-identical
 * (and a coordinator without compute threads of its own takes its state from a replica when it needs it).
 * After a dropped connection it reconnects with exponential backoff and resynchronises from a new snapshot.
 */
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
import type { Dataset } from '../../data/datasets.js';
import type { EngineName, Device } from '../../engine/engine.js';
import { paramLayout } from '../../model/spec.js';
import { paramsSha256 } from '../../report/summary.js';
import { evenSplit, missingRanges, unitAssignment, type Range } from '../../train/plan.js';
import type { Task } from '../step_worker.js';
import { createTrainingMemory, optimizerMemoryOf, placeBatchRows, type TrainingMemory } from '../training_memory.js';
import { createWorkers, type WorkerSet } from '../workers.js';
import { newNonce, proof, proofMatches } from './auth.js';
import { closeReason, decodeRaw, encode } from './codec.js';
import {
  ProtocolError,
  PROTOCOL_VERSION,
  RUN_FINISHED,
  type RowsDone,
  type RowsMessage,
  type StateMessage,
  type ToCoordinator,
  type UpdateMessage,
} from './messages.js';
import { validateFromCoordinator } from './validation.js';
import { Watchdog } from './watchdog.js';

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

/** The coordinator's heartbeat period assumed until its welcome says (config DEFAULTS.heartbeatMs). */
const DEFAULT_HEARTBEAT_MS = 5000;

export const WORKER_DEFAULTS = { threads: 1, engine: 'onnx' as EngineName, device: 'cpu' as Device, maxRetries: 0, maxFrameBytes: 256 << 20 };

/** The training state a worker mirrors, and the threads that compute on it. */
class Replica {
  generation: number;
  step: number;
  /** The current step's batch size (0 before its rows request) and the rows held: computed here or forwarded. */
  private batchRows = 0;
  private held: Range[] = [];
  /**
   * True between applying a step as soon as every row of it was here and the coordinator's update for it
   * (which then only confirms: the step's rows are accepted once forwarded, so its result is settled).
   */
  private appliedEarly = false;
  private constructor(
    readonly memory: TrainingMemory,
    readonly workers: WorkerSet,
    state: StateMessage,
  ) {
    this.generation = state.generation;
    this.step = state.step;
    this.load(state);
  }

  static async create(state: StateMessage, options: WorkerOptions): Promise<Replica> {
    const features = state.spec.sizes[0];
    const classes = state.spec.sizes[state.spec.sizes.length - 1];
    const dataset: Dataset = state.useLocalData && options.dataset ? options.dataset : emptyDataset(features, classes);
    const memory = createTrainingMemory(state.spec, dataset, state.batchSize, options.threads);
    const workers = await createWorkers({ memory, engine: { engine: options.engine, device: options.device }, adam: state.adam }, options.threads);
    return new Replica(memory, workers, state);
  }

  fits(state: StateMessage): boolean {
    const spec = this.memory.spec;
    return state.batchSize === this.memory.batchSize && state.spec.activation === spec.activation && state.spec.sizes.join() === spec.sizes.join();
  }

  load(state: StateMessage): void {
    const optimizer = optimizerMemoryOf(this.memory);
    this.generation = state.generation;
    this.step = state.step;
    optimizer.paramsOf(state.generation).set(state.params);
    optimizer.firstMomentOf(state.generation).set(state.m);
    optimizer.secondMomentOf(state.generation).set(state.v);
  }

  /** Takes the batch's samples, computes rows message.range, and returns them for the coordinator. */
  async rows(message: RowsMessage): Promise<ToCoordinator> {
    if (message.step !== this.step) throw new ProtocolError(`rows: step ${message.step} does not follow this replica's step ${this.step}`);
    const started = performance.now();
    const { batch: b, spec, train } = this.memory;
    const [r0, r1] = message.range;
    const features = spec.sizes[0];
    const classes = spec.sizes[spec.sizes.length - 1];
    if (message.x) b.x.set(message.x);
    for (let r = 0; r < message.batch; r++) {
      if (!message.x) {
        const i = message.index![r];
        if (i < 0 || i >= train.count) throw new ProtocolError(`rows: sample ${i} is outside the local dataset of ${train.count}`);
        b.x.set(train.images.subarray(i * features, (i + 1) * features), r * features);
      }
      b.target.fill(0, r * classes, (r + 1) * classes);
      b.target[r * classes + message.labels[r]] = 1;
    }
    const ranges = evenSplit(r1 - r0, this.workers.size).map(([a, c]) => [r0 + a, r0 + c] as Range);
    await this.workers.runPass(
      ranges.map((range) => ({ kind: 'rows', step: this.step, generation: this.generation, batch: message.batch, range, gather: false }) as Task),
    );
    this.batchRows = message.batch;
    // Rows that are not finite are the coordinator's to judge: this replica then waits for its update.
    if (b.rowLoss.subarray(r0, r1).every(Number.isFinite)) this.held.push(message.range);
    const rowsOf = (a: Float32Array, width: number) => a.subarray(r0 * width, r1 * width);
    const deltas = b.deltas.map((d, l) => rowsOf(d, spec.sizes[l + 1]));
    return {
      t: 'rowsDone',
      step: message.step,
      range: message.range,
      rowLoss: b.rowLoss.subarray(r0, r1),
      hidden: b.hidden.map((h, l) => rowsOf(h, spec.sizes[l + 1])),
      deltas: message.compact ? deltas.slice(-1) : deltas,
      ms: performance.now() - started,
    };
  }

  /** Copies rows [r0, …) into the batch buffers; compact ones (last delta only) get their other deltas rebuilt. */
  private async place([r0, r1]: Range, hidden: Float32Array[], deltas: Float32Array[]): Promise<void> {
    if (!placeBatchRows(this.memory, r0, hidden, deltas)) return;
    const ranges = evenSplit(r1 - r0, this.workers.size).map(([a, c]) => [r0 + a, r0 + c] as Range);
    await this.workers.runPass(ranges.map((range) => ({ kind: 'deltas', step: this.step, generation: this.generation, range }) as Task));
  }

  /** Rows of this step another worker computed (this replica has their samples from its rows request). */
  async received(message: RowsDone): Promise<void> {
    if (message.step !== this.step) throw new ProtocolError(`rowsDone: step ${message.step} does not follow this replica's step ${this.step}`);
    await this.place(message.range, message.hidden, message.deltas);
    this.held.push(message.range);
  }

  /**
   * Applies the current step at once if every row of its batch is here (own rows finite, the others'
   * validated and accepted by the coordinator before it forwarded them), without waiting for the update.
   * Returns true if it did.
   */
  async applyIfComplete(): Promise<boolean> {
    if (this.batchRows === 0 || missingRanges(this.batchRows, this.held).length > 0) return false;
    await this.apply(this.batchRows);
    this.appliedEarly = true;
    return true;
  }

  /** Applies step message.step with the rows it still lacked; false if it was applied already (early). */
  async update(message: UpdateMessage): Promise<boolean> {
    if (this.appliedEarly && message.step === this.step - 1) {
      if (message.parts.length > 0) throw new ProtocolError(`update: step ${message.step} sends rows this replica already had`);
      this.appliedEarly = false;
      return false;
    }
    if (message.step !== this.step) throw new ProtocolError(`update: step ${message.step} does not follow this replica's step ${this.step}`);
    const { batch: b, spec } = this.memory;
    for (const part of message.parts) {
      b.x.set(part.x, part.range[0] * spec.sizes[0]);
      await this.place(part.range, part.hidden, part.deltas);
    }
    await this.apply(message.batch);
    return true;
  }

  /** The weight pass and Adam over the rows in the batch buffers: the replica moves to the next step. */
  private async apply(batch: number): Promise<void> {
    const units = unitAssignment(this.memory.spec.sizes.slice(1), this.workers.size);
    const results = await this.workers.runPass(
      units.map((u, slot) => ({ kind: 'weights', step: this.step, generation: this.generation, batch, units: u, slot }) as Task),
    );
    if (results.some((r) => r.nonFiniteLayers.length > 0)) throw new ProtocolError(`update: step ${this.step} gave a non-finite gradient on this replica`);
    this.generation ^= 1;
    this.step++;
    this.batchRows = 0;
    this.held = [];
  }

  checksum(): string {
    return paramsSha256(optimizerMemoryOf(this.memory).paramsOf(this.generation));
  }

  /** The replica's state, for a coordinator that does not apply the steps itself. */
  state(step: number): ToCoordinator {
    // A step applied early left the state before it intact in the other generation.
    const back = this.appliedEarly && step === this.step - 1 ? 1 : 0;
    if (step !== this.step - back) throw new ProtocolError(`snapshot: asked for step ${step}, this replica is at step ${this.step}`);
    const optimizer = optimizerMemoryOf(this.memory);
    const generation = this.generation ^ back;
    return {
      t: 'replicaState',
      step,
      params: optimizer.paramsOf(generation),
      m: optimizer.firstMomentOf(generation),
      v: optimizer.secondMomentOf(generation),
    };
  }

  close(): Promise<void> {
    return this.workers.close();
  }
}

function emptyDataset(features: number, classes: number): Dataset {
  const empty = { count: 0, images: new Float32Array(0), targets: new Float32Array(0), labels: new Uint8Array(0) };
  return { name: 'none', dir: '', features, classes, train: empty, test: empty, sha256: '' };
}

/** Runs a worker until the signal aborts it or it gives up reconnecting. */
export async function runWorker(userOptions: Partial<WorkerOptions> & { connect: string }): Promise<void> {
  const options: WorkerOptions = { ...WORKER_DEFAULTS, ...userOptions };
  const emit = options.onEvent ?? (() => {});
  let replica: Replica | undefined;
  let failures = 0;
  try {
    while (!options.signal?.aborted) {
      const outcome = await session(options, emit, () => replica, (r) => (replica = r));
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
    await replica?.close();
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

/** One connection, from connect to close. */
function session(
  options: WorkerOptions,
  emit: (e: WorkerEvent) => void,
  getReplica: () => Replica | undefined,
  setReplica: (r: Replica) => void,
): Promise<{ synced: boolean; reason: string; fatal?: boolean; finished?: boolean }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(options.connect, {
      maxPayload: options.maxFrameBytes,
      ca: options.ca ? readFileSync(options.ca) : undefined,
      handshakeTimeout: 10_000,
    });
    const nonce = newNonce();
    let synced = false;
    let fatal = false;
    let features = 0;
    // Messages are handled strictly in order: a step's update must be applied before the next rows.
    let queue: Promise<void> = Promise.resolve();
    const send = (m: ToCoordinator) => ws.readyState === ws.OPEN && ws.send(encode(m));
    const fail = (reason: string, isFatal = false) => {
      fatal ||= isFatal;
      send({ t: 'error', message: reason });
      ws.close(1008, closeReason(reason));
    };
    let silence: string | undefined;
    const watchdog = new Watchdog(DEFAULT_HEARTBEAT_MS, (ms) => {
      silence = `no heartbeat from the coordinator for ${Math.round(ms)} ms`;
      ws.terminate();
    });
    ws.on('open', () => watchdog.watch());
    ws.on('ping', () => watchdog.heard());
    const abort = () => ws.close(1000, 'worker stopped');
    options.signal?.addEventListener('abort', abort);
    ws.on('message', (data, isBinary) => {
      watchdog.heard();
      queue = queue.then(async () => {
        if (ws.readyState !== ws.OPEN) return;
        try {
          if (!isBinary) throw new ProtocolError('text frames are not part of the protocol');
          const replica = getReplica();
          const message = validateFromCoordinator(decodeRaw(data as Buffer), {
            spec: synced ? replica?.memory.spec : undefined,
            batchSize: replica?.memory.batchSize ?? 0,
            params: replica ? paramLayout(replica.memory.spec).total : 0,
            features,
          });
          switch (message.t) {
            case 'challenge':
              if (message.protocol !== PROTOCOL_VERSION) {
                return fail(`protocol version ${message.protocol} is not supported (this worker speaks ${PROTOCOL_VERSION})`, true);
              }
              send({
                t: 'hello',
                protocol: PROTOCOL_VERSION,
                mac: options.token ? proof(options.token, 'worker', message.nonce) : new Uint8Array(0),
                nonce,
                engine: options.engine,
                backend: `${options.engine} (${options.device})`,
                threads: options.threads,
                dataSha256: options.dataset?.sha256 ?? '',
              });
              return;
            case 'welcome':
              if (options.token && !proofMatches(options.token, 'coordinator', nonce, message.proof)) {
                return fail('the coordinator did not prove it knows the token', true);
              }
              watchdog.watch(message.heartbeatMs);
              emit({ type: 'connected', url: options.connect, workerId: message.workerId });
              return;
            case 'state': {
              let r = getReplica();
              if (r && !r.fits(message)) {
                await r.close();
                r = undefined;
              }
              if (r) r.load(message);
              else setReplica((r = await Replica.create(message, options)));
              features = message.spec.sizes[0];
              synced = true;
              emit({ type: 'synced', step: message.step, parameters: message.params.length });
              return;
            }
            case 'rows': {
              const replica = getReplica()!;
              send(await replica.rows(message));
              if (await replica.applyIfComplete()) emit({ type: 'step', step: message.step });
              return;
            }
            case 'rowsDone': {
              const replica = getReplica()!;
              await replica.received(message);
              if (await replica.applyIfComplete()) emit({ type: 'step', step: message.step });
              return;
            }
            case 'update':
              if (await getReplica()!.update(message)) emit({ type: 'step', step: message.step });
              return;
            case 'check':
              send({ t: 'checksum', step: message.step, sha256: getReplica()!.checksum() });
              return;
            case 'snapshot':
              send(getReplica()!.state(message.step));
              return;
            case 'error':
              emit({ type: 'error', message: `coordinator: ${message.message}` });
              return;
          }
        } catch (e) {
          const reason = e instanceof ProtocolError ? e.message : `internal error: ${(e as Error).message}`;
          emit({ type: 'error', message: reason });
          fail(reason);
        }
      });
    });
    ws.on('error', (e) => emit({ type: 'error', message: `connection: ${e.message}` }));
    ws.on('close', (code, reason) => {
      watchdog.stop();
      options.signal?.removeEventListener('abort', abort);
      const why = silence ?? `closed (${code}${reason.length ? ` ${reason}` : ''})`;
      void queue.then(() => resolve({ synced, fatal, finished: code === RUN_FINISHED, reason: why }));
    });
  });
}
