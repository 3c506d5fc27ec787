/**
 * The worker's half of the heartbeat (ws's pattern, seen from the client): the coordinator pings every
 * heartbeatMs; a worker that hears nothing from it (no ping, no message) for MISSED_BEATS periods takes the
 * coordinator for dead or cut off, says so and reconnects. Without it, a coordinator that vanished without
 * closing its sockets (power loss, a partition, SIGSTOP) left its workers waiting forever.
 */
import { stallTolerantTimeout, type StallTimer } from './stall_timer.js';

export const MISSED_BEATS = 3;

export class Watchdog {
  private last = performance.now();
  private timer?: StallTimer;

  constructor(
    private periodMs: number,
    private readonly onSilent: (silentMs: number) => void,
  ) {}

  /** Something arrived from the coordinator. */
  heard(): void {
    this.last = performance.now();
  }

  /** (Re)starts watching with the coordinator's heartbeat period. */
  watch(periodMs = this.periodMs): void {
    this.periodMs = periodMs;
    this.stop();
    this.heard();
    this.arm();
  }

  stop(): void {
    this.timer?.clear();
    this.timer = undefined;
  }

  /** The next check, by stall_timer.ts's rule: a ping that came by it but is not read yet counts. */
  private arm(): void {
    this.timer = stallTolerantTimeout(Math.max(10, this.periodMs / 2), () => this.check(), true);
  }

  private get limitMs(): number {
    return MISSED_BEATS * this.periodMs;
  }

  private check(): void {
    const silent = performance.now() - this.last;
    if (silent <= this.limitMs) return this.arm();
    this.stop();
    this.onSilent(silent);
  }
}
