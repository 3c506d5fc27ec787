/**
 * The vocabulary of the coordinator ↔ remote-worker protocol: every message's shape, the protocol version,
 * the close code that ends a run, and the error thrown for anything that is not a valid message. Both
 * sides share it and the codec, validation and auth, and nothing else of each other's: a worker process
 * loads none of the hub's modules, and the coordinator none of the worker's.
 *
 * The protocol (version in PROTOCOL_VERSION):
 *   coordinator → worker  challenge {nonce, engine, device}       on connect (engine, device: the run's)
 *   worker → coordinator  hello {mac, nonce, engine, device, backend, threads, dataSha256, rank?, name?}
 *                         rank: only from a launched job's ranks (dtrain run), so that a coordinator waiting
 *                         for the world names who is missing; optional. name: how it is shown and recorded
 *                         (dtrain worker --name, default from the hostname; [A-Za-z0-9._-]); optional
 *   coordinator → worker  welcome {proof, workerId, heartbeatMs, maxFrameBytes}  proves the coordinator knows the
 *                         token too; heartbeatMs: how often it pings (a worker that hears nothing for a few periods
 *                         reconnects); maxFrameBytes: the largest frame of this run (its model and batch), which
 *                         the worker takes as its frame limit
 *   coordinator → worker  state {spec, ..., step, generation, params, m, v, plan}   a full snapshot, on join; plan:
 *                         how its steps come (replicated: update; sharded: update.units; server: slice)
 *   coordinator → worker  rows {step, range, batch, x | index, labels, compact, lossOnly}   compute rows `range`
 *                         (x | index and labels: of the whole batch; compact: send only the last delta;
 *                         lossOnly: only the losses — a sole replica, whose rows nobody else reads)
 *   worker → coordinator  rowsDone {step, range, rowLoss, hidden[], deltas[], ms, applyMs, waitMs, queuedMs}
 *                         ms: its time computing these rows; applyMs and waitMs: its time applying steps and
 *                         sitting idle since its previous rowsDone; queuedMs: how long the request waited there
 *                         behind earlier messages (the participants' records, issue 21)
 *   coordinator → worker  rowsDone {…}                            another worker's rows, forwarded as sent
 *   coordinator → worker  update {step, batch, parts, units?}     the rows it lacks still: apply the step
 *                         (units: a sharded step — apply only these output units of each layer, then:)
 *   worker → coordinator  slice {step, units, params}             its units' new parameters, packed
 *                         (unit_slices.ts); forwarded as sent to the other workers, which commit the step
 *                         once slices cover every unit
 *   coordinator → worker  slice {step, units: all, params}        server plan: the coordinator applied the
 *                         step itself; the new parameters, which the worker commits (its moments go unused)
 *   coordinator → worker  check {step}  → worker  checksum {step, sha256}      replica verification
 *   coordinator → worker  snapshot {step, units?} → worker  replicaState {step, params, m, v}
 *                         the replica's state at a step: what the coordinator takes instead of applying
 *                         every step itself when it has no compute threads of its own (--threads 0);
 *                         with units (sharded steps: each owner's moments are current only for its
 *                         units) the three arrays are packed slices of those units
 *   worker → coordinator  peerLinks {epoch, linked, abandoned?}   which members of the state's roster it holds an authenticated
 *                         peer link with (sent once it tried them all, and again when one breaks)
 *   worker → coordinator  sliceDone {step, units}     a sharded step's slice, sent to every member over the peer links
 *                         (update.peers): the coordinator learns only that it went
 *   either → other        error {message}
 *
 * Peer links (peer_links.ts; optional: hello.peerAddress announces a worker's, state.peers hands out the
 * roster): worker ↔ worker over plain TCP, each frame a u32 LE length and a codec frame (peer_link.ts).
 *   listener → dialer     peerChallenge {nonce}
 *   dialer → listener     peerHello {epoch, from, nonce, mac}   mac: HMAC(pair key, "dtrain-dialer" ‖ nonce)
 *   listener → dialer     peerWelcome {proof}                  proof: HMAC(pair key, "dtrain-listener" ‖ its nonce)
 *   either → other        rowsDone {…}, slice {…}              a member's rows (rows.peers) and its units' new
 *                         parameters (update.peers), sent to every other member directly
 *   coordinator closes    with RUN_FINISHED when the run is over (the worker exits instead of reconnecting),
 *                         with REFUSED when the worker's configuration is refused (it stops too)
 *
 * Encoding: codec.ts; what each side accepts: validation.ts; the token handshake: auth.ts.
 */
import type { RemotePlan } from '../../config.js';
import type { Device, EngineName } from '../../engine/engine.js';
import type { ModelSpec } from '../../model/spec.js';
import type { AdamOptions } from '../../optim/adam.js';
import type { Range } from '../plan.js';

