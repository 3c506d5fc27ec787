/**
 * Whole runs with remote workers on loopback (worker processes and in-process workers): whatever joins,
 * leaves, dies or computes where, the run ends on the parameters of a run on local threads alone. The
 * plans' own scenarios are in remote_plans.test.ts.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { train } from '../src/index.js';
import { runWorker } from '../src/cluster/remote/client.js';
import { readMetrics } from '../src/report/metrics.js';
import { BASE, coordinator, killChildren, out, referenceHash, workerProcess } from './remote_helpers.js';

afterEach(killChildren);

const reference = referenceHash({ threads: 2 }, 'reference');
const reference3 = referenceHash({ threads: 2, epochs: 3 }, 'reference3');
const referenceOneEpoch = referenceHash({ threads: 2, epochs: 1 }, 'reference1');

/** Two worker processes started when the coordinator listens; url() gives its address for later ones. */
function twoWorkers() {
  const workers: ChildProcess[] = [];
  let address = '';
  const onReady = (url: string) => {
    address = url;
    workers.push(workerProcess(url), workerProcess(url));
  };
  return { workers, url: () => address, onReady };
}

describe('remote workers on loopback', () => {
  it.each(['replicated', 'sharded', 'server'] as const)('two remote workers and no local threads (--plan %s) end with the same parameters as 2 local threads', async (plan) => {
    const joined: string[] = [];
    const summary = await coordinator(
      { threads: 0, plan },
      (url) => {
        workerProcess(url);
        workerProcess(url);
      },
      (e) => e.type === 'cluster' && e.event.type === 'joined' && joined.push(e.event.worker),
    );
    // The second process may start after a run this short has ended: one of them must have joined to compute.
    expect(joined.length).toBeGreaterThanOrEqual(1);
    expect(summary.paramsSha256).toBe(await reference());
  });

  it('gives a worker that got no rows of a step the whole batch in compact form, with the same result', async () => {
    // Three workers and two micro-shards a batch: one of them computes nothing and is sent every row.
    const abort = new AbortController();
    let joined = 0;
    let allJoined = () => {};
    const three = new Promise<void>((resolve) => (allJoined = resolve));
    const summary = await coordinator(
      { threads: 0, microBatch: 32 },
      (url) => {
        for (let i = 0; i < 3; i++) void runWorker({ connect: url, signal: abort.signal });
      },
      (e) => e.type === 'cluster' && e.event.type === 'joined' && ++joined === 3 && allJoined(),
      (step) => (step === 0 ? three : undefined),
    );
    abort.abort();
    // Every step, two of the three computed one micro-shard each and the third was sent all 64 rows.
    const rowsPerStep = readMetrics(summary.outDir!).flatMap((r) => (r.type === 'epoch' ? [Object.values(r.shares).reduce((a, b) => a + b, 0)] : []));
    expect(rowsPerStep).toEqual([145, 145]);
    expect(joined).toBe(3);
    expect(summary.paramsSha256).toBe(await reference());
  });

  it.each(['replicated', 'sharded', 'server'] as const)('keeps the result when a worker is SIGKILLed mid-run and another joins mid-run (--plan %s)', async (plan) => {
    const { workers, url, onReady } = twoWorkers();
    const events: string[] = [];
    let joined = 0;
    let onJoin = () => {};
    const shares: Record<string, number>[] = [];
    const summary = await coordinator(
      { threads: 0, epochs: 3, plan },
      onReady,
      (e) => {
        if (e.type === 'epoch') shares.push(e.shares.rows);
        if (e.type !== 'cluster') return;
        events.push(e.event.type);
        if (e.event.type === 'joined') (joined++, onJoin());
      },
      async (step) => {
        if (step === 2) workers[0].kill('SIGKILL');
        if (step === 4) {
          // Hold the run until the newcomer has joined, so that it really gets work from the next step.
          const third = new Promise<void>((resolve) => (onJoin = () => joined >= 3 && resolve()));
          workers.push(workerProcess(url()));
          await third;
        }
      },
    );
    expect(events).toContain('left');
    expect(joined).toBeGreaterThanOrEqual(3);
    // In the last epoch the survivor and the newcomer shared the rows.
    expect(Object.keys(shares[shares.length - 1]).length).toBe(2);
    expect(summary.paramsSha256).toBe(await reference3());
  });

  it('with --threads 0, a sole worker sends its rows\' losses only; a joiner makes them come whole again (the first is sent the state too), and the result is the same', async () => {
    const abort = new AbortController();
    let address = '';
    let synced = 0;
    let joined = () => {};
    const lost: string[] = [];
    const summary = await coordinator(
      { threads: 0, epochs: 3, minWorkers: 1 },
      (url) => {
        address = url;
        void runWorker({ connect: url, signal: abort.signal, onEvent: (e) => e.type === 'synced' && synced++ });
      },
      (e) => {
        if (e.type !== 'cluster') return;
        if (e.event.type === 'joined') joined();
        if (e.event.type === 'rejected' || (e.event.type === 'left' && e.event.reason !== 'coordinator finished')) lost.push(e.event.type);
      },
      async (step) => {
        if (step !== 4) return;
        // Held until it joined: admitted before step 4, whose rows the first was asked for early.
        const joining = new Promise<void>((resolve) => (joined = resolve));
        void runWorker({ connect: address, signal: abort.signal });
        await joining;
      },
    );
    abort.abort();
    const bytes = readMetrics(summary.outDir!).flatMap((r) => (r.type === 'step' ? [r.bytes] : []));
    // An epoch's last step (2, 5, 8) asks for no next rows early: what it moves is its rows' answer and the
    // update. Alone, 17 losses and the update: well under 4 KB (its 17 rows would be ~70 KB).
    expect(bytes[2]).toBeLessThan(4096);
    // Two: the rows travel again, each worker's to the other.
    expect(bytes[8]).toBeGreaterThan(50_000);
    // It may have applied step 4 from its own rows before the joiner could get them: sent the state again
    // (asked for those rows again instead, it would fail and be dropped).
    expect(synced).toBe(2);
    expect(lost).toEqual([]);
    expect(summary.paramsSha256).toBe(await reference3());
  });

  it('with --threads 0 and --verify 1, a sole worker\'s rows still come whole (they are compared here)', async () => {
    const abort = new AbortController();
    const summary = await coordinator({ threads: 0, epochs: 1, minWorkers: 1, verify: 1 }, (url) => void runWorker({ connect: url, signal: abort.signal }));
    abort.abort();
    const bytes = readMetrics(summary.outDir!).flatMap((r) => (r.type === 'step' ? [r.bytes] : []));
    expect(Math.min(...bytes)).toBeGreaterThan(50_000);
    expect(summary.paramsSha256).toBe(await referenceOneEpoch());
  });

  it('with --threads 0, replays locally when every replica is lost, and a newcomer continues with the same result', async () => {
    const { workers, url, onReady } = twoWorkers();
    const replays: [number, number][] = [];
    const waits: string[] = [];
    const summary = await coordinator(
      { threads: 0, epochs: 3 },
      onReady,
      (e) => {
        if (e.type !== 'cluster') return;
        if (e.event.type === 'replay') replays.push([e.event.from, e.event.to]);
        if (e.event.type === 'waiting') waits.push(e.event.reason);
      },
      async (step) => {
        if (step !== 5) return;
        // Both replicas die; the coordinator last took their state after epoch 1 (step 3), and a newcomer
        // joins while it waits for a worker.
        await Promise.all(workers.map((w) => new Promise((resolve) => (w.once('exit', resolve), w.kill('SIGKILL')))));
        setTimeout(() => workerProcess(url()), 200);
      },
    );
    expect(waits).toContain('step 5: no worker is connected; waiting for one');
    expect(replays).toEqual([[3, 5]]);
    expect(summary.paramsSha256).toBe(await reference3());
  });

  it('with --threads 0, checkpoints hold the replicas\' state: a stopped run resumed on local threads ends the same', async () => {
    const runDir = join(out, 'ckpt-threads0');
    const abort = new AbortController();
    const first = await coordinator({ threads: 0, steps: 4, checkpointEvery: 2, out: runDir }, (url) => void runWorker({ connect: url, signal: abort.signal }));
    abort.abort();
    expect(first.steps).toBe(4);
    const resumed = await train({ resume: runDir, threads: 1, steps: 0 });
    expect(resumed.paramsSha256).toBe(await reference());
    // Sharded among two owners, a checkpoint's state is put together from their shards.
    const shardedDir = join(out, 'ckpt-sharded');
    const two = (url: string) => [0, 1].forEach(() => void runWorker({ connect: url, signal: abort2.signal }));
    const abort2 = new AbortController();
    await coordinator({ threads: 0, plan: 'sharded', minWorkers: 2, steps: 4, checkpointEvery: 2, out: shardedDir }, two);
    abort2.abort();
    expect((await train({ resume: shardedDir, threads: 1, steps: 0 })).paramsSha256).toBe(await reference());
  });

  it('with --threads 0, stops on rows that really are non-finite, naming the micro-shard, and keeps the last good state', async () => {
    const { syntheticDataset } = await import('./helpers.js');
    const dataset = syntheticDataset(96, 16);
    dataset.train.images[(64 + 20) * dataset.features + 3] = NaN;
    const config = { threads: 0, epochs: 1, hidden: [8], trainSamples: 0, testSamples: 0, listen: '127.0.0.1:0' };
    const abort = new AbortController();
    const connect = (port: number) => void runWorker({ connect: `ws://127.0.0.1:${port}`, signal: abort.signal });
    const good = await train({ ...config, steps: 1, out: join(out, 'nan-good') }, { dataset, onListening: ({ port }) => connect(port) });
    const rejected: string[] = [];
    const dir = join(out, 'nan-remote');
    await expect(
      train({ ...config, out: dir }, { dataset, onListening: ({ port }) => connect(port), onEvent: (e) => e.type === 'cluster' && e.event.type === 'rejected' && rejected.push(e.event.reason) }),
    ).rejects.toThrow('step 1: non-finite loss in micro-shard 1 (batch rows 16–31, first at dataset sample 84)');
    abort.abort();
    // The worker told the truth: it stays; and the summary holds the state before the bad step.
    expect(rejected).toEqual([]);
    expect(JSON.parse(readFileSync(join(dir, 'summary.json'), 'utf8')).paramsSha256).toBe(good.paramsSha256);
  });

  it('mixes local threads and a remote worker running 2 threads with the same result, and waits for a worker with --threads 0', async () => {
    const abort = new AbortController();
    const mixed = await coordinator({ threads: 1 }, (url) => void runWorker({ connect: url, threads: 2, signal: abort.signal }));
    abort.abort();
    expect(mixed.paramsSha256).toBe(await reference());
    const waits: string[] = [];
    const late = new AbortController();
    const waited = await coordinator(
      { threads: 0 },
      (url) => setTimeout(() => void runWorker({ connect: url, signal: late.signal }), 300),
      (e) => e.type === 'cluster' && e.event.type === 'waiting' && waits.push(e.event.reason),
    );
    late.abort();
    expect(waits[0]).toBe('step 0: no worker is connected; waiting for one');
    expect(waited.paramsSha256).toBe(await reference());
  });
});

