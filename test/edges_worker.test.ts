/**
 * A worker's edges (issue 23), against a coordinator played by the test (fake_coordinator.ts) or a real hub,
 * and a real runWorker: what it holds of a coordinator's messages is bounded; its frame limit comes from the
 * welcome.
 */
import { describe, expect, it } from 'vitest';
import { runWorker, type WorkerEvent } from '../src/cluster/remote/client.js';
import { encode } from '../src/cluster/remote/codec.js';
import { MAX_QUEUED_MESSAGES } from '../src/cluster/remote/worker_session.js';
import { decodeRaw, maxFrameBytes } from '../src/cluster/remote/codec.js';
import { PROTOCOL_VERSION } from '../src/cluster/remote/messages.js';
import { newNonce } from '../src/cluster/remote/auth.js';
import { frameTooLarge, tlsUntrusted } from '../src/errors.js';
import WebSocket from 'ws';
import { selfSignedCert, smallHub } from './helpers.js';
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
    const coordinator = await fakeCoordinator({ maxFrameBytes: 1 << 20 });
    const worker = await untilDisconnected(coordinator.url, { threads: 2 });
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

/** Runs a worker against `url` until it ends; resolves with how (its error's message, or 'returned'). */
function workerEnd(url: string, options: { maxFrameBytes?: number } = {}, events: WorkerEvent[] = []): Promise<string> {
  return runWorker({ connect: url, maxRetries: 3, ...options, onEvent: (e) => events.push(e) }).then(
    () => 'returned',
    (e: Error) => e.message,
  );
}

describe("a worker's frame limit", () => {
  it("is what the coordinator's welcome says: a larger frame ends the worker with the limit named", async () => {
    const coordinator = await fakeCoordinator({ maxFrameBytes: 2 << 20 });
    const ended = workerEnd(coordinator.url);
    (await coordinator.welcomed).send(encode({ t: 'error', message: 'z'.repeat(3 << 20) }));
    expect(await ended).toBe(frameTooLarge(2 << 20).message);
    await coordinator.close();
  }, 20_000);

  it('is small before the welcome (a stranger posing as a coordinator cannot send a snapshot-sized frame)', async () => {
    const coordinator = await fakeCoordinator({}, encode({ t: 'error', message: 'z'.repeat(2 << 20) }));
    expect(await workerEnd(coordinator.url)).toBe(frameTooLarge(1 << 20).message);
    await coordinator.close();
  }, 20_000);

  it('given (--max-frame-bytes) below what the welcome says the run needs, stops the worker at the welcome', async () => {
    const coordinator = await fakeCoordinator({ maxFrameBytes: 64 << 20 });
    const events: WorkerEvent[] = [];
    expect(await workerEnd(coordinator.url, { maxFrameBytes: 32 << 20 }, events)).toBe(frameTooLarge(32 << 20).message);
    expect(events.map((e) => e.type)).not.toContain('connected');
    await coordinator.close();
  }, 20_000);

  it("a hub's welcome says the largest frame of its run (its model and batch)", async () => {
    const { hub, port, memory } = await smallHub({ authTimeoutMs: 2000 });
    try {
      const welcome = await new Promise<Record<string, unknown>>((resolve) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}`);
        ws.on('message', (data) => {
          const m = decodeRaw(data as Buffer);
          if (m.t === 'challenge') {
            ws.send(encode({ t: 'hello', protocol: PROTOCOL_VERSION, mac: new Uint8Array(0), nonce: newNonce(), engine: 'onnx', device: 'cpu', backend: 'test', threads: 1, dataSha256: '' }));
          } else if (m.t === 'welcome') {
            resolve(m);
            ws.terminate();
          }
        });
        ws.on('error', () => {});
      });
      expect(welcome.maxFrameBytes).toBe(maxFrameBytes(memory.spec, 4));
    } finally {
      await hub.close();
    }
  });
});

describe('a worker that cannot verify the coordinator\'s TLS certificate', () => {
  it('stops at once with the reason and the option that fixes it, instead of reconnecting for ever', async () => {
    const { cert, key } = selfSignedCert('dtrain-edges-tls-');
    const { hub, port } = await smallHub({ tlsCert: cert, tlsKey: key, authTimeoutMs: 2000 });
    const url = `wss://127.0.0.1:${port}`;
    const events: WorkerEvent[] = [];
    const stop = new AbortController();
    try {
      // maxRetries 0: before, it retried for ever; a few seconds are many tries.
      const ended = runWorker({ connect: url, signal: stop.signal, onEvent: (e) => events.push(e) }).then(() => 'returned', (e: Error) => e.message);
      const outcome = await Promise.race([ended, new Promise<string>((resolve) => setTimeout(() => resolve('still retrying'), 5000))]);
      expect(outcome).toBe(tlsUntrusted(url, 'self-signed certificate', 'DEPTH_ZERO_SELF_SIGNED_CERT').message);
      expect(events.filter((e) => e.type === 'disconnected')).toEqual([]);
      // With --ca it joins.
      const joined = hub.waitForWorker();
      void runWorker({ connect: url, ca: cert, signal: stop.signal }).catch(() => {});
      await joined;
    } finally {
      stop.abort();
      await hub.close();
    }
  }, 20_000);
});