/**
 * 5: sharded steps (update.units, slice, snapshot.units); 6: state.plan (the server plan's slices); 7: rows.lossOnly;
 * 8: rowsDone.applyMs, waitMs and queuedMs, hello.name; welcome.maxFrameBytes, challenge.engine and .device;
 * optional, within 8: hello.peerAddress, state.peers, rows.peers, update.peers, peerLinks and sliceDone (sent
 * only to and by a side that announced peer links).
 */
export const PROTOCOL_VERSION = 8;

/** Close code that tells a worker the run is over (it exits instead of reconnecting). */
export const RUN_FINISHED = 4000;

/**
 * Close code that tells a worker it was refused for its configuration — its token, engine, device or
 * protocol version: retrying cannot help (and each failed try counts against its address), so it stops.
 */
export const REFUSED = 4001;

export interface Challenge {
  t: 'challenge';
  protocol: number;
  nonce: Uint8Array;
  /**
   * The run's engine and device (ENGINES, DEVICES): a launched rank of a resumed run, which cannot read rank
   * 0's checkpoint, computes with these (WorkerOptions.engineFromCoordinator). Validated only when present,
   * so that a worker can still tell a coordinator of another protocol version what it speaks.
   */
  engine?: EngineName;
  device?: Device;
}
export interface Hello {
  t: 'hello';
  protocol: number;
  /** HMAC-SHA256(token, "dtrain-worker" ‖ challenge nonce); empty when no token is set. */
  mac: Uint8Array;
  /** The worker's own nonce, which the coordinator answers with its proof. */
  nonce: Uint8Array;
  engine: string;
  /** The device the worker's engine computes on (engine.ts DEVICES): with the engine, what its bits depend on. */
  device: string;
  /** What runs, in words (the coordinator prints it when the worker joins). */
  backend: string;
  threads: number;
  /** SHA-256 of the worker's local dataset copy, or '' when it has none. */
  dataSha256: string;
  /** The worker's rank in a launched job (dtrain run); absent otherwise. */
  rank?: number;
  /**
   * What the worker calls itself (dtrain worker --name, default from its hostname): [A-Za-z0-9._-], 1 to 64
   * characters (WORKER_NAME). A rank names it instead when it has one.
   */
  name?: string;
  /**
   * host:port where this worker's peer listener takes links from the other members (--peer-listen,
   * --advertise); absent when it has none: its steps' bytes then go through the coordinator.
   */
  peerAddress?: string;
}
export interface Welcome {
  t: 'welcome';
  proof: Uint8Array;
  workerId: number;
  heartbeatMs: number;
  /** The largest frame this run sends (codec.ts maxFrameBytes): the worker's frame limit from now on. */
  maxFrameBytes: number;
}

/** Frames a worker takes before a welcome told it this run's limit: a challenge, a welcome, an error. */
export const HANDSHAKE_FRAME_BYTES = 1 << 20;

/** The largest frame limit there is: ws reads its limit as an int32 (and a larger one as none). */
export const MAX_FRAME_BYTES = 2 ** 31 - 1;
export interface StateMessage {
  t: 'state';
  spec: ModelSpec;
  batchSize: number;
  adam: AdamOptions;
  step: number;
  generation: number;
  params: Float32Array;
  m: Float32Array;
  v: Float32Array;
  /** True when the coordinator accepted the worker's local dataset copy: rows then come as indices. */
  useLocalData: boolean;
  /**
   * How steps come: replicated (apply each as soon as its rows are here, or at its update), sharded (apply
   * only the units an update names; commit once slices cover every unit) or server (never apply: commit the
   * coordinator's slice of every unit).
   */
  plan: RemotePlan;
  /** Sharded, with every member announcing a peer address: whom to link with (peer_links.ts). */
  peers?: PeerRoster;
}
/** The members of one admission that link with each other, and the key material of their links. */
export interface PeerRoster {
  /** Which admission this is: links, and what travels on them, belong to one epoch. */
  epoch: number;
  /** The run's peer secret (random, never the workers' token): each pair's key is an HMAC of it (auth.ts pairKey). */
  secret: Uint8Array;
  /** This worker's id among them. */
  self: number;
  /** Every member (this one too): its id and the address its peer listener was announced at. */
  members: { id: number; address: string }[];
}
export interface RowsMessage {
  t: 'rows';
  step: number;
  batch: number;
  /** The rows to compute. */
  range: Range;
  /** batch × features pixels, or (with a local data copy) the dataset index of each batch row. */
  x?: Float32Array;
  index?: Int32Array;
  /** The label of each batch row. */
  labels: Uint8Array;
  /** Answer in compact form: the last layer's delta only (receivers rebuild the others, Engine.deltasPass). */
  compact: boolean;
  /**
   * Answer with the rows' losses only (no activations, no deltas): asked of a sole replica computing every
   * row of its steps, whose rows nobody else reads.
   */
  lossOnly: boolean;
  /**
   * Send the rows in full to every other member over the peer links, and answer the coordinator with their
   * losses only (lossOnly is then set too).
   */
  peers?: boolean;
}

