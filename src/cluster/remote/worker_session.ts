/**
 * One connection of a worker to the coordinator, from connect to close: the handshake (it proves it knows
 * the token and checks that the coordinator does too), then every message the coordinator sends, each
 * validated and handed to its type's handler, strictly in arrival order (a step's update must be applied
 * before the next step's rows). The watchdog ends a connection whose coordinator went silent. How the
 * connection ended decides what runWorker (client.ts) does next: reconnect, give up, or exit.
 * Nothing of the coordinator's side is imported here (hub, peer, requests): a worker never loads it.
 */
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import type { Range } from '../plan.js';
import WebSocket from 'ws';
import { newNonce, proof, proofMatches } from './auth.js';
import { describeAdapter } from '../../engine/webgpu/adapter.js';
import type { WorkerEvent, WorkerOptions } from './worker_options.js';
import { closeReason, decodeRaw, encode } from './codec.js';
import { frameTooLarge, tlsUntrusted } from '../../errors.js';
import { HANDSHAKE_FRAME_BYTES, PROTOCOL_VERSION, ProtocolError, REFUSED, RUN_FINISHED, type RowsDone, type RowsMessage, type SliceMessage, type ToCoordinator, type ToWorker, type UpdateMessage } from './messages.js';
import { PeerLinks, PeerLost } from './peer_links.js';
import { Replica } from './replica.js';
import { prepareEngine } from '../../engine/create.js';
import type { Device, EngineName } from '../../engine/engine.js';
import { validateFromCoordinator, type WorkerView } from './validation.js';
import { Watchdog } from './watchdog.js';

function zeroMask(mask: Buffer): void {
  mask.fill(0);
}

/** The coordinator's heartbeat period assumed until its welcome says (config DEFAULTS.heartbeatMs). */
const DEFAULT_HEARTBEAT_MS = 5000;

/**
 * The coordinator's messages a worker holds received but not yet handled, at most: this many, and twice its
 * frame limit in bytes (a snapshot and as much again). An honest coordinator is at most a step or two ahead
 * of a worker (it waits for every step's rows), far below either. Past either, the worker closes the
 * connection, drops what it had not handled and reconnects (a new snapshot resynchronises it): its memory
 * stays bounded whatever a coordinator, or something posing as one, sends.
 */
export const MAX_QUEUED_MESSAGES = 4096;

/** Node's codes for a TLS certificate that could not be verified (tls.checkServerIdentity, OpenSSL's X509 errors). */
const TLS_VERIFICATION_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** How a connection ended. */
export interface SessionOutcome {
  /** It received a state snapshot (a reconnect then starts counting failures afresh). */
  synced: boolean;
  reason: string;
  /** Reconnecting cannot help (wrong token, another protocol version). */
  fatal?: boolean;
  /** The coordinator closed with RUN_FINISHED. */
  finished?: boolean;
}

/** The replica, kept by runWorker across connections (a reconnect reloads it if the model still fits). */
export interface ReplicaSlot {
  replica?: Replica;
  /** Its peer listener and links (peer_links.ts), kept across connections: the listener's address stays announced. */
  links?: PeerLinks;
}

/** The engine and device in words, e.g. "onnx (webgpu on nvidia, hopper, NVIDIA H200)": the hello's backend. */
export function deviceOf(options: Pick<WorkerOptions, 'engine' | 'device' | 'webgpu'>): string {
  return `${options.engine} (${options.device}${options.webgpu ? ` on ${describeAdapter(options.webgpu.adapter)}` : ''})`;
}

/**
 * Where this worker's time goes between two of its rows answers, which each answer reports (RowsDone
 * applyMs, waitMs): applying steps (the handlers that take in rows, updates and slices), and sitting idle
 * (no message being handled); and how long the rows request waited behind earlier messages (queuedMs), which
 * the coordinator takes from the round trip to leave the time on the wire. Rows computed are timed by the
 * replica; checks and snapshots count as none of these.
 */
class StepTimes {
  private applyMs = 0;
  private waitMs = 0;
  private idleSince?: number;
  /** How long the message being handled waited behind earlier ones. */
  private queuedMs = 0;

