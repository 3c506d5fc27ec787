/**
 * --threads 0 (issue 23): the coordinator takes a replica's state only when the other replicas' checksums
 * confirm it; a replica that sends a state unlike what the others hold is dropped and another's is taken.
 */
import { describe, expect, it } from 'vitest';
import { runWorker } from '../src/cluster/remote/client.js';
import type { TrainEvent } from '../src/index.js';
import { coordinator, referenceHash } from './remote_helpers.js';

const reference = referenceHash({ threads: 2 }, 'reference-threads0');

describe('a coordinator without threads of its own', () => {
  it("refuses a replica's state that the other replicas contradict, and ends on the threads-only hash", async () => {
    const abort = new AbortController();
    const events: TrainEvent[] = [];
    let lies = 0;
    // The liar connects first, so that it is the first asked for its state; its own replica stays right.
    const liar = (url: string) =>
      runWorker({
        connect: url,
        signal: abort.signal,
        maxRetries: 3,
        tamperState: (state) => (lies++, { ...state, params: state.params.map((p, i) => (i === 0 ? p + 1 : p)) }),
      }).catch(() => {});
    const summary = await coordinator(
      { threads: 0, minWorkers: 2 },
      (url) => {
        void liar(url);
        const honest = () => void runWorker({ connect: url, signal: abort.signal, maxRetries: 3 }).catch(() => {});
        // The honest one after the liar joined.
        const wait = setInterval(() => {
          if (events.some((e) => e.type === 'cluster' && e.event.type === 'joined')) {
            clearInterval(wait);
            honest();
          }
        }, 10);
      },
      (e) => events.push(e),
    );
    abort.abort();
    expect(lies).toBeGreaterThan(0);
    expect(summary.paramsSha256).toBe(await reference());
    const rejections = events.flatMap((e) => (e.type === 'cluster' && e.event.type === 'rejected' ? [e.event.reason] : []));
    expect(rejections).toContainEqual(expect.stringMatching(/^its state of step \d+ does not match the checksum 2 of 2 replicas \(itself included\) sent$/));
  }, 60_000);
});