/** The form a rows request asks its answer in. */
export type RowsForm = Pick<RowsMessage, 'compact' | 'lossOnly' | 'peers'>;
export interface RowsDone {
  t: 'rowsDone';
  step: number;
  range: Range;
  rowLoss: Float32Array;
  hidden: Float32Array[];
  /** Every layer's delta, or in compact form only the last layer's; none (nor hidden) when asked lossOnly. */
  deltas: Float32Array[];
  /** Its time computing these rows, ms. */
  ms: number;
  /**
   * Its time since its previous rowsDone applying steps (taking in the others' rows, the weight pass and
   * Adam, or committing slices), ms: normally the step before this one's.
   */
  applyMs: number;
  /** Its time since its previous rowsDone sitting idle: for the others' rows, an update, these rows' request, ms. */
  waitMs: number;
  /**
   * How long the rows request waited at the worker behind earlier messages (a request sent early, while it
   * applied the step before), ms: the coordinator takes it and `ms` from the round trip to leave the wire.
   */
  queuedMs: number;
}
export interface UpdatePart {
  range: Range;
  x: Float32Array;
  hidden: Float32Array[];
  /** As in RowsDone: every layer's, or only the last layer's. */
  deltas: Float32Array[];
}
export interface UpdateMessage {
  t: 'update';
  step: number;
  batch: number;
  parts: UpdatePart[];
  /** A sharded step: the output units of each layer this worker owns (it reduces and updates only those). */
  units?: Range[];
  /**
   * A sharded step between peers: the rows the update does not carry come over the peer links, and the
   * slice goes to every other member over them (the coordinator gets a sliceDone).
   */
  peers?: boolean;
}
/** An owner's units after a sharded step: their new parameters, packed (unit_slices.ts). */
export interface SliceMessage { t: 'slice'; step: number; units: Range[]; params: Float32Array }
export interface CheckMessage { t: 'check'; step: number }
export interface SnapshotRequest { t: 'snapshot'; step: number; units?: Range[] }
export interface ReplicaState { t: 'replicaState'; step: number; params: Float32Array; m: Float32Array; v: Float32Array }
export interface ChecksumMessage { t: 'checksum'; step: number; sha256: string }
export interface ErrorMessage { t: 'error'; message: string }
export interface PeerLinksReport {
  t: 'peerLinks';
  epoch: number;
  linked: number[];
  /**
   * Sent by a handler that gave up what it was asked because a link it needed broke: the request whose answer
   * will not come (rows asked for, the slice an update asked for, a snapshot) and its step.
   */
  abandoned?: { kind: AbandonedKind; step: number };
}
/** What a member can give up when a peer link breaks. */
export const ABANDONED_KINDS = ['rows', 'slice', 'snapshot'] as const;
export type AbandonedKind = (typeof ABANDONED_KINDS)[number];
export interface SliceDone { t: 'sliceDone'; step: number; units: Range[] }
export interface PeerChallenge { t: 'peerChallenge'; nonce: Uint8Array }
export interface PeerHello { t: 'peerHello'; epoch: number; from: number; nonce: Uint8Array; mac: Uint8Array }
export interface PeerWelcome { t: 'peerWelcome'; proof: Uint8Array }

export type ToWorker = Challenge | Welcome | StateMessage | RowsMessage | RowsDone | UpdateMessage | SliceMessage | CheckMessage | SnapshotRequest | ErrorMessage;
export type ToCoordinator = Hello | RowsDone | SliceMessage | SliceDone | PeerLinksReport | ChecksumMessage | ReplicaState | ErrorMessage;
/** What travels on a peer link: its handshake, then a member's rows and slices. */
export type ToPeer = PeerChallenge | PeerHello | PeerWelcome | RowsDone | SliceMessage | ErrorMessage;

/** Thrown for anything a peer sent that is not a valid message; the text names what was wrong. */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

/**
 * A well-formed array holding a NaN or an infinity: a lying peer, or honest rows of a batch that really
 * overflows. The coordinator tells them apart by computing the rows itself.
 */
export class NonFiniteError extends ProtocolError {
  override name = 'NonFiniteError';
}

/** A hello refused for the worker's configuration (token, engine, device, protocol version): closed with REFUSED. */
export class RefusedError extends ProtocolError {
  override name = 'RefusedError';
}
