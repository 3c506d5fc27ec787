/**
 * The coordinator's WebSocket endpoint: authenticates workers (HMAC challenge–response), validates every
 * message, keeps them alive with ping/pong heartbeats (ws's isAlive pattern), hands out row work with a
 * deadline, and sends each worker what it needs to keep its replica of the training state in step.
 * A misbehaving peer is disconnected with a reason; nothing a peer sends can throw out of this module.
 */
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import type { TrainingMemory } from '../training_memory.js';
import { missingRanges, type Range } from '../../train/plan.js';
import { newNonce, proof, proofMatches } from './auth.js';
import { closeReason, decodeRaw, encode, maxFrameBytes } from './codec.js';
import {
  NonFiniteError,
  PROTOCOL_VERSION,
  ProtocolError,
  RUN_FINISHED,
  type Hello,
  type ReplicaState,
  type RowsDone,
  type StateMessage,
  type ToWorker,
  type UpdatePart,
} from './messages.js';
import { validateFromWorker, type CoordinatorView } from './validation.js';

export interface HubOptions {
  host: string;
  port: number;
  token?: string;
  tlsCert?: string;
  tlsKey?: string;
  engine: string;
  datasetSha256: string;
  heartbeatMs: number;
  /** How long a worker may take to answer a rows request before it is dropped and its rows redone. */
  stepTimeoutMs: number;
  /** How long a new connection may take to authenticate. */
  authTimeoutMs: number;
}

export type HubEvent =
  | { type: 'joined'; worker: string; backend: string; threads: number }
  | { type: 'left'; worker: string; reason: string }
  | { type: 'rejected'; peer: string; reason: string };

type Status = 'authenticating' | 'joining' | 'ready' | 'closed';

export class RemoteWorker {
  status: Status = 'authenticating';
  isAlive = true;
  hello?: Hello;
  readonly challenge = newNonce();
  pending?: { step: number; range: Range; compact: boolean; resolve: (r: RowsDone) => void; reject: (e: Error) => void; timer: NodeJS.Timeout };
  pendingSnapshot?: { step: number; resolve: (r: ReplicaState) => void; reject: (e: Error) => void; timer: NodeJS.Timeout };
  /** Rows per millisecond, smoothed; the scheduler gives work in proportion to it. */
  speed = 0;
  /**
   * The step this worker was last asked rows of (it then has the whole batch's samples), and the batch
   * rows it holds for that step: those it computed and those forwarded to it from the others.
   */
  rowsStep = -1;
  holds: Range[] = [];
  authTimer?: NodeJS.Timeout;

  constructor(
    readonly id: number,
    readonly ws: WebSocket,
    readonly address: string,
  ) {}

  get name(): string {
    return `worker ${this.id} (${this.address})`;
  }
}

/** A worker's answer with non-finite rows, held until the scheduler has checked them. */
export class SuspectRows extends Error {
  override name = 'SuspectRows';
  constructor(
    readonly worker: RemoteWorker,
    readonly reason: string,
  ) {
    super(`${worker.name} sent non-finite rows (${reason})`);
  }
}

export class RemoteHub {
  private server?: Server;
  private wss?: WebSocketServer;
  private heartbeat?: NodeJS.Timeout;
  private nextId = 1;
  readonly workers = new Map<number, RemoteWorker>();
  private readonly view: Omit<CoordinatorView, 'pendingStep' | 'pendingRange' | 'pendingSnapshot' | 'pendingCompact'>;
  private waiters: (() => void)[] = [];
  /** Bytes of every frame sent or received, over all workers, since the start. */
  bytesMoved = 0;

