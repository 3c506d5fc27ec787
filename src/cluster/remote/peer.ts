/**
 * One connection to the hub (a peer): where it is in its life (authenticating, joining, ready, standby, closed),
 * what it said in its hello, the requests it has open, and what the scheduler and the forwarding of rows
 * keep about it. Only state: what happens to a peer is the hub's (hub.ts and the parts it composes).
 */
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import type { Range } from '../plan.js';
import { newNonce } from './auth.js';
import type { Hello } from './messages.js';
import { Pending } from './requests.js';
import type { StallTimer } from './stall_timer.js';

/**
 * standby: a member set aside while every row goes to another (ReplicaPlan): sent nothing, its replica left
 * at the step it stopped at; it is sent the state again (joining) when it is needed.
 */
export type PeerStatus = 'authenticating' | 'joining' | 'ready' | 'standby' | 'closed';

export class RemotePeer {
  status: PeerStatus = 'authenticating';
  /** Cleared at each heartbeat ping and set by the pong: a peer still false at the next beat is gone. */
  isAlive = true;
  hello?: Hello;
  /**
   * Its stable name in the run's records (participant_stats.ts): `rank-N` under a launcher, else the name its
   * hello gave, made unique among the members; set when it authenticates.
   */
  participant = '';
  /** Why it left (set when the hub drops it): the participants' record shows it. */
  leftReason?: string;
  /** The nonce this peer must prove it knows the token for. */
  readonly challenge = newNonce();
  /** What the coordinator asked this peer for and awaits: rows, its replica's state, a checksum. */
  readonly requests = new Pending();
  /** Rows per millisecond, smoothed; the scheduler gives work in proportion to it. */
  speed = 0;
  /**
   * The step this peer was last asked rows of (it then has the whole batch's samples), and the batch
   * rows it holds for that step: those it computed and those forwarded to it from the others.
   */
  rowsStep = -1;
  holds: Range[] = [];
  authTimer?: StallTimer;
  /**
   * Until when (performance.now()) the state last sent to it may still be on its way at the slowest link
   * allowed for (peer_work.ts TRANSFER_BYTES_PER_MS): requests asked before then get that much longer.
   */
  stateArrivesBy = 0;
  /** The step of the last state sent: an answer for this step or a later one shows that state arrived. */
  stateStep = -1;
  /** Whether it holds one of the admission control's slots for connections authenticating (admission.ts). */
  holdsAuthSlot = true;

  /** host:port it connects from; kept, since a closed socket forgets it (and a dropped peer is still named by it). */
  readonly address: string;

  constructor(
    readonly id: number,
    readonly ws: WebSocket,
    /** The TCP socket under ws: what a stranger may send before it authenticates is counted on it. */
    readonly socket: Socket,
  ) {
    this.address = `${this.ip}:${socket.remotePort}`;
  }

  /** Its IP address, which admission control counts failures by. */
  get ip(): string {
    return this.socket.remoteAddress ?? 'unknown';
  }


  get name(): string {
    const rank = this.hello?.rank;
    return `worker ${this.id} (${rank === undefined ? '' : `rank ${rank}, `}${this.address})`;
  }

  /** The rank it said it has in a launched job, if it said. */
  get rank(): number | undefined {
    return this.hello?.rank;
  }

  /** Whether a frame sent now would go out (not when the socket is closing or closed). */
  get open(): boolean {
    return this.ws.readyState === this.ws.OPEN;
  }
}

/** A peer's answer with non-finite rows, held until the scheduler has checked them. */
export class SuspectRows extends Error {
  override name = 'SuspectRows';
  constructor(
    readonly worker: RemotePeer,
    readonly reason: string,
  ) {
    super(`${worker.name} sent non-finite rows (${reason})`);
  }
}
