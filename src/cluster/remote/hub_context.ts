/**
 * What the hub's parts (gate.ts, heartbeat.ts, peer_work.ts) may ask of the hub, and the events it reports.
 * Declared apart so that they depend on this and not on hub.ts, which composes them: imports flow one way.
 * The hub alone sends frames (counting their bytes), ends peers and talks to its listener.
 */
import type { ToWorker } from './messages.js';
import type { RemotePeer } from './peer.js';

export type HubEvent =
  | { type: 'joined'; worker: string; backend: string; threads: number }
  | { type: 'left'; worker: string; reason: string }
  | { type: 'rejected'; peer: string; reason: string }
  /** Connections turned away before authenticating: the first of a burst at once, then one line a second. */
  | { type: 'refused'; count: number; reason: string }
  /** The route of the sharded steps changed: between peers (every member linked), or through the coordinator. */
  | { type: 'peers'; message: string };

export interface HubContext {
  /** Sends a message, if the peer's socket is still open. */
  send(peer: RemotePeer, message: ToWorker): void;
  /** Sends a frame as it is (a peer's rows, forwarded as they came). */
  sendFrame(peer: RemotePeer, frame: Buffer): void;
  /** Disconnects a peer, telling it why; logged as a rejection. */
  reject(peer: RemotePeer, reason: string): void;
  /** Forgets a peer that is gone: its open requests fail with the reason. */
  drop(peer: RemotePeer, reason: string): void;
  /** Hands an event to the hub's listener. */
  report(event: HubEvent): void;
  /**
   * `handler`, made unable to throw out of ws or a timer (an uncaught throw there ends the coordinator's
   * process): an unexpected error drops `peer`, with the reason logged.
   */
  guarded<A extends unknown[]>(peer: RemotePeer, what: string, handler: (...args: A) => void): (...args: A) => void;
  /** Every connection, authenticated or not. */
  peers(): Iterable<RemotePeer>;
  /** Workers that can take rows now. */
  ready(): RemotePeer[];
}