  constructor(
    private readonly options: HubOptions,
    private readonly memory: TrainingMemory,
    private readonly onEvent: (event: HubEvent) => void,
  ) {
    this.view = { spec: memory.spec, batchSize: memory.batchSize };
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  async start(): Promise<AddressInfo> {
    const { tlsCert, tlsKey } = this.options;
    this.server = tlsCert && tlsKey ? createHttpsServer({ cert: readFileSync(tlsCert), key: readFileSync(tlsKey) }) : createHttpServer();
    // Workers send rows, replica states when asked, and small control messages: anything larger is refused by ws itself.
    this.wss = new WebSocketServer({ server: this.server, maxPayload: maxFrameBytes(this.memory.spec, this.memory.batchSize) });
    this.wss.on('connection', (ws, req) => {
      try {
        this.accept(ws, `${req.socket.remoteAddress}:${req.socket.remotePort}`);
      } catch (e) {
        ws.terminate();
        this.report({ type: 'rejected', peer: String(req.socket.remoteAddress), reason: `internal error on connection: ${(e as Error).message}` });
      }
    });
    // An error of the listening socket after start (start() itself rejects on one before): logged, never thrown.
    this.wss.on('error', (e) => this.report({ type: 'rejected', peer: 'server', reason: `server error: ${e.message}` }));
    this.heartbeat = setInterval(() => this.beat(), this.options.heartbeatMs);
    this.heartbeat.unref();
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.options.port, this.options.host, () => resolve());
    });
    return this.server.address() as AddressInfo;
  }

  private accept(ws: WebSocket, address: string): void {
    const worker = new RemoteWorker(this.nextId++, ws, address);
    this.workers.set(worker.id, worker);
    const on = <A extends unknown[]>(what: string, handler: (...args: A) => void) => this.guarded(worker, what, handler);
    ws.on('pong', on('pong', () => (worker.isAlive = true)));
    ws.on('message', on('message', (data: Buffer | Buffer[], isBinary: boolean) => this.receive(worker, data, isBinary)));
    ws.on('close', on('close', (code: number, reason: Buffer) => this.drop(worker, `connection closed (${code}${reason.length ? ` ${reason}` : ''})`)));
    ws.on('error', on('error', (e: Error) => this.drop(worker, `connection error: ${e.message}`)));
    worker.authTimer = setTimeout(
      on('authentication timer', () => this.reject(worker, `did not authenticate within ${this.options.authTimeoutMs} ms`)),
      this.options.authTimeoutMs,
    );
    this.send(worker, { t: 'challenge', protocol: PROTOCOL_VERSION, nonce: worker.challenge });
  }

  /**
   * A handler that cannot throw out of ws (an uncaught throw there ends the coordinator's process): an
   * unexpected error drops that peer, with the reason logged.
   */
  private guarded<A extends unknown[]>(worker: RemoteWorker, what: string, handler: (...args: A) => void): (...args: A) => void {
    return (...args: A) => {
      try {
        handler(...args);
      } catch (e) {
        try {
          this.reject(worker, `internal error in its ${what} handler: ${(e as Error).message}`);
        } catch {
          worker.status = 'closed';
          worker.ws.terminate();
        }
      }
    };
  }

  /** Hands an event to the listener; a listener that throws is not this module's failure to propagate. */
  private report(event: HubEvent): void {
    try {
      this.onEvent(event);
    } catch (e) {
      process.emitWarning(`dtrain: a hub event listener threw: ${(e as Error).message}`);
    }
  }

  private send(worker: RemoteWorker, message: ToWorker): void {
    if (worker.ws.readyState !== worker.ws.OPEN) return;
    const frame = encode(message);
    this.bytesMoved += frame.length;
    worker.ws.send(frame);
  }

  private receive(worker: RemoteWorker, data: Buffer | Buffer[], isBinary: boolean): void {
    if (worker.status === 'closed') return;
    let type: unknown;
    try {
      if (!isBinary) throw new ProtocolError('text frames are not part of the protocol');
      const size = Array.isArray(data) ? data.reduce((n, b) => n + b.length, 0) : data.length;
      this.bytesMoved += size;
      const raw = decodeRaw(data);
      type = raw.t;
      const message = validateFromWorker(raw, worker.status === 'authenticating' ? undefined : {
        ...this.view,
        pendingStep: worker.pending?.step,
        pendingRange: worker.pending?.range,
        pendingSnapshot: worker.pendingSnapshot?.step,
        pendingCompact: worker.pending?.compact ?? false,
      });
      if (worker.status === 'authenticating') {
        if (message.t !== 'hello') throw new ProtocolError(`expected hello, got ${message.t}`);
        this.authenticate(worker, message);
        return;
      }
      switch (message.t) {
        case 'hello':
          throw new ProtocolError('hello sent twice');
        case 'rowsDone': {
          const pending = worker.pending!;
          worker.pending = undefined;
          clearTimeout(pending.timer);
          worker.holds.push(message.range);
          this.forward(worker, message, Array.isArray(data) ? Buffer.concat(data) : data);
          pending.resolve(message);
          return;
        }
        case 'checksum':
          this.checksums.get(worker.id)?.(message.sha256);
          return;
        case 'replicaState': {
          const pending = worker.pendingSnapshot!;
          worker.pendingSnapshot = undefined;
          clearTimeout(pending.timer);
          pending.resolve(message);
          return;
        }
        case 'error':
          this.drop(worker, `worker reported: ${message.message}`);
          worker.ws.close(1011, 'worker error');
          return;
      }
    } catch (e) {
      const pending = worker.pending;
      if (e instanceof NonFiniteError && type === 'rowsDone' && pending && worker.status === 'ready') {
        // Not dropped yet: the scheduler computes these rows itself and then knows whether the worker lied.
        worker.pending = undefined;
        clearTimeout(pending.timer);
        pending.reject(new SuspectRows(worker, e.message));
        return;
      }
      this.reject(worker, e instanceof ProtocolError ? e.message : `internal error: ${(e as Error).message}`);
    }
  }

  private authenticate(worker: RemoteWorker, hello: Hello): void {
    const token = this.options.token;
    if (token && !proofMatches(token, 'worker', worker.challenge, hello.mac)) throw new ProtocolError('authentication failed: wrong or missing token');
    if (hello.engine !== this.options.engine) {
      throw new ProtocolError(`engine mismatch: the run uses "${this.options.engine}", the worker runs "${hello.engine}"`);
    }
    clearTimeout(worker.authTimer);
    worker.hello = hello;
    worker.status = 'joining';
    this.send(worker, {
      t: 'welcome',
      proof: token ? proof(token, 'coordinator', hello.nonce) : new Uint8Array(0),
      workerId: worker.id,
      heartbeatMs: this.options.heartbeatMs,
    });
    this.report({ type: 'joined', worker: worker.name, backend: hello.backend, threads: hello.threads });
    for (const wake of this.waiters.splice(0)) wake();
  }

  /** Disconnects a worker with a reason (logged as a rejection). */
  reject(worker: RemoteWorker, reason: string): void {
    if (worker.status === 'closed') return;
    this.report({ type: 'rejected', peer: worker.name, reason });
    try {
      this.send(worker, { t: 'error', message: reason });
    } catch {
      // the socket may already be gone
    }
    worker.ws.close(1008, closeReason(reason));
    this.drop(worker, reason);
  }

  private drop(worker: RemoteWorker, reason: string): void {
    if (worker.status === 'closed') return;
    const wasMember = worker.status !== 'authenticating';
    worker.status = 'closed';
    clearTimeout(worker.authTimer);
    this.workers.delete(worker.id);
    for (const pending of [worker.pending, worker.pendingSnapshot]) {
      if (!pending) continue;
      clearTimeout(pending.timer);
      pending.reject(new Error(`${worker.name} left: ${reason}`));
    }
    worker.pending = undefined;
    worker.pendingSnapshot = undefined;
    if (worker.ws.readyState === worker.ws.OPEN) worker.ws.terminate();
    if (wasMember) this.report({ type: 'left', worker: worker.name, reason });
  }

  private beat(): void {
    for (const worker of this.workers.values()) {
      this.guarded(worker, 'heartbeat', () => {
        if (!worker.isAlive) return this.drop(worker, `no heartbeat for ${this.options.heartbeatMs} ms`);
        worker.isAlive = false;
        worker.ws.ping();
      })();
    }
  }

  /** Workers that can take rows now. */
  ready(): RemoteWorker[] {
    return [...this.workers.values()].filter((w) => w.status === 'ready');
  }

  /** Workers that authenticated (or must resynchronise) and wait for the state. */
  joining(): RemoteWorker[] {
    return [...this.workers.values()].filter((w) => w.status === 'joining');
  }

  /** Sends the committed state to workers that joined since the last step, which makes them ready. */
  admit(snapshot: Omit<StateMessage, 't' | 'useLocalData'>): void {
    for (const worker of this.joining()) {
      this.send(worker, { t: 'state', ...snapshot, useLocalData: this.usesLocalData(worker) });
      worker.status = 'ready';
    }
  }

  private usesLocalData(worker: RemoteWorker): boolean {
    return !!worker.hello?.dataSha256 && worker.hello.dataSha256 === this.options.datasetSha256;
  }

  /** Resolves when some worker has authenticated (used when there is nobody to compute). */
  waitForWorker(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /**
   * Asks a worker for the rows pass over `range`; resolves with its validated answer. The request carries
   * the samples of the whole batch (`samples`, dataset indices), so that the rows others compute can be
   * forwarded to it without their pixels.
   */
  requestRows(worker: RemoteWorker, step: number, batch: number, range: Range, samples: Int32Array, compact: boolean): Promise<RowsDone> {
    const { x, index, labels } = this.rowsInput(worker, samples);
    if (worker.rowsStep !== step) {
      worker.rowsStep = step;
      worker.holds = [];
    }
    return new Promise<RowsDone>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.reject(worker, `did not answer step ${step} within ${this.options.stepTimeoutMs} ms`);
      }, this.options.stepTimeoutMs);
      worker.pending = { step, range, compact, resolve, reject, timer };
      this.send(worker, { t: 'rows', step, batch, range, labels, compact, ...(x ? { x } : { index }) });
    });
  }

  /**
   * Sends a worker's validated rows, as the very frame it sent, to every other worker computing rows of
   * the same step: they get them while still computing their own, rather than after the whole batch.
   */
  private forward(from: RemoteWorker, rows: RowsDone, frame: Buffer): void {
    for (const worker of this.ready()) {
      if (worker === from || worker.rowsStep !== rows.step || worker.ws.readyState !== worker.ws.OPEN) continue;
      this.bytesMoved += frame.length;
      worker.ws.send(frame);
      worker.holds.push(rows.range);
    }
  }

  /** The rows' samples (dataset indices given): pixels, or just the indices when the worker has the data. */
  private rowsInput(worker: RemoteWorker, samples: Int32Array) {
    const { train, spec } = this.memory;
    const features = spec.sizes[0];
    const classes = spec.sizes[spec.sizes.length - 1];
    const labels = new Uint8Array(samples.length);
    samples.forEach((i, r) => (labels[r] = train.targets.subarray(i * classes, (i + 1) * classes).indexOf(1)));
    if (this.usesLocalData(worker)) return { index: samples.slice(), labels };
    const x = new Float32Array(samples.length * features);
    samples.forEach((i, r) => x.set(train.images.subarray(i * features, (i + 1) * features), r * features));
    return { x, labels };
  }

  /**
   * Sends every ready worker the rows of step `step` it does not hold yet (it was not asked for rows of
   * this step, or the coordinator computed them), compact if the rows came so, which tells it to apply
   * the step; returns how many workers it told.
   */
  broadcastUpdate(step: number, batch: number, compact: boolean): number {
    const { batch: b, spec } = this.memory;
    const sizes = spec.sizes;
    const last = b.deltas.length - 1;
    const partOf = ([r0, r1]: Range): UpdatePart => ({
      range: [r0, r1],
      x: b.x.subarray(r0 * sizes[0], r1 * sizes[0]),
      hidden: b.hidden.map((h, l) => h.subarray(r0 * sizes[l + 1], r1 * sizes[l + 1])),
      // Compact: the coordinator holds only the last delta of rows that came compact.
      deltas: b.deltas.flatMap((d, l) => (compact && l < last ? [] : [d.subarray(r0 * sizes[l + 1], r1 * sizes[l + 1])])),
    });
    const ready = this.ready();
    for (const worker of ready) {
      const held = worker.rowsStep === step ? worker.holds : [];
      this.send(worker, { t: 'update', step, batch, parts: missingRanges(batch, held).map(partOf) });
    }
    return ready.length;
  }

  /** Asks a worker for its replica's state at `step` (answered once it has applied every step before). */
  fetchState(worker: RemoteWorker, step: number): Promise<ReplicaState> {
    return new Promise<ReplicaState>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.reject(worker, `did not send its state of step ${step} within ${this.options.stepTimeoutMs} ms`);
      }, this.options.stepTimeoutMs);
      worker.pendingSnapshot = { step, resolve, reject, timer };
      this.send(worker, { t: 'snapshot', step });
    });
  }

  private checksums = new Map<number, (sha: string) => void>();

  /** Asks every ready worker for the SHA-256 of its parameters; resolves with the answers that came. */
  async checksumsAt(step: number, timeoutMs: number): Promise<Map<RemoteWorker, string>> {
    const answers = new Map<RemoteWorker, string>();
    await Promise.all(
      this.ready().map(
        (worker) =>
          new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, timeoutMs);
            this.checksums.set(worker.id, (sha) => {
              clearTimeout(timer);
              answers.set(worker, sha);
              resolve();
            });
            this.send(worker, { t: 'check', step });
          }),
      ),
    );
    this.checksums.clear();
    return answers;
  }

  /** Makes a worker whose replica diverged fetch a fresh snapshot before its next step. */
  resync(worker: RemoteWorker): void {
    if (worker.status === 'ready') worker.status = 'joining';
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    for (const worker of this.workers.values()) {
      worker.ws.close(RUN_FINISHED, 'run finished');
      this.drop(worker, 'coordinator finished');
    }
    await new Promise<void>((resolve) => (this.wss ? this.wss.close(() => resolve()) : resolve()));
    await new Promise<void>((resolve) => {
      if (!this.server) return resolve();
      // Workers get a second to finish the closing handshake (so they see RUN_FINISHED and exit); a
      // connection still in its opening handshake would otherwise hold the server open until it times out.
      const force = setTimeout(() => (this.server as Server & { closeAllConnections?: () => void }).closeAllConnections?.(), 1000);
      this.server.close(() => {
        clearTimeout(force);
        resolve();
      });
    });
  }
}