  /** A message that came at `arrived` is taken up: the time since the last one was handled was idle. */
  busy(now: number, arrived: number): void {
    if (this.idleSince !== undefined) this.waitMs += now - this.idleSince;
    this.idleSince = undefined;
    this.queuedMs = Math.max(0, now - arrived);
  }

  /** The message is handled: idle from now until the next. */
  idle(now: number): void {
    this.idleSince = now;
  }

  async applying(work: () => Promise<void>): Promise<void> {
    const started = performance.now();
    try {
      await work();
    } finally {
      this.applyMs += performance.now() - started;
    }
  }

  /** The times since the last call, for the answer to the rows request being handled. */
  take(): Pick<RowsDone, 'applyMs' | 'waitMs' | 'queuedMs'> {
    const taken = { applyMs: this.applyMs, waitMs: this.waitMs, queuedMs: this.queuedMs };
    this.applyMs = this.waitMs = 0;
    return taken;
  }
}

/** One handler per message type the coordinator sends. */
type Handlers = { [T in ToWorker['t']]: (session: WorkerSession, message: Extract<ToWorker, { t: T }>) => void | Promise<void> };

const HANDLERS: Handlers = {
  async challenge(s, message) {
    if (message.protocol !== PROTOCOL_VERSION) {
      return s.fail(`protocol version ${message.protocol} is not supported (this worker speaks ${PROTOCOL_VERSION})`, true);
    }
    if (s.options.engineFromCoordinator) await s.computeAs(message.engine, message.device);
    const { token, engine, device, threads, dataset } = s.options;
    const peerAddress = await s.peerAddress();
    s.send({
      t: 'hello',
      protocol: PROTOCOL_VERSION,
      mac: token ? proof(token, 'worker', message.nonce) : new Uint8Array(0),
      nonce: s.nonce,
      engine,
      device,
      backend: deviceOf(s.options),
      threads,
      dataSha256: dataset?.sha256 ?? '',
      ...(s.options.rank !== undefined ? { rank: s.options.rank } : {}),
      ...(s.options.name !== undefined ? { name: s.options.name } : {}),
      ...(peerAddress ? { peerAddress } : {}),
    });
  },

  welcome(s, message) {
    if (s.options.token && !proofMatches(s.options.token, 'coordinator', s.nonce, message.proof)) {
      return s.fail('the coordinator did not prove it knows the token', true);
    }
    const given = s.options.maxFrameBytes;
    if (given !== undefined && message.maxFrameBytes > given) return s.stop(frameTooLarge(given).message);
    s.raiseFrameLimit(message.maxFrameBytes);
    s.welcomed = true;
    s.watchdog.watch(message.heartbeatMs);
    s.emit({ type: 'connected', url: s.options.connect, workerId: message.workerId });
  },

  /** A full snapshot: loaded into the replica, or a new replica when there is none or the model changed. */
  async state(s, message) {
    let replica = s.slot.replica;
    if (replica && !replica.fits(message)) {
      await replica.close();
      replica = s.slot.replica = undefined;
    }
    if (replica) replica.load(message);
    else s.slot.replica = await Replica.create(message, s.options);
    s.slot.links?.join(message.peers);
    s.synced = true;
    s.emit({ type: 'synced', step: message.step, parameters: message.params.length });
  },

  async rows(s, message) {
    await s.commitUpTo(message.step);
    if (message.peers) return s.peerRows(message);
    s.sendRows(await s.computeRows(message));
    await s.times.applying(() => s.applyIfComplete(message.step));
  },

  /** Another worker's rows of this step, forwarded by the coordinator. */
  rowsDone: (s, message) =>
    s.times.applying(async () => {
      await s.replica.received(message);
      await s.applyIfComplete(message.step);
    }),

  update: (s, message) =>
    s.times.applying(async () => {
      // A member asked for no rows of this step gets its update first: the step before must commit.
      await s.commitUpTo(message.step);
      if (message.units && message.peers) return s.peerUnits(message, message.units);
      if (message.units) {
        s.options.onUnits?.(message.step);
        const { slice, committed } = await s.replica.applyUnits(message, message.units);
        s.send(s.options.tamperSlice ? s.options.tamperSlice(slice) : slice);
        if (committed) s.emit({ type: 'step', step: message.step });
      } else if (await s.replica.update(message)) s.emit({ type: 'step', step: message.step });
    }),

  /** Another owner's units of a sharded step, forwarded by the coordinator. */
  slice: (s, message) =>
    s.times.applying(async () => {
      if (s.replica.slice(message)) s.emit({ type: 'step', step: message.step });
    }),

  check: async (s, message) => {
    await s.commitUpTo(message.step);
    s.send({ t: 'checksum', step: message.step, sha256: await s.replica.checksumAt(message.step) });
  },

  snapshot: async (s, message) => {
    await s.commitUpTo(message.step);
    const state = await s.replica.stateAt(message.step, message.units);
    s.send(s.options.tamperState ? s.options.tamperState(state) : state);
  },

  error: (s, message) => s.emit({ type: 'error', message: `coordinator: ${message.message}` }),
};

