/**
 * The coordinator's WebSocket endpoint (RemoteHub): its peers' lives, from connection to drop, and the
 * events that tell of them. It composes the parts, one concern each: the listening socket (listener.ts),
 * the door that admits and authenticates connections (gate.ts), the heartbeat (heartbeat.ts) and the
 * training work with members (peer_work.ts); here every frame a peer sends is decoded and validated
 * (validation.ts) before its handler runs, and every frame sent is counted. A misbehaving peer is
 * disconnected with a reason; nothing a peer sends can throw out of the hub.
 */
import type { AddressInfo, Socket } from 'node:net';
import type { WebSocket } from 'ws';
import type { Range } from '../plan.js';
import type { RemotePlan } from '../../config.js';
import type { TrainingMemory } from '../training_memory.js';
import type { AdmissionStats } from './admission.js';
import { closeReason, decodeRaw, encode, maxFrameBytes } from './codec.js';
import { Gate, type GateOptions } from './gate.js';
import { Heartbeat } from './heartbeat.js';
import type { HubContext, HubEvent } from './hub_context.js';
import { Listener, type ListenOptions } from './listener.js';
import type { RemoteMembers } from './members.js';
import { NonFiniteError, ProtocolError, REFUSED, RefusedError, RUN_FINISHED, type Hello, type ReplicaState, type RowsDone, type RowsForm, type SliceDone, type SliceMessage, type ToCoordinator, type ToWorker } from './messages.js';
import { RemotePeer, SuspectRows } from './peer.js';
import { PeerMesh } from './peer_mesh.js';
import { PeerWork, type Snapshot, type WorkOptions } from './peer_work.js';
import { validateFromWorker } from './validation.js';

export { RemotePeer, SuspectRows } from './peer.js';
export type { HubEvent } from './hub_context.js';

/** Where to listen (listener.ts), whom to let in (gate.ts), and the work with members (peer_work.ts). */
/** The opening handshake gets as long as the hello after it (authTimeoutMs). */
export interface HubOptions extends Omit<ListenOptions, 'handshakeTimeoutMs'>, GateOptions, WorkOptions {
  /** Whether sharded members may exchange their steps' bytes over peer links (default yes; never with --verify). */
  peerLinks?: boolean;
}

/** What a joined peer may send, each with its handler (hello is taken only while authenticating). */
type Handlers = { [T in ToCoordinator['t']]: (peer: RemotePeer, message: Extract<ToCoordinator, { t: T }>, frame: Buffer) => void };

/** How many of the largest frames (a state snapshot) may wait to be sent to one peer before it is dropped. */
const BACKLOG_FRAMES = 4;

export class RemoteHub implements RemoteMembers {
  private listener?: Listener;
  private nextId = 1;
  private readonly peers = new Map<number, RemotePeer>();
  private waiters: (() => void)[] = [];
  /** Bytes of every frame sent or received, over all peers, since the start. */
  bytesMoved = 0;
  /** Every engine/device a worker joined with, for summary.json (more than the run's own only with allowMixedDevices). */
  readonly kinds = new Set<string>();
  /** What the parts may ask of the hub (hub_context.ts); its methods stay private to everyone else. */
  private readonly context: HubContext = {
    send: (peer, message) => this.send(peer, message),
    sendFrame: (peer, frame) => this.sendFrame(peer, frame),
    reject: (peer, reason) => this.reject(peer, reason),
    drop: (peer, reason) => this.drop(peer, reason),
    report: (event) => this.report(event),
    guarded: (peer, what, handler) => this.guarded(peer, what, handler),
    peers: () => this.peers.values(),
    ready: () => this.ready(),
  };
  private readonly gate: Gate;
  private readonly heartbeat: Heartbeat;
  private readonly work: PeerWork;
  /** Who links with whom, and whether a step's bytes can go between the members (peer_mesh.ts). */
  private readonly mesh: PeerMesh;

  /** Bytes that may wait to be sent to one peer (sendFrame): fixed for the run's model and batch. */
  private readonly maxBacklog: number;

  constructor(
    private readonly options: HubOptions,
    private readonly memory: TrainingMemory,
    private readonly onEvent: (event: HubEvent) => void,
  ) {
    const largestFrame = maxFrameBytes(memory.spec, memory.batchSize);
    this.maxBacklog = BACKLOG_FRAMES * largestFrame;
    this.gate = new Gate(options, this.context, largestFrame);
    this.heartbeat = new Heartbeat(options.heartbeatMs, this.context);
    this.work = new PeerWork(options, memory, this.context);
    // --verify checks rows before anyone applies them: they keep to the coordinator's path. Under TLS too:
    // peer links are plain TCP, and would carry in clear what TLS protects (docs/security.md).
    const tls = !!(options.tlsCert && options.tlsKey);
    this.mesh = new PeerMesh(options.forwardRows !== false && options.peerLinks !== false && !tls);
  }

