/**
 * A worker's edges (issue 23): what it holds of a coordinator's messages is bounded, against a coordinator
 * played by the test (fake_coordinator.ts) and a real runWorker.
 */
import { describe, expect, it } from 'vitest';
import { runWorker, type WorkerEvent } from '../src/cluster/remote/client.js';
import { encode } from '../src/cluster/remote/codec.js';
import { MAX_QUEUED_MESSAGES } from '../src/cluster/remote/worker_session.js';
import { fakeCoordinator, smallState } from './fake_coordinator.js';

/** Runs a worker against `url` until it reports a disconnection (or `ms` pass); returns its events. */
async function untilDisconnected(url: string, options: { maxFrameBytes?: number; threads?: number } = {}, ms = 10_000) {
  const events: WorkerEvent[] = [];
  const stop = new AbortController();
  const disconnected = new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    void runWorker({
      connect: url,
      signal: stop.signal,
      ...options,
      onEvent: (e) => {
        events.push(e);
        if (e.type === 'disconnected') {
          clearTimeout(timer);
          resolve();
        }
      },
    }).catch(() => {});
  });
  return { events, disconnected, stop };
}

describe('a worker bounds the messages it holds unhandled', () => {
  it(`closes and reconnects when a coordinator sends more than ${MAX_QUEUED_MESSAGES} messages ahead of it`, async () => {
    const coordinator = await fakeCoordinator();
    const worker = await untilDisconnected(coordinator.url);
    const ws = await coordinator.welcomed;
    // The snapshot keeps the worker busy building its replica while the flood arrives.
    const flood = encode({ t: 'error', message: 'x' });
    ws.send(encode(smallState()));
    for (let i = 0; i < MAX_QUEUED_MESSAGES + 1000; i++) ws.send(flood);
    await worker.disconnected;
    worker.stop.abort();
    await coordinator.close();
    const disconnected = worker.events.find((e) => e.type === 'disconnected');
    expect(disconnected, JSON.stringify(worker.events.slice(-3))).toMatchObject({ reason: expect.stringContaining('unhandled') });
    // It handled no more than the bound of the flood.
    expect(worker.events.filter((e) => e.type === 'error' && e.message === 'coordinator: x').length).toBeLessThanOrEqual(MAX_QUEUED_MESSAGES);
  }, 30_000);

  it('closes when what it holds passes twice its frame limit in bytes', async () => {
    const coordinator = await fakeCoordinator();
    const worker = await untilDisconnected(coordinator.url, { maxFrameBytes: 1 << 20, threads: 2 });
    const ws = await coordinator.welcomed;
    // Two engine threads start for the snapshot's replica (tens of ms) while these arrive.
    const big = encode({ t: 'error', message: 'y'.repeat(900_000) });
    ws.send(encode(smallState()));
    for (let i = 0; i < 4; i++) ws.send(big);
    await worker.disconnected;
    worker.stop.abort();
    await coordinator.close();
    expect(worker.events.find((e) => e.type === 'disconnected')).toMatchObject({ reason: expect.stringContaining('2 MiB') });
  }, 30_000);
});
