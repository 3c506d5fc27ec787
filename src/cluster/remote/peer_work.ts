/**
 * The training work the hub does with its members, all over the one request mechanism with deadlines
 * (requests.ts): the state sent to a joiner, rows asked for and forwarded to the others as they come,
 * the step's update to every replica (sharded: to every owner, whose slices go on to the others as they
 * come), a replica's state or checksum fetched, and the answers that end those requests. Kept apart from
 * the hub, which decides who is a member, so that what a step asks of a peer and what a late answer costs
 * read in one place: rows, slices and states late by the step deadline drop the peer, a checksum only goes
 * unanswered.
 */
import type { RemotePlan } from '../../config.js';
import { allUnits, missingRanges, type Range } from '../plan.js';
import { encode } from './codec.js';
import type { TrainingMemory } from '../training_memory.js';
import type { HubContext } from './hub_context.js';
import type { AbandonedKind, PeerRoster, ReplicaState, RowsDone, RowsForm, SliceDone, SliceMessage, StateMessage, ToWorker, UpdatePart } from './messages.js';
import { RowsInputs, updatePart } from './payloads.js';
import type { RemotePeer } from './peer.js';
import type { RequestAnswer, RequestKey, RequestKind } from './requests.js';
import type { CoordinatorView } from './validation.js';

export interface WorkOptions {
  /** The run's dataset: a worker that has the same (its hello says) gets dataset indices instead of pixels. */
  datasetSha256: string;
  /**
   * The step deadline, which bounds every wait on a peer: a worker that has not answered a rows or state
   * request by then is dropped (its rows redone), one that has not sent its checksum goes unanswered.
   */
  stepTimeoutMs: number;
  /**
   * Whether a peer's rows go on to the other peers as soon as they are validated (the default), or only
   * in the step's update, after the scheduler has checked them (--verify).
   */
  forwardRows?: boolean;
}

/**
 * The slowest link a state transfer is allowed for, in bytes a millisecond (1 MB/s, 8 Mbit/s). A joiner's
 * state goes out ahead of its first requests on the same connection, so their deadlines get the time the
 * state needs at this rate on top of the step deadline: on a 20 Mbit/s link a joiner's 10 MB state takes 4 s,
 * and a step deadline alone dropped it at every join. A worker slower than this is still dropped.
 */
export const TRANSFER_BYTES_PER_MS = 1000;

/** The committed state for a joiner: the state message but for what the hub fills in per peer. */
export type Snapshot = Omit<StateMessage, 't' | 'useLocalData' | 'plan' | 'peers'>;

export class PeerWork {
  private readonly inputs: RowsInputs;
  /**
   * Whether a member's rows go on to the others as soon as they are validated: not when held for the
   * step's update (--verify, options.forwardRows), nor in the server plan, where only the coordinator reduces
   * them (the members get the parameters instead).
   */
  private relayRows: boolean;

  constructor(
    private readonly options: WorkOptions,
    private readonly memory: TrainingMemory,
    private readonly hub: Pick<HubContext, 'send' | 'sendFrame' | 'reject' | 'guarded' | 'ready'>,
  ) {
    this.inputs = new RowsInputs(memory);
    this.relayRows = options.forwardRows !== false;
  }

  /** The plan members are admitted to (its rows are relayed but in the server plan). */
  setPlan(plan: RemotePlan): void {
    this.relayRows = this.options.forwardRows !== false && plan !== 'server';
  }

  /** What validation knows of a member: the model, and what the peer owes (its open requests). */
  viewOf(peer: RemotePeer): CoordinatorView {
    const rows = peer.requests.keyOf('rows');
    const snapshot = peer.requests.keyOf('snapshot');
    return {
      spec: this.memory.spec,
      batchSize: this.memory.batchSize,
      pendingStep: rows?.step,
      pendingRange: rows?.range,
      pendingSnapshot: snapshot?.step,
      pendingSnapshotUnits: snapshot?.units,
      pendingSlice: peer.requests.keyOf('slice'),
      pendingCompact: rows?.compact ?? false,
      pendingLossOnly: rows?.lossOnly ?? false,
    };
  }

  /** Sends a joiner the committed state (with pixels, or not when it has the data), and how its steps come. */
  sendState(peer: RemotePeer, snapshot: Snapshot, plan: RemotePlan, peers?: PeerRoster): void {
    // A reloaded replica holds no rows: what it held before (a resync at the same step) must be sent again.
    peer.rowsStep = -1;
    peer.holds = [];
    const frame = encode({ t: 'state', ...snapshot, useLocalData: this.usesLocalData(peer), plan, ...(peers ? { peers } : {}) });
    peer.stateArrivesBy = Math.max(peer.stateArrivesBy, performance.now()) + frame.length / TRANSFER_BYTES_PER_MS;
    peer.stateStep = snapshot.step;
    this.hub.sendFrame(peer, frame);
  }