class WorkerSession {
  readonly ws: WebSocket;
  /** The nonce the coordinator must prove it knows the token for. */
  readonly nonce = newNonce();
  readonly watchdog: Watchdog;
  /** The coordinator proved it knows the token: only then are messages past the handshake taken. */
  welcomed = false;
  synced = false;
  private fatal = false;
  /** Why the connection ended, when this side knows better than the close frame: silence, or a refusal. */
  private silence?: string;
  /** Messages are handled strictly in order: a step's update must be applied before the next rows. */
  private queue: Promise<void> = Promise.resolve();
  /** Its apply and idle time since its last rows answer. */
  readonly times = new StepTimes();
  /** What the queue holds not yet handled (bounded: MAX_QUEUED_MESSAGES). */
  private queuedMessages = 0;
  private queuedBytes = 0;
  /** The largest frame taken now: small until the welcome says this run's (raiseFrameLimit). */
  private frameLimit = HANDSHAKE_FRAME_BYTES;
  /** The address this connection leaves from: the peer listener's default host. */
  private localAddress?: string;

  constructor(
    readonly options: WorkerOptions,
    readonly emit: (e: WorkerEvent) => void,
    readonly slot: ReplicaSlot,
  ) {
    this.ws = new WebSocket(options.connect, {
      maxPayload: HANDSHAKE_FRAME_BYTES,
      // A zero masking key: ws then sends the frame's bytes as they are instead of a masked copy of each
      // (megabytes a step). Masking guards proxies against a browser script's chosen bytes; a worker is no
      // browser, and whatever it sends is validated by the coordinator anyway.
      generateMask: zeroMask,
      ca: options.ca ? readFileSync(options.ca) : undefined,
      handshakeTimeout: 10_000,
    });
    this.watchdog = new Watchdog(DEFAULT_HEARTBEAT_MS, (ms) => {
      this.silence = `no heartbeat from the coordinator for ${Math.round(ms)} ms`;
      this.ws.terminate();
    });
  }

