/**
 * The worker's half of the heartbeat (ws's pattern, seen from the client): the coordinator pings every
 * heartbeatMs; a worker that hears nothing from it (no ping, no message) for MISSED_BEATS periods takes the
 * coordinator for dead or cut off, says so and reconnects. Without it, a coordinator that vanished without
 * closing its sockets (power loss, a partition, SIGSTOP) left its workers waiting forever.
 */
export const MISSED_BEATS = 3;

export class Watchdog {
  private last = performance.now();
  private timer?: NodeJS.Timeout;

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
    this.timer = setInterval(() => this.check(), Math.max(10, periodMs / 2));
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private get limitMs(): number {
    return MISSED_BEATS * this.periodMs;
  }

  private check(): void {
    if (performance.now() - this.last <= this.limitMs) return;
    // Timers run before the event loop reads sockets: after a long synchronous computation a ping may be
    // waiting unread. Decide only once the frames that arrived meanwhile have been handled.
    setImmediate(() => {
      const silent = performance.now() - this.last;
      if (this.timer && silent > this.limitMs) {
        this.stop();
        this.onSilent(silent);
      }
    });
  }
}