  // ---------------------------------------------------------------- requests

  /**
   * Asks a worker for the rows pass over `range`; resolves with its validated answer. The request carries
   * the samples of the whole batch (`samples`, dataset indices), so that the rows others compute can be
   * forwarded to it without their pixels.
   */
  requestRows(worker: RemotePeer, step: number, batch: number, range: Range, samples: Int32Array, form: RowsForm): Promise<RowsDone> {
    const { x, index, labels } = this.inputs.of(samples, this.usesLocalData(worker));
    if (worker.rowsStep !== step) {
      worker.rowsStep = step;
      worker.holds = [];
    }
    const ms = this.options.stepTimeoutMs;
    const { peers, ...shape } = form;
    const message: ToWorker = { t: 'rows', step, batch, range, labels, ...shape, ...(peers ? { peers } : {}), ...(x ? { x } : { index }) };
    return this.ask(worker, 'rows', { step, range, ...form }, message, ms, this.dropAtDeadline(worker, `did not answer step ${step} within ${ms} ms`));
  }

  /**
   * Asks a worker for its replica's state at `step` (answered once it has applied every step before);
   * with `units`, an owner's shard of a sharded run: packed slices of those units.
   */
  fetchState(worker: RemotePeer, step: number, units?: Range[]): Promise<ReplicaState> {
    const ms = this.options.stepTimeoutMs;
    const reason = `did not send its state of step ${step} within ${ms} ms`;
    const key = units ? { step, units } : { step };
    return this.ask(worker, 'snapshot', key, { t: 'snapshot', ...key }, ms, this.dropAtDeadline(worker, reason));
  }

  /**
   * A sharded step's update: every owner gets the rows it lacks and its units, applies the step to those
   * units only and sends their new parameters back (a slice), which the others get as soon as it comes.
   * Resolves per owner with its validated slice; an owner late by the step deadline is dropped.
   */
  requestSlices(step: number, batch: number, owners: ReadonlyMap<RemotePeer, Range[]>, direct: boolean): Promise<SliceMessage | SliceDone>[] {
    const ms = this.options.stepTimeoutMs;
    return [...owners].map(([peer, units]) => {
      const parts = this.lacking(peer, step, batch, false);
      const reason = `did not send its units of step ${step} within ${ms} ms`;
      // Direct: the rows it lacks come from the other members, and its slice goes to them (a sliceDone here).
      const update: ToWorker = { t: 'update', step, batch, parts, units, ...(direct ? { peers: true } : {}) };
      return this.ask(peer, 'slice', { step, units }, update, ms, this.dropAtDeadline(peer, reason));
    });
  }

  /**
   * Asks every ready worker for the SHA-256 of its parameters; resolves with the answers that came within
   * the step deadline (a worker late with its checksum stays: only its answer is missing).
   */
  async checksumsAt(step: number): Promise<Map<RemotePeer, string>> {
    const answers = new Map<RemotePeer, string>();
    const ms = this.options.stepTimeoutMs;
    const askOne = async (peer: RemotePeer) => {
      try {
        answers.set(peer, await this.ask(peer, 'checksum', { step }, { t: 'check', step }, ms));
      } catch {
        // late, or gone: no answer
      }
    };
    await Promise.all(this.hub.ready().map(askOne));
    return answers;
  }

  // ---------------------------------------------------------------- answers

  /** A peer's validated rows: it holds them, the others get them now (unless held for --verify), and its request ends. */
  rowsDone(peer: RemotePeer, rows: RowsDone, frame: Buffer): void {
    // Rows of the state's step or later were computed from it: the state is through, and the next requests
    // get the step deadline alone (a link cut later must not hide behind the transfer's allowance).
    if (rows.step >= peer.stateStep) peer.stateArrivesBy = 0;
    peer.holds.push(rows.range);
    // Asked between peers: it sent them to every other member itself (its answer here holds the losses).
    if (peer.requests.keyOf('rows')?.peers) this.heldByOthers(peer, rows);
    else if (this.relayRows) this.forward(peer, rows, frame);
    peer.requests.answer('rows', rows);
  }

  /** A member's slice went to the others over the peer links: its request ends. */
  sliceDone(peer: RemotePeer, done: SliceDone): void {
    peer.requests.answer('slice', done);
  }

  /**
   * A member gave up the answers it owed (a peer link it needed broke): its open requests fail now, not at
   * their deadline, and it stays a member (the step is redone from a state sent to everyone).
   */
  abandoned(peer: RemotePeer, { kind, step }: { kind: AbandonedKind; step: number }, reason: string): void {
    // Only the request it gave up: one sent since (the report crossed it) is still answered.
    if (peer.requests.keyOf(kind)?.step === step) peer.requests.fail(kind, new Error(`${peer.name}: ${reason}`));
  }

