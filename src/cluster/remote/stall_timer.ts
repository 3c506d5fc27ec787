/**
 * One rule for every deadline on what a socket brings (a request's answer, a pong, a heartbeat, a hello):
 * a process's timers run before its socket reads, so a deadline that fires after the process itself was held
 * up (SIGSTOP, a long synchronous pass) fires with the bytes that would have met it still unread. Such a
 * deadline decides only after those reads (a setImmediate), and one that fired HELD_UP_MS late or more
 * (the process was stopped: the other side's time ran on) starts once more instead of counting the pause
 * against the other side. Time is performance.now: monotonic, and running on while the process is stopped
 * (Date.now jumps with NTP).
 */

/** A deadline that fires this much after it fell due fired after this process was held up. */
export const HELD_UP_MS = 500;

/** A running stallTolerantTimeout; clear() stops it (before or after it fired: then fn does not run). */
export interface StallTimer {
  clear(): void;
}

/** Runs `fn` once `ms` passed, by the rule above; `unref`: it keeps no process alive (a heartbeat's). */
export function stallTolerantTimeout(ms: number, fn: () => void, unref = false): StallTimer {
  const due = performance.now() + ms;
  let restarted = false;
  let immediate: NodeJS.Immediate | undefined;
  const arm = () => {
    const timer = setTimeout(fired, ms);
    if (unref) timer.unref();
    return timer;
  };
  const fired = () => {
    if (!restarted && performance.now() - due >= HELD_UP_MS) {
      restarted = true;
      timer = arm();
      return;
    }
    immediate = setImmediate(fn);
  };
  let timer = arm();
  return {
    clear() {
      clearTimeout(timer);
      clearImmediate(immediate);
    },
  };
}
