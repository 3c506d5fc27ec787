import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { train, type TrainConfig } from '../src/index.js';
import type { ThreadTeam } from '../src/cluster/thread_team.js';
import { syntheticDataset } from './helpers.js';

const out = mkdtempSync(join(tmpdir(), 'dtrain-det-'));
let runs = 0;
// 145 = 2 full batches + 17 rows: the short last batch has a 1-row micro-shard.
const BASE: Partial<TrainConfig> = { trainSamples: 145, testSamples: 200, epochs: 2, logEvery: 1000 };
const run = (config: Partial<TrainConfig>, options = {}) => train({ ...BASE, out: join(out, String(runs++)), ...config }, options);

describe('data-parallel determinism (tutorial MLP on MNIST)', () => {
  it('gives the same parameters for 1, 2, 3 and 4 threads, and for two runs in a row', async () => {
    const hashes = [];
    for (const threads of [1, 2, 3, 4, 2]) hashes.push((await run({ threads })).paramsSha256);
    expect(new Set(hashes).size).toBe(1);
  });

  it('gives the same parameters on 1 and 3 threads when the last batch has a single row', async () => {
    // One thread computes whole steps in one engine call, except a one-row batch (it takes the two passes).
    const one = await run({ threads: 1, trainSamples: 129, epochs: 1 });
    const three = await run({ threads: 3, trainSamples: 129, epochs: 1 });
    expect(three.paramsSha256).toBe(one.paramsSha256);
  });

  it('is independent of the micro-batch size: --micro-batch 64 --threads 1 equals 16 on 3 threads and 5 on 2', async () => {
    const a = await run({ threads: 1, microBatch: 64 });
    const b = await run({ threads: 3, microBatch: 16 });
    const c = await run({ threads: 2, microBatch: 5 });
    expect(b.paramsSha256).toBe(a.paramsSha256);
    expect(c.paramsSha256).toBe(a.paramsSha256);
    expect(b.epochs.map((e) => e.testAccuracy)).toEqual(a.epochs.map((e) => e.testAccuracy));
  });

  it('gives different parameters for a different seed, and the same for a shuffled run on any thread count', async () => {
    const seed0 = await run({ threads: 1 });
    const seed1 = await run({ threads: 1, seed: 1 });
    expect(seed1.paramsSha256).not.toBe(seed0.paramsSha256);
    const shuffled1 = await run({ threads: 1, shuffle: true });
    const shuffled3 = await run({ threads: 3, shuffle: true });
    expect(shuffled1.paramsSha256).not.toBe(seed0.paramsSha256);
    expect(shuffled3.paramsSha256).toBe(shuffled1.paramsSha256);
  });

  it.each([1, 2])('finishes with the same parameters when %i pool threads die mid-step, and the pool recovers', async (deaths) => {
    const reference = await run({ threads: 3 });
    let pool: ThreadTeam | undefined;
    const summary = await run({ threads: 3 }, { faults: { threadExitAtStep: 2, times: deaths }, onTeam: (w: ThreadTeam) => (pool = w) });
    // Each slot's task of that pass was claimed by its thread, which died (the main thread computed it
    // again), or taken by the main thread before its thread started it; no other task failed: piscina's
    // replacement threads rejoined the team and computed their slots of later passes.
    expect(pool!.retries).toBeLessThanOrEqual(deaths);
    expect(pool!.retries + pool!.taken).toBeGreaterThanOrEqual(deaths);
    expect(summary.paramsSha256).toBe(reference.paramsSha256);
  });

  it('lets the main thread take the task of a pool thread that has not started it, with the same parameters', async () => {
    const reference = await run({ threads: 2 });
    let pool: ThreadTeam | undefined;
    // The pool thread sleeps 300 ms before claiming its weights task of step 2, as a descheduled thread would.
    const summary = await run({ threads: 2 }, { faults: { threadStallAtStep: 2, stallMs: 300 }, onTeam: (w: ThreadTeam) => (pool = w) });
    expect(pool!.taken).toBeGreaterThanOrEqual(1);
    expect(pool!.retries).toBe(0);
    expect(summary.paramsSha256).toBe(reference.paramsSha256);
  });

  it('holds for the tfjs engine too (wasm backend): 1 and 3 threads end the same, and differ from onnx', async () => {
    const config = { engine: 'tfjs' as const, epochs: 1, hidden: [64, 32] };
    const one = await run({ ...config, threads: 1 });
    const three = await run({ ...config, threads: 3 });
    expect(three.paramsSha256).toBe(one.paramsSha256);
    expect((await run({ ...config, engine: 'onnx', threads: 1 })).paramsSha256).not.toBe(one.paramsSha256);
  });

  it.each([1, 2])('stops on a non-finite loss naming the step and micro-shard, and keeps the last good parameters (%i threads)', async (threads) => {
    const dataset = syntheticDataset(96, 16);
    dataset.train.images[(64 + 20) * dataset.features + 3] = NaN;
    const config = { threads, epochs: 1, hidden: [8], trainSamples: 0, testSamples: 0 };
    const good = await run({ ...config, steps: 1 }, { dataset });
    const dir = join(out, `nan-${threads}`);
    await expect(train({ ...config, out: dir }, { dataset })).rejects.toThrow(
      'step 1: non-finite loss in micro-shard 1 (batch rows 16–31, first at dataset sample 84); training stopped with the last good parameters kept',
    );
    const summary = JSON.parse(readFileSync(join(dir, 'summary.json'), 'utf8'));
    expect(summary.error).toMatch(/^step 1: non-finite loss/);
    expect(summary.paramsSha256).toBe(good.paramsSha256);
  });
});