  /**
   * A checksum nobody waits for any more (it came after the deadline) is ignored, and so is one of another
   * step than the one asked (a late answer to an earlier check must not pass for the current one).
   */
  checksum(peer: RemotePeer, step: number, sha256: string): void {
    if (peer.requests.keyOf('checksum')?.step !== step) return;
    peer.requests.answer('checksum', sha256);
  }

  replicaState(peer: RemotePeer, state: ReplicaState): void {
    peer.requests.answer('snapshot', state);
  }

  /** An owner's validated units of a sharded step: the other owners get the very frame now, and its request ends. */
  slice(peer: RemotePeer, slice: SliceMessage, frame: Buffer): void {
    this.sendToReady(frame, peer);
    peer.requests.answer('slice', slice);
  }

  // ---------------------------------------------------------------- the replicas' rows

  /**
   * Sends every ready worker the rows of step `step` it does not hold yet (it was not asked for rows of
   * this step, or the coordinator computed them), compact if the rows came so, which tells it to apply
   * the step; returns how many workers it told.
   */
  broadcastUpdate(step: number, batch: number, compact: boolean): number {
    const ready = this.hub.ready();
    for (const peer of ready) {
      const parts = this.lacking(peer, step, batch, compact);
      this.hub.send(peer, { t: 'update', step, batch, parts });
    }
    return ready.length;
  }

  /**
   * Server plan: the parameters the coordinator computed for step `step` (every unit of every layer, one
   * frame encoded once) to every ready worker, which commits them.
   */
  broadcastParams(step: number, params: Float32Array): void {
    if (this.hub.ready().length === 0) return;
    this.sendToReady(encode({ t: 'slice', step, units: allUnits(this.memory.spec.sizes.slice(1)), params }));
  }

  /** One frame to every ready peer but `except`. */
  private sendToReady(frame: Buffer, except?: RemotePeer): void {
    for (const peer of this.hub.ready()) if (peer !== except && peer.open) this.hub.sendFrame(peer, frame);
  }

  /** The rows of step `step` a peer does not hold (it was not asked for rows of it, or they came from elsewhere), as update parts. */
  private lacking(peer: RemotePeer, step: number, batch: number, compact: boolean): UpdatePart[] {
    const held = peer.rowsStep === step ? peer.holds : [];
    return missingRanges(batch, held).map((range) => updatePart(this.memory, range, compact));
  }

  /** Rows a member sent every other member over the peer links: those computing this step hold them now. */
  private heldByOthers(from: RemotePeer, rows: RowsDone): void {
    for (const peer of this.hub.ready()) if (peer !== from && peer.rowsStep === rows.step) peer.holds.push(rows.range);
  }

  /**
   * Sends a peer's validated rows, as the very frame it sent, to every other peer computing rows of the
   * same step: they get them while still computing their own, rather than after the whole batch.
   */
  private forward(from: RemotePeer, rows: RowsDone, frame: Buffer): void {
    for (const peer of this.hub.ready()) {
      if (peer === from || peer.rowsStep !== rows.step || !peer.open) continue;
      this.hub.sendFrame(peer, frame);
      peer.holds.push(rows.range);
    }
  }

  /**
   * Sends a peer `message` as a request of `kind` and resolves with the answer (requests.ts): rejected
   * when the peer drops; at the deadline `onTimeout` runs (dropping the peer), or else only the request fails.
   */
  private ask<K extends RequestKind>(
    peer: RemotePeer,
    kind: K,
    key: RequestKey<K>,
    message: ToWorker,
    timeoutMs: number,
    onTimeout?: () => void,
  ): Promise<RequestAnswer<K>> {
    // Asked behind a state still on its way: the transfer has its own deadline, scaled by its bytes.
    const transferMs = Math.max(0, peer.stateArrivesBy - performance.now());
    const answer = peer.requests.expect(kind, key, timeoutMs + transferMs, onTimeout);
    try {
      this.hub.send(peer, message);
    } catch (e) {
      peer.requests.fail(kind, e as Error);
    }
    return answer;
  }

  /** The deadline policy of rows and states: the peer is dropped (and what it owed is redone by others). */
  private dropAtDeadline(peer: RemotePeer, reason: string): () => void {
    return this.hub.guarded(peer, 'request timer', () => this.hub.reject(peer, reason));
  }

  private usesLocalData(peer: RemotePeer): boolean {
    return !!peer.hello?.dataSha256 && peer.hello.dataSha256 === this.options.datasetSha256;
  }
}
