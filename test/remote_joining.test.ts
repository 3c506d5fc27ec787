/** Waiting for remote workers to join: --min-workers, --join-timeout-ms, and a run stopped while it waits. */
import { afterEach, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { train } from '../src/index.js';
import { runWorker } from '../src/cluster/remote/client.js';
import { BASE, coordinator, killChildren, out, referenceHash, workerProcess } from './remote_helpers.js';

afterEach(killChildren);

const reference = referenceHash({ threads: 2 }, 'reference');

describe('--min-workers', () => {
  it('holds step 0 until that many remote workers joined, and ends with the same parameters', async () => {
    const order: string[] = [];
    const summary = await coordinator(
      { threads: 0, minWorkers: 2 },
      (url) => {
        workerProcess(url);
        setTimeout(() => workerProcess(url), 300);
      },
      (e) => (e.type === 'cluster' && e.event.type === 'joined' ? order.push('joined') : e.type === 'step' && order.push('step')),
    );
    expect(order.slice(0, 3)).toEqual(['joined', 'joined', 'step']);
    expect(summary.paramsSha256).toBe(await reference());
  });

  it('fails after --join-timeout-ms naming how many workers are missing', async () => {
    await expect(coordinator({ threads: 1, minWorkers: 2, joinTimeoutMs: 300 }, () => {})).rejects.toThrow(
      '2 of 2 remote workers missing after 300 ms (--min-workers 2): start them with dtrain worker --connect, or raise --join-timeout-ms',
    );
  });

  it('names the ranks of a launched job that have not joined (each worker says its rank in its hello)', async () => {
    const abort = new AbortController();
    const run = train(
      { ...BASE, threads: 1, listen: '127.0.0.1:0', minWorkers: 3, joinTimeoutMs: 1500, out: join(out, 'ranks-missing') },
      { expectedRanks: [1, 2, 3], onListening: ({ port }) => void runWorker({ connect: `ws://127.0.0.1:${port}`, rank: 2, signal: abort.signal }) },
    );
    await expect(run).rejects.toThrow(
      '2 of 3 remote workers missing after 1500 ms (--min-workers 3): ranks 1, 3 have not joined; see their output, or raise --join-timeout-ms',
    );
    abort.abort();
  });

  it('gives up reconnecting once no connection has come for retryForMs (a launched rank whose rank 0 is gone)', async () => {
    await expect(runWorker({ connect: 'ws://127.0.0.1:9', retryForMs: 400 })).rejects.toThrow(/^gave up after \d+ ms without a connection to ws:\/\/127\.0\.0\.1:9 \(last: /);
  });
});

describe('a run stopped while it waits for workers', () => {
  it('ends with a one-line reason instead of waiting on (--threads 0, nobody connected)', async () => {
    const abort = new AbortController();
    const run = train(
      { ...BASE, threads: 0, listen: '127.0.0.1:0', out: join(out, 'stopped-waiting') },
      { signal: abort.signal, onEvent: (e) => e.type === 'cluster' && e.event.type === 'waiting' && setTimeout(() => abort.abort(), 100) },
    );
    await expect(run).rejects.toThrow('step 0: stopped while waiting for remote workers; the last good state is kept');
  });
});
