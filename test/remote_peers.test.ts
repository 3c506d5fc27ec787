/**
 * Peer links (remote/peer_links.ts, peer_mesh.ts): the members of a sharded run send each other their rows and
 * slices directly, the coordinator only orchestrating; every run ends on the threads-only hash.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { runWorker, type WorkerOptions } from '../src/cluster/remote/client.js';
import { coordinator, referenceHash } from './remote_helpers.js';

const reference = referenceHash({ threads: 2 }, 'peers-reference');

const aborts: AbortController[] = [];
afterEach(() => {
  for (const a of aborts.splice(0)) a.abort();
});

/** An in-process worker; its log lines are kept. */
function worker(url: string, extra: Partial<WorkerOptions> = {}, log: string[] = []): AbortController {
  const abort = new AbortController();
  aborts.push(abort);
  void runWorker({ connect: url, signal: abort.signal, onEvent: (e) => e.type === 'error' && log.push(e.message), ...extra });
  return abort;
}

describe('peer links (sharded steps between workers)', () => {
  it('ends on the threads-only hash with 2, 3 and 4 workers, the rows and slices going between them', async () => {
    for (const count of [2, 3, 4]) {
      const lines: string[] = [];
      const summary = await coordinator(
        { threads: 0, plan: 'sharded', minWorkers: count },
        (url) => {
          for (let i = 0; i < count; i++) worker(url);
        },
        (e) => e.type === 'cluster' && e.event.type === 'peers' && lines.push(e.event.message),
      );
      expect(lines.some((l) => l.includes('every member linked')), lines.join('\n')).toBe(true);
      expect(summary.paramsSha256, `${count} workers`).toBe(await reference());
    }
  });
});