  /** Runs the connection; resolves once it closed and every message that came before was handled. */
  run(): Promise<SessionOutcome> {
    const { ws, watchdog, options } = this;
    return new Promise((resolve) => {
      // Bytes arriving are a coordinator alive: a state snapshot on a slow link takes longer than the
      // watchdog's periods, and the pings queued behind it come only after it. (Listened to once ws reads
      // the socket: a listener added at 'upgrade' would start the stream before ws takes its first bytes.)
      let socket: Socket | undefined;
      ws.on('upgrade', (response) => {
        socket = response.socket;
        this.localAddress = socket.localAddress;
      });
      ws.on('open', () => {
        watchdog.watch();
        socket?.on('data', () => watchdog.heard());
      });
      ws.on('ping', () => watchdog.heard());
      const abort = () => ws.close(1000, 'worker stopped');
      options.signal?.addEventListener('abort', abort);
      ws.on('message', (data, isBinary) => {
        watchdog.heard();
        this.enqueue(data as Buffer, isBinary, performance.now());
      });
      // Admission control turns a connection away before the upgrade, with the reason as the status text: a
      // full coordinator or an address refused for a while; the worker says why and tries again later.
      ws.on('unexpected-response', (_request, response) => {
        this.silence = `the coordinator turned this connection away (HTTP ${response.statusCode}): ${response.statusMessage ?? ''}`;
        ws.terminate();
      });
      ws.on('error', (e) => {
        if (this.silence) return; // the reason is known already (the abort after a refusal is no news)
        this.emit({ type: 'error', message: `connection: ${e.message}` });
        // A certificate this worker cannot verify will not verify on the next try either.
        const code = (e as Error & { code?: string }).code ?? '';
        if (TLS_VERIFICATION_CODES.has(code) && !this.silence) {
          this.fatal = true;
          this.silence = tlsUntrusted(options.connect, e.message, code).message;
        }
        // A frame over maxPayload: the model's snapshot does not fit, and never will.
        if ((e as Error & { code?: string }).code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' && !this.silence) {
          this.fatal = true;
          this.silence = frameTooLarge(this.frameLimit).message;
        }
      });
      ws.on('close', (code, reason) => {
        watchdog.stop();
        // Links belong to a membership this worker has left: they end, and so does every wait on them.
        this.slot.links?.join(undefined);
        options.signal?.removeEventListener('abort', abort);
        if (code === REFUSED && !this.silence) this.refused(String(reason));

        const why = this.silence ?? `closed (${code}${reason.length ? ` ${reason}` : ''})`;
        void this.queue.then(() => resolve({ synced: this.synced, fatal: this.fatal, finished: code === RUN_FINISHED, reason: why }));
      });
    });
  }

  /** The replica, which every message after the state needs (validation refuses them before it). */
  get replica(): Replica {
    return this.slot.replica!;
  }

  send(message: ToCoordinator): void {
    if (this.ws.readyState === this.ws.OPEN) this.ws.send(encode(message));
  }

  /** The coordinator refused this worker before welcoming it: the session ends, and runWorker with it. */
  refused(reason: string): void {
    this.fatal = true;
    this.silence = `the coordinator refused this worker: ${reason}`;
  }

  /**
   * Takes the coordinator's engine and device for this worker's replica (engineFromCoordinator): a GPU is
   * found and named as at start (prepareEngine), and a replica of another engine is built anew at the state.
   */
  async computeAs(engine: EngineName | undefined, device: Device | undefined): Promise<void> {
    const options = this.options;
    if ((engine ?? options.engine) === options.engine && (device ?? options.device) === options.device) return;
    const { webgpu } = await prepareEngine({ ...options, engine: engine ?? options.engine, device: device ?? options.device, webgpu: undefined });
    Object.assign(options, { engine: engine ?? options.engine, device: device ?? options.device, webgpu });
    await this.slot.replica?.close();
    this.slot.replica = undefined;
    this.emit({ type: 'device', description: deviceOf(options) });
  }

  /** Ends this worker (no reconnecting) with `reason`, told to the coordinator too. */
  stop(reason: string): void {
    this.silence ??= reason;
    this.fail(reason, true);
  }

  /**
   * Takes frames up to `bytes` from now on (the welcome's limit for this run). ws fixes its limit when the
   * connection is made, and a run's limit is known only from the welcome on that connection, so the
   * receiver's limit is raised in place (ws 8 keeps it in Receiver._maxPayload, read at each frame).
   */
  raiseFrameLimit(bytes: number): void {
    this.slot.links?.frameLimit(bytes);
    const receiver = (this.ws as unknown as { _receiver?: { _maxPayload?: number } })._receiver;
    if (typeof receiver?._maxPayload !== 'number') throw new Error('ws no longer keeps its frame limit in Receiver._maxPayload');
    receiver._maxPayload = bytes;
    this.frameLimit = bytes;
  }

  /** Tells the coordinator why and closes; a fatal reason ends runWorker instead of reconnecting. */
  fail(reason: string, fatal = false): void {
    this.fatal ||= fatal;
    this.send({ t: 'error', message: reason });
    this.ws.close(1008, closeReason(reason));
  }

