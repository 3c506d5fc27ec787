/**
 * Loaded into a dtrain process by the chaos run (`node --import dist/scripts/chaos_probe.js …`): every
 * DTRAIN_CHAOS_PROBE_MS it writes one stderr line of what the process holds, so that the chaos run can tell
 * whether memory, file descriptors or timers grow with reconnections:
 *
 *   chaos-probe {"rss":123456789,"heap":23456789,"fds":31,"resources":{"Timeout":4,"TCPSocketWrap":5}}
 *
 * Without the variable it does nothing. Its own interval is unref'd: it keeps no process alive, and
 * getActiveResourcesInfo() does not list it (nor any other unref'd timer or handle).
 */
import { readdirSync } from 'node:fs';

/** The line's prefix, which the chaos run looks for. */
export const PROBE_PREFIX = 'chaos-probe ';

export interface ProbeSample {
  rss: number;
  heap: number;
  fds: number;
  /** process.getActiveResourcesInfo(), counted by kind. */
  resources: Record<string, number>;
}

/** The timers and TCP sockets (connections and listeners) a sample holds. */
export function heldCounts(s: ProbeSample): { timers: number; sockets: number } {
  return { timers: s.resources.Timeout ?? 0, sockets: (s.resources.TCPSocketWrap ?? 0) + (s.resources.TCPServerWrap ?? 0) };
}

/** The time of day to the millisecond (HH:MM:SS.mmm, UTC), as the chaos run's logs stamp their lines. */
export const stamp = (): string => new Date().toISOString().slice(11, 23);

export function sample(): ProbeSample {
  const resources: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) resources[kind] = (resources[kind] ?? 0) + 1;
  const memory = process.memoryUsage();
  return { rss: memory.rss, heap: memory.heapUsed, fds: readdirSync('/proc/self/fd').length, resources };
}

const everyMs = Number(process.env.DTRAIN_CHAOS_PROBE_MS);
if (everyMs > 0) setInterval(() => process.stderr.write(`${PROBE_PREFIX}${JSON.stringify(sample())}\n`), everyMs).unref();
