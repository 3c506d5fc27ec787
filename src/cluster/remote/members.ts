/**
 * What the scheduler and the replica plan ask of the remote workers (RemoteHub implements it): who is a
 * member, changed at step boundaries, and the work of a step. Declared apart so that they, and their tests,
 * depend on this and not on the hub's sockets, gate and heartbeat (as the hub's own parts depend on
 * hub_context.ts).
 */
import type { RemotePlan } from '../../config.js';
import type { Range } from '../plan.js';
import type { ReplicaState, RowsDone, RowsForm, SliceDone, SliceMessage } from './messages.js';
import type { RemotePeer } from './peer.js';
import type { Snapshot } from './peer_work.js';

export interface RemoteMembers {
  /** Bytes of every frame sent or received, over all peers, since the start. */
  readonly bytesMoved: number;
  /** Every engine/device a worker joined with. */
  readonly kinds: ReadonlySet<string>;

  /** Workers that can take rows now. */
  ready(): RemotePeer[];
  /** Members on standby: connected, sent nothing, their replicas behind (see park). */
  standby(): RemotePeer[];
  /** Workers that authenticated (or must resynchronise) and wait for the state. */
  joining(): RemotePeer[];
  /** Sends the committed state to the joiners, which makes them ready; `plan`: how their steps come. */
  admit(snapshot: Snapshot, plan?: RemotePlan): void;
  /** Makes a member fetch a fresh snapshot before its next step (it joins again). */
  resync(worker: RemotePeer): void;
  /** Sets a ready member aside (standby) until resync. */
  park(worker: RemotePeer): void;
  /** Resolves when some worker has authenticated. */
  waitForWorker(): Promise<void>;
  /** Disconnects a member, telling it why; logged as a rejection. */
  reject(worker: RemotePeer, reason: string): void;

  /** Asks a worker for the rows pass over `range` of the batch `samples`; resolves with its validated answer. */
  requestRows(worker: RemotePeer, step: number, batch: number, range: Range, samples: Int32Array, form: RowsForm): Promise<RowsDone>;
  /** Asks a worker for its replica's state at `step` (with `units`: its shard of a sharded run). */
  fetchState(worker: RemotePeer, step: number, units?: Range[]): Promise<ReplicaState>;
  /** Whether the members' sharded steps go between peers now (peer links handed out at admission, all up). */
  direct(): boolean;
  /** Whether a sharded admission of the members now would hand out peer links (every one announced a listener). */
  peersCapable(): boolean;
  /** A peer link broke after steps went between peers: every member must be sent the state again. */
  readonly meshBroken: boolean;
  /**
   * Sends a sharded step's update to its owners; resolves per owner with its units' new parameters, or
   * (`direct`: the slices went between peers) with its acknowledgement that the others have them.
   */
  requestSlices(step: number, batch: number, owners: ReadonlyMap<RemotePeer, Range[]>, direct?: boolean): Promise<SliceMessage | SliceDone>[];
  /** The SHA-256 of every ready worker's parameters that came within the step deadline. */
  checksumsAt(step: number): Promise<Map<RemotePeer, string>>;
  /** Server plan: the parameters of step `step`'s result to every ready worker, which commits them. */
  broadcastParams(step: number, params: Float32Array): void;
  /** Sends every ready worker the rows of step `step` it lacks, which tells it to apply the step; returns how many. */
  broadcastUpdate(step: number, batch: number, compact: boolean): number;

  close(): Promise<void>;
}
