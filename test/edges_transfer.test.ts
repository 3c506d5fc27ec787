/**
 * A joiner on a slow link (issue 23): its state transfer has its own deadline, scaled by its bytes, so the
 * step deadline no longer drops it at every join; and the waits at an epoch's end show in metrics.jsonl.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runWorker } from '../src/cluster/remote/client.js';
import type { TrainEvent } from '../src/index.js';
import { readMetrics, type EpochRecord } from '../src/report/metrics.js';
import { train } from '../src/index.js';
import { BASE, coordinator, out } from './remote_helpers.js';

/** A TCP proxy on loopback to `port` whose downstream (coordinator → worker) runs at `bytesPerMs`. */
async function slowLink(port: number, bytesPerMs: number): Promise<{ url: string; close(): void }> {
  const sockets: Socket[] = [];
  const server: Server = createServer((client) => {
    const upstream = connect(port, '127.0.0.1');
    sockets.push(client, upstream);
    client.pipe(upstream);
    upstream.on('data', (chunk: Buffer) => {
      client.write(chunk);
      upstream.pause();
      setTimeout(() => upstream.resume(), chunk.length / bytesPerMs);
    });
    const end = () => (client.destroy(), upstream.destroy());
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => (sockets.forEach((s) => s.destroy()), server.close()),
  };
}

describe('a joiner on a slow link', () => {
  it('is not dropped by the step deadline while its state is on its way', async () => {
    // 784→512→10: 407 k parameters, a state of 4.9 MB; at 2 MB/s it takes ~2.5 s, the step deadline is 1 s.
    const abort = new AbortController();
    const events: TrainEvent[] = [];
    let link: { close(): void } | undefined;
    const summary = await coordinator(
      { threads: 1, hidden: [512], epochs: 1, minWorkers: 1, stepTimeoutMs: 1000, heartbeatMs: 1000 },
      (url) =>
        void slowLink(Number(new URL(url).port), 2000).then((proxy) => {
          link = proxy;
          void runWorker({ connect: proxy.url, signal: abort.signal, maxRetries: 3 }).catch(() => {});
        }),
      (e) => events.push(e),
    );
    abort.abort();
    link?.close();
    const left = events.flatMap((e) => (e.type === 'cluster' && (e.event.type === 'left' || e.event.type === 'rejected') ? [`${e.event.type}: ${e.event.reason}`] : []));
    expect(left.filter((l) => !l.includes('coordinator finished'))).toEqual([]);
    const joins = events.filter((e) => e.type === 'cluster' && e.event.type === 'joined');
    expect(joins).toHaveLength(1);
    expect(summary.steps).toBeGreaterThan(0);
  }, 60_000);
});

describe('metrics.jsonl', () => {
  it("records each epoch's end: bringing the state here, evaluating, comparing replicas", async () => {
    const dir = join(out, 'edges-metrics');
    await train({ ...BASE, threads: 1, out: dir });
    const epochs = readMetrics(dir).filter((r): r is EpochRecord => r.type === 'epoch');
    expect(epochs).toHaveLength(2);
    for (const { endSeconds } of epochs) {
      expect(Object.keys(endSeconds).sort()).toEqual(['evaluate', 'state', 'verify']);
      for (const s of Object.values(endSeconds)) expect(s).toBeGreaterThanOrEqual(0);
      expect(endSeconds.evaluate).toBeGreaterThan(0);
    }
  });
});