  /** Applies the current step if all its rows are here (see Replica.applyIfComplete). */
  async applyIfComplete(step: number): Promise<void> {
    if (await this.replica.applyIfComplete()) this.emit({ type: 'step', step });
  }

  /**
   * Queues a frame (decoded on arrival) behind those not yet handled, or ends the connection when the queue is
   * full (MAX_QUEUED_MESSAGES).
   */
  private enqueue(data: Buffer, isBinary: boolean, arrived: number): void {
    if (this.ws.readyState !== this.ws.OPEN) return; // closing: what still arrives is dropped, not held
    const maxBytes = 2 * this.frameLimit;
    if (this.queuedMessages >= MAX_QUEUED_MESSAGES || this.queuedBytes + data.length > maxBytes) {
      const reason = `the coordinator sent more than this worker holds unhandled (${MAX_QUEUED_MESSAGES} messages or ${Math.round(maxBytes / 2 ** 20)} MiB): reconnecting`;
      this.emit({ type: 'error', message: reason });
      this.silence ??= reason;
      this.ws.close(1008, closeReason(reason));
      return;
    }
    const raw = decodeOrError(data, isBinary);
    // A new state ends at once every wait on the peer links of the admission before: a handler waiting
    // for a slice that will never come would otherwise hold the queue the state waits in.
    if (!(raw instanceof Error) && raw.t === 'state') this.slot.links?.supersede();
    // The handshake's frames are handled as they arrive when nothing waits before them: the welcome raises
    // the frame limit before ws reads the header of the snapshot sent right behind it (a queued handler
    // would run only after ws parsed the rest of the chunk, against the handshake's limit).
    const handleNow = !this.welcomed && this.queuedMessages === 0;
    this.queuedMessages++;
    this.queuedBytes += data.length;
    this.queue = (handleNow ? this.receive(raw, arrived) : this.queue.then(() => this.receive(raw, arrived)))
      .finally(() => {
        this.queuedMessages--;
        this.queuedBytes -= data.length;
      });
  }

  /**
   * One frame (decoded on arrival): validated, then handled by its type's handler; anything wrong ends the
   * connection, but a wait on the peer links that cannot end well: that answer is given up (the coordinator
   * is told when a link broke), and the connection goes on.
   */
  private async receive(raw: Record<string, unknown> | Error, arrived: number): Promise<void> {
    if (this.ws.readyState !== this.ws.OPEN) return;
    this.times.busy(performance.now(), arrived);
    let message: ToWorker | undefined;
    try {
      if (raw instanceof Error) throw raw;
      message = validateFromCoordinator(raw, this.view());
      await (HANDLERS[message.t] as (s: WorkerSession, message: ToWorker) => void | Promise<void>)(this, message);
    } catch (e) {
      if (e instanceof PeerLost) return this.abandoned(e, message);
      const reason = e instanceof ProtocolError ? e.message : `internal error: ${(e as Error).message}`;
      this.emit({ type: 'error', message: reason });
      this.fail(reason);
    } finally {
      this.times.idle(performance.now());
    }
  }

  // ---------------------------------------------------------------- peer links

  /** Starts the peer listener (once) and returns the address to announce, or none (--peer-listen off). */
  async peerAddress(): Promise<string | undefined> {
    if (this.options.peerListen === 'off') return undefined;
    if (!this.slot.links) {
      this.slot.links = new PeerLinks({ listen: this.options.peerListen, advertise: this.options.advertise, maxFrameBytes: this.frameLimit });
      this.options.onPeerLinks?.(this.slot.links);
    }
    const links = this.slot.links;
    links.attach(
      () => ({ ...this.view(), step: this.slot.replica?.step ?? 0 }),
      { report: (report) => this.send(report), note: (message) => this.emit({ type: 'error', message }) },
    );
    try {
      return await links.listen(this.localAddress ?? '127.0.0.1');
    } catch (e) {
      // A worker without a listener still works: its steps' bytes go through the coordinator.
      this.emit({ type: 'error', message: `peer listener: ${(e as Error).message}; steps go through the coordinator` });
      return undefined;
    }
  }