  /** Connections authenticating now, the most there were at once, and how many were turned away. */
  get connections(): AdmissionStats {
    return this.gate.stats;
  }

  // ---------------------------------------------------------------- listening

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  async start(): Promise<AddressInfo> {
    // Workers send rows, replica states when asked, and small control messages: anything larger is refused by ws itself.
    this.listener = new Listener({ ...this.options, handshakeTimeoutMs: this.options.authTimeoutMs }, maxFrameBytes(this.memory.spec, this.memory.batchSize), {
      admit: (ip) => this.gate.admit(ip),
      abandoned: (ip) => this.gate.abandoned(ip),
      connection: (ws, socket) => this.accept(ws, socket),
      failed: (peer, reason) => this.report({ type: 'rejected', peer, reason }),
    });
    this.heartbeat.start();
    return this.listener.listen();
  }

  async close(): Promise<void> {
    this.heartbeat.stop();
    this.gate.close();
    for (const peer of this.peers.values()) {
      peer.ws.close(RUN_FINISHED, 'run finished');
      this.drop(peer, 'coordinator finished');
    }
    await this.listener?.close();
  }

  // ---------------------------------------------------------------- one connection

  /** A connection the gate let in (asked before its upgrade, gate.ts admit) becomes a peer: its events are handled, and the gate challenges it. */
  private accept(ws: WebSocket, socket: Socket): void {
    const peer = new RemotePeer(this.nextId++, ws, socket);
    this.peers.set(peer.id, peer);
    const on = <A extends unknown[]>(what: string, handler: (...args: A) => void) => this.guarded(peer, what, handler);
    ws.on('pong', on('pong', () => this.heartbeat.heard(peer)));
    ws.on('message', on('message', (data: Buffer | Buffer[], isBinary: boolean) => this.receive(peer, data, isBinary)));
    ws.on('close', on('close', (code: number, reason: Buffer) => this.drop(peer, `connection closed (${code}${reason.length ? ` ${reason}` : ''})`)));
    ws.on('error', on('error', (e: Error) => this.drop(peer, `connection error: ${e.message}`)));
    this.gate.challenge(peer);
  }

