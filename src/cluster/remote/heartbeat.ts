/**
 * The hub's half of the heartbeat, ws's isAlive pattern: every period each peer is pinged, and a peer
 * that did not answer the previous ping with a pong is dropped (a host that died or a link that was cut
 * tells TCP nothing for minutes). The worker's half is watchdog.ts. Kept apart so that the hub only says
 * when it starts and stops, and what hears a pong.
 */
import type { HubContext } from './hub_context.js';
import type { RemotePeer } from './peer.js';
import { stallTolerantTimeout, type StallTimer } from './stall_timer.js';

export class Heartbeat {
  private timer?: StallTimer;

  constructor(
    private readonly periodMs: number,
    private readonly hub: Pick<HubContext, 'peers' | 'drop' | 'guarded'>,
  ) {}

  /** Beats every period; a beat decides by stall_timer.ts's rule (pongs that came by it but are unread count). */
  start(): void {
    this.timer = stallTolerantTimeout(
      this.periodMs,
      () => {
        this.start();
        this.beat();
      },
      true,
    );
  }

  stop(): void {
    this.timer?.clear();
  }

  /** A pong from the peer: it is alive. */
  heard(peer: RemotePeer): void {
    peer.isAlive = true;
  }

  private beat(): void {
    for (const peer of this.hub.peers()) {
      this.hub.guarded(peer, 'heartbeat', () => {
        // A pong is not late while a state may still be on its way ahead of the ping (peer.stateArrivesBy).
        if (!peer.isAlive && performance.now() >= peer.stateArrivesBy) return this.hub.drop(peer, `no heartbeat for ${this.periodMs} ms`);
        peer.isAlive = false;
        peer.ws.ping();
      })();
    }
  }
}