describe('mixed devices', () => {
  it('with --allow-mixed-devices, take a worker on another engine and say so in summary.json', async () => {
    const abort = new AbortController();
    const joined: string[] = [];
    const config = { threads: 0, allowMixedDevices: true, epochs: 1, hidden: [16] };
    const summary = await coordinator(
      config,
      (url) => void runWorker({ connect: url, engine: 'tfjs', signal: abort.signal }),
      (e) => e.type === 'cluster' && e.event.type === 'joined' && joined.push(e.event.backend),
    );
    abort.abort();
    expect(joined).toEqual(['tfjs (cpu)']);
    expect([summary.devices, summary.mixedDevices]).toEqual([['onnx/cpu', 'tfjs/cpu'], true]);
    const alone = await train({ ...BASE, ...config, allowMixedDevices: false, threads: 1, listen: null, out: join(out, 'unmixed') });
    expect([alone.devices, alone.mixedDevices]).toEqual([['onnx/cpu'], false]);
  });
});

describe('a worker with its own copy of the data', () => {
  it('gets row indices instead of pixels when its copy matches, pixels when it does not, with the same result', async () => {
    const { loadDataset } = await import('../src/data/datasets.js');
    const { syntheticDataset } = await import('./helpers.js');
    const perStep: number[] = [];
    for (const dataset of [loadDataset(), syntheticDataset(10, 10, 784, 10)]) {
      const abort = new AbortController();
      const summary = await coordinator({ threads: 0 }, (url) => void runWorker({ connect: url, dataset, signal: abort.signal }));
      abort.abort();
      expect(summary.paramsSha256).toBe(await reference());
      // Wire bytes a step, after the first (which carries the state snapshot).
      const steps = readMetrics(summary.outDir!).filter((r) => r.type === 'step').slice(1);
      perStep.push(steps.reduce((n, r) => n + (r.type === 'step' ? r.bytes : 0), 0) / steps.length);
    }
    // The pixels of a step's ~48 rows are ~150 kB; a matching copy saves them.
    expect(perStep[1] - perStep[0]).toBeGreaterThan(100_000);
  });
  it('computes the right rows on 2 worker threads from its own copy, beside a coordinator with 0 and with 2 threads', async () => {
    const { loadDataset } = await import('../src/data/datasets.js');
    const dataset = loadDataset();
    for (const threads of [0, 2]) {
      const abort = new AbortController();
      const summary = await coordinator({ threads }, (url) => void runWorker({ connect: url, dataset, threads: 2, signal: abort.signal }));
      abort.abort();
      expect(summary.paramsSha256, `coordinator --threads ${threads}`).toBe(await reference());
    }
  });
});