  /**
   * A handler that cannot throw out of ws (an uncaught throw there ends the coordinator's process): an
   * unexpected error drops that peer, with the reason logged.
   */
  private guarded<A extends unknown[]>(peer: RemotePeer, what: string, handler: (...args: A) => void): (...args: A) => void {
    return (...args: A) => {
      try {
        handler(...args);
      } catch (e) {
        try {
          this.reject(peer, `internal error in its ${what} handler: ${(e as Error).message}`);
        } catch {
          peer.status = 'closed';
          peer.ws.terminate();
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

  private send(peer: RemotePeer, message: ToWorker): void {
    if (!peer.open) return;
    this.sendFrame(peer, encode(message));
  }

  /**
   * Sends a frame, unless the peer already has more than BACKLOG_FRAMES of the largest frames waiting to go
   * out: a peer that reads slower than it is sent to would grow this process without bound, so it is
   * dropped instead (it reconnects and resynchronises from a snapshot).
   */
  private sendFrame(peer: RemotePeer, frame: Buffer): void {
    const waiting = peer.ws.bufferedAmount;
    if (waiting > this.maxBacklog) {
      // Not reject(): its error message would queue behind the backlog too. The socket goes at once.
      const reason = `fell behind: ${(waiting / 2 ** 20).toFixed(0)} MiB not yet sent to it (more than ${BACKLOG_FRAMES} of the largest frames)`;
      this.report({ type: 'rejected', peer: peer.name, reason });
      peer.ws.terminate();
      this.drop(peer, reason);
      return;
    }
    this.bytesMoved += frame.length;
    peer.ws.send(frame);
  }

  /** A frame from a peer: decoded, validated against what it was asked for, then handled by its type. */
  private receive(peer: RemotePeer, data: Buffer | Buffer[], isBinary: boolean): void {
    if (peer.status === 'closed') return;
    let type: unknown;
    try {
      if (!isBinary) throw new ProtocolError('text frames are not part of the protocol');
      const frame = Array.isArray(data) ? Buffer.concat(data) : data;
      this.bytesMoved += frame.length;
      const raw = decodeRaw(frame);
      type = raw.t;
      const message = validateFromWorker(raw, peer.status === 'authenticating' ? undefined : this.work.viewOf(peer));
      if (peer.status === 'authenticating') {
        if (message.t !== 'hello') throw new ProtocolError(`expected hello, got ${message.t}`);
        return this.authenticate(peer, message);
      }
      (this.handlers[message.t] as (peer: RemotePeer, message: ToCoordinator, frame: Buffer) => void)(peer, message, frame);
    } catch (e) {
      this.refuse(peer, e, type);
    }
  }

  private readonly handlers: Handlers = {
    hello: () => {
      throw new ProtocolError('hello sent twice');
    },
    rowsDone: (peer, rows, frame) => this.work.rowsDone(peer, rows, frame),
    slice: (peer, slice, frame) => this.work.slice(peer, slice, frame),
    sliceDone: (peer, done) => this.work.sliceDone(peer, done),
    peerLinks: (peer, report) => {
      // It gave up what it was asked (a link it needed broke): that answer will not come, and the mesh is
      // broken — the step is redone from a state sent again.
      const { news } = this.mesh.report(peer, report);
      if (news) this.report({ type: 'peers', message: news });
      if (report.abandoned) this.work.abandoned(peer, report.abandoned, 'it gave up a step between peers (a peer link broke)');
    },
    checksum: (peer, message) => this.work.checksum(peer, message.step, message.sha256),
    replicaState: (peer, state) => this.work.replicaState(peer, state),
    error: (peer, message) => {
      // Closed first: drop() terminates a socket still open, and the 1011 would never be sent.
      peer.ws.close(1011, 'worker error');
      this.drop(peer, `worker reported: ${message.message}`);
    },
  };

  /** A message that failed: non-finite rows go to the scheduler to judge; anything else drops the peer. */
  private refuse(peer: RemotePeer, e: unknown, type: unknown): void {
    if (e instanceof NonFiniteError && type === 'rowsDone' && (peer.status === 'ready' || peer.status === 'standby') && peer.requests.keyOf('rows')) {
      // Not dropped yet: the scheduler computes these rows itself and then knows whether the peer lied.
      peer.requests.fail('rows', new SuspectRows(peer, e.message));
      return;
    }
    this.reject(peer, e instanceof ProtocolError ? e.message : `internal error: ${(e as Error).message}`, e instanceof RefusedError ? REFUSED : 1008);
  }

  /** A hello: the gate authenticates the peer (or throws why not); it joins, and waits for the state (admit). */
  private authenticate(peer: RemotePeer, hello: Hello): void {
    this.kinds.add(this.gate.authenticate(peer, hello));
    peer.participant = this.participantIdOf(peer, hello);
    this.report({ type: 'joined', worker: peer.name, backend: hello.backend, threads: hello.threads });
    for (const wake of this.waiters.splice(0)) wake();
  }

  /**
   * A member's name in the run's records: its rank under a launcher, else the name it gave (a worker from
   * before this protocol gave none: `worker-<id>`); a name another member holds gets a suffix (-2, -3, …).
   * The same across reconnections, since a peer that left holds no name any more.
   */
  private participantIdOf(peer: RemotePeer, hello: Hello): string {
    const wanted = hello.rank !== undefined ? `rank-${hello.rank}` : (hello.name ?? `worker-${peer.id}`);
    const taken = new Set([...this.peers.values()].filter((p) => p !== peer).map((p) => p.participant));
    if (!taken.has(wanted)) return wanted;
    let n = 2;
    while (taken.has(`${wanted}-${n}`)) n++;
    return `${wanted}-${n}`;
  }

  /**
   * Disconnects a peer with a reason (logged as a rejection); a stranger is hung up on (hangUp). The close
   * code is 1008, or REFUSED for a configuration the worker should not retry with.
   */
  reject(worker: RemotePeer, reason: string, code = 1008): void {
    if (worker.status === 'closed') return;
    this.report({ type: 'rejected', peer: worker.name, reason });
    try {
      this.send(worker, { t: 'error', message: reason });
    } catch {
      // the socket may already be gone
    }
    if (worker.holdsAuthSlot) this.gate.hangUp(worker.ws, worker.socket, code, reason);
    else worker.ws.close(code, closeReason(reason));
    this.drop(worker, reason);
  }

  /** Forgets a peer: its open requests fail with the reason, and its socket is ended. */
  private drop(peer: RemotePeer, reason: string): void {
    if (peer.status === 'closed') return;
    const wasMember = peer.status !== 'authenticating';
    peer.status = 'closed';
    peer.leftReason = reason;
    peer.authTimer?.clear();
    this.gate.release(peer, false);
    this.peers.delete(peer.id);
    peer.requests.close(new Error(`${peer.name} left: ${reason}`));
    if (peer.open) peer.ws.terminate();
    if (wasMember) this.report({ type: 'left', worker: peer.name, reason });
  }

  // ---------------------------------------------------------------- membership

  /** Workers that can take rows now. */
  ready(): RemotePeer[] {
    return [...this.peers.values()].filter((w) => w.status === 'ready');
  }

  /** Workers that authenticated (or must resynchronise) and wait for the state. */
  joining(): RemotePeer[] {
    return [...this.peers.values()].filter((w) => w.status === 'joining');
  }

  /**
   * Sends the committed state to workers that joined since the last step, which makes them ready; `plan`:
   * how their steps come (sharded: update.units; server: the coordinator's parameters, and no member's rows
   * are relayed to the others).
   */
  admit(snapshot: Snapshot, plan: RemotePlan = 'replicated'): void {
    this.work.setPlan(plan);
    const joining = this.joining();
    // Sharded, every member is sent the state: then (and only then) all of them can link with each other.
    const everyone = plan === 'sharded' && this.ready().length === 0;
    const roster = everyone ? this.mesh.admit(joining) : this.mesh.admit([]);
    for (const peer of joining) {
      this.work.sendState(peer, snapshot, plan, roster?.(peer));
      peer.status = 'ready';
    }
  }

  /**
   * Whether the step about to be asked for goes between peers: sharded, with every member linked to every
   * other in this admission (peer_mesh.ts); false sends its bytes through the coordinator.
   */
  direct(): boolean {
    return this.mesh.direct(this.ready());
  }

  /** Whether a sharded admission of the members now would hand out peer links (every one announced a listener). */
  peersCapable(): boolean {
    return this.mesh.capable([...this.ready(), ...this.standby(), ...this.joining()]);
  }

  /** A peer link broke after steps went between peers: every member must be sent the state again. */
  get meshBroken(): boolean {
    return this.mesh.broken;
  }

  /** Resolves when some worker has authenticated (used when there is nobody to compute). */
  waitForWorker(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Makes a worker whose replica diverged (or is on standby) fetch a fresh snapshot before its next step. */
  resync(worker: RemotePeer): void {
    if (worker.status === 'ready' || worker.status === 'standby') worker.status = 'joining';
  }

  /** Members on standby: connected and heartbeating, sent nothing, their replicas behind (see park). */
  standby(): RemotePeer[] {
    return [...this.peers.values()].filter((w) => w.status === 'standby');
  }

  /**
   * Sets a ready member aside: it is sent no rows, updates or checks, and applies no step, until resync
   * makes it join again with the state. Its answers already asked for still come and are handled.
   */
  park(worker: RemotePeer): void {
    if (worker.status === 'ready') worker.status = 'standby';
  }

  // ---------------------------------------------------------------- the work with members (peer_work.ts)

  /** Asks a worker for the rows pass over `range` of the batch `samples`; resolves with its validated answer. */
  requestRows(worker: RemotePeer, step: number, batch: number, range: Range, samples: Int32Array, form: RowsForm): Promise<RowsDone> {
    return this.work.requestRows(worker, step, batch, range, samples, form);
  }

  /** Asks a worker for its replica's state at `step` (with `units`: its shard of a sharded run). */
  fetchState(worker: RemotePeer, step: number, units?: Range[]): Promise<ReplicaState> {
    return this.work.fetchState(worker, step, units);
  }

  /** Sends a sharded step's update to its owners; resolves per owner with its units' new parameters. */
  requestSlices(step: number, batch: number, owners: ReadonlyMap<RemotePeer, Range[]>, direct = false): Promise<SliceMessage | SliceDone>[] {
    return this.work.requestSlices(step, batch, owners, direct);
  }

  /** The SHA-256 of every ready worker's parameters that came within the step deadline (stepTimeoutMs). */
  checksumsAt(step: number): Promise<Map<RemotePeer, string>> {
    return this.work.checksumsAt(step);
  }

  /** Server plan: sends every ready worker the parameters of step `step`'s result, which it commits. */
  broadcastParams(step: number, params: Float32Array): void {
    this.work.broadcastParams(step, params);
  }

  /** Sends every ready worker the rows of step `step` it lacks, which tells it to apply the step; returns how many. */
  broadcastUpdate(step: number, batch: number, compact: boolean): number {
    return this.work.broadcastUpdate(step, batch, compact);
  }
}
