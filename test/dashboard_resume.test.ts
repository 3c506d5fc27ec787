/**
 * A resumed run on the dashboard: its history (metrics.jsonl up to the checkpoint) is read only once the run
 * has rewritten that file, and it counts toward no plan of the new session.
 */
import { describe, expect, it } from 'vitest';
import type { ToDashboard } from '../src/dashboard/dashboard_thread.js';
import { dashboardFeed } from '../src/dashboard/live.js';
import { RunStore } from '../src/dashboard/run_store.js';
import type { TrainEvent } from '../src/train/events.js';

const start = { type: 'start', spec: '784-8-10', parameters: 1, dataset: 'mnist', trainSamples: 1, testSamples: 1, workers: '1', datasetSha256: 'x', outDir: '/runs/a', config: { batchSize: 32 } } as const;
const step = (n: number): TrainEvent => ({ type: 'step', step: n, epoch: 1, batch: n, batches: 10, loss: 1, samples: 32, ms: 5 });

describe('a resumed run on the dashboard', () => {
  it('asks for the history just before the first step, not when the run says it resumed (metrics.jsonl is rewritten between)', () => {
    const posted: ToDashboard[] = [];
    const feed = dashboardFeed((m) => posted.push(m));
    feed(start);
    feed({ type: 'checkpoint', action: 'resumed', file: '/runs/a/checkpoints/4.ckpt', step: 4 });
    feed({ type: 'cluster', event: { type: 'plan', step: 4, plan: 'replicated', reason: 'as asked', estimates: [] } });
    expect(posted.map((m) => m.type)).toEqual(['event', 'event', 'event']);
    feed(step(5));
    feed(step(6));
    expect(posted.slice(3)).toEqual([{ type: 'history', runDir: '/runs/a', batchSize: 32, throughStep: 4 }, { type: 'event', event: step(5) }, { type: 'event', event: step(6) }]);
  });

  it('asks for it at the end when the run had nothing left to do', () => {
    const posted: ToDashboard[] = [];
    const feed = dashboardFeed((m) => posted.push(m));
    feed(start);
    feed({ type: 'checkpoint', action: 'resumed', file: '/runs/a/checkpoints/4.ckpt', step: 4 });
    feed({ type: 'finished-already', step: 4, epochs: 1 });
    expect(posted.map((m) => m.type)).toEqual(['event', 'event', 'history', 'event']);
  });

  it('counts the history toward no plan of this session, and dates cluster events from the checkpoint on', () => {
    const store = new RunStore();
    store.apply({ type: 'checkpoint', action: 'resumed', file: 'c', step: 4 });
    store.addClusterEvent({ type: 'plan', step: 4, plan: 'replicated', reason: 'as asked', estimates: [] });
    for (let s = 1; s <= 4; s++) store.addStep(s, 1, 100, 64, false);
    store.apply(step(5));
    const { plans, events, steps } = store.snapshot();
    expect(plans.map((p) => p.measuredMs)).toEqual([5]);
    expect(events[0].step).toBe(4);
    expect(steps.step).toEqual([1, 2, 3, 4, 5]);
  });
});