  /**
   * Sharded steps between peers commit once the others' slices came over the links: a message about step
   * `step` (its rows, a check, a snapshot) first waits for those of every step before it.
   */
  async commitUpTo(step: number): Promise<void> {
    const replica = this.slot.replica;
    const links = this.slot.links;
    if (!replica || !links) return;
    while (replica.midStep && replica.step < step) {
      for (const slice of await links.takeSlices(replica.step)) if (replica.slice(slice)) this.emit({ type: 'step', step: slice.step });
    }
  }

  /** Rows asked for between peers: in full to every other member, their losses to the coordinator. */
  async peerRows(message: RowsMessage): Promise<void> {
    const rows = await this.computeRows({ ...message, lossOnly: false, compact: false });
    // Non-finite rows are the coordinator's to judge (it asks for the state and computes them itself): they
    // reach no peer, whose wait the new state then ends.
    if (rows.rowLoss.every(Number.isFinite)) this.slot.links!.broadcast(rows);
    this.sendRows({ ...rows, hidden: [], deltas: [] });
  }

  /** The rows asked for, computed (slowed by rowDelayMs, a test's slower machine), with this worker's times. */
  async computeRows(message: RowsMessage): Promise<RowsDone> {
    const computed = await this.replica.rows(message);
    const delay = (this.options.rowDelayMs ?? 0) * (message.range[1] - message.range[0]);
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    return { ...computed, ms: computed.ms + delay, ...this.times.take() };
  }

  /** Rows to the coordinator (or what a test's tamperRows makes of them). */
  sendRows(rows: RowsDone): void {
    this.send(this.options.tamperRows ? this.options.tamperRows(rows) : rows);
  }

  /** A sharded step between peers: the rows the update lacks from the links, its slice to them, the coordinator told. */
  async peerUnits(message: UpdateMessage, units: Range[]): Promise<void> {
    const links = this.slot.links!;
    for (let gaps = this.replica.lacking(message); gaps.length > 0; gaps = this.replica.lacking(message)) {
      for (const rows of await links.takeRows(message.step, gaps)) await this.replica.received(rows);
    }
    this.options.onUnits?.(message.step);
    // Each layer's slice goes to the others as soon as it is computed, while the next layer's is (DDP's buckets).
    const send = (slice: SliceMessage) => links.broadcast(this.options.tamperSlice ? this.options.tamperSlice(slice) : slice);
    const { committed } = await this.replica.applyUnits(message, units, send);
    this.send({ t: 'sliceDone', step: message.step, units });
    if (committed) this.emit({ type: 'step', step: message.step });
  }

  /**
   * A handler gave up on the peer links: after a new state, nothing is owed any more; after a broken link,
   * the coordinator is told that this answer will not come (it sends everyone the state again).
   */
  private abandoned(e: PeerLost, message: ToWorker | undefined): void {
    this.emit({ type: 'error', message: `gave up a step between peers: ${e.message}` });
    const kind = message?.t === 'rows' ? 'rows' : message?.t === 'update' ? 'slice' : message?.t === 'snapshot' ? 'snapshot' : undefined;
    // A check given up only goes unanswered, as a late one does.
    if (kind && message && 'step' in message) this.slot.links?.abandon({ kind, step: message.step });
  }

  /** What validation knows: the model once this connection brought a state, and the replica's sizes. */
  private view(): WorkerView {
    const replica = this.slot.replica;
    return {
      welcomed: this.welcomed,
      spec: this.synced ? replica?.memory.spec : undefined,
      batchSize: replica?.memory.batchSize ?? 0,
    };
  }
}

/** A frame decoded, or why it cannot be (the handler reports it in order, and ends the connection). */
function decodeOrError(data: Buffer, isBinary: boolean): Record<string, unknown> | Error {
  try {
    if (!isBinary) throw new ProtocolError('text frames are not part of the protocol');
    return decodeRaw(data);
  } catch (e) {
    return e as Error;
  }
}

/** One connection, from connect to close. */
export function session(options: WorkerOptions, emit: (e: WorkerEvent) => void, slot: ReplicaSlot): Promise<SessionOutcome> {
  return new WorkerSession(options, emit, slot).run();
}

