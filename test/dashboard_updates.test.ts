/**
 * What the dashboard's thread is told and what its pages are sent: a resumed run's history (metrics.jsonl up
 * to the checkpoint) read only once the run has rewritten that file, counted toward no plan of the new
 * session; the plan in force's time alone while only it changes; nothing built while no page is open.
 */
import { describe, expect, it } from 'vitest';
import type { ToDashboard } from '../src/dashboard/dashboard_thread.js';
import { dashboardFeed } from '../src/dashboard/live.js';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadHistory } from '../src/dashboard/run_folder.js';
import { RunStore } from '../src/dashboard/run_store.js';
import { DashboardServer } from '../src/dashboard/server.js';
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

describe('an epoch on the page', () => {
  it('is the same from metrics.jsonl as live: its result and shares, not the record\'s waits', () => {
    const result = { epoch: 1, steps: 4, testAccuracy: 50, testAvgLoss: 1, trainLoss: 2, seconds: 1, samplesPerSecond: 256 };
    const live = new RunStore();
    live.apply({ type: 'epoch', result, shares: { rows: { w: 256 }, networkWaitSeconds: 0.5 } });
    const run = mkdtempSync(join(tmpdir(), 'dtrain-dashboard-updates-'));
    const record = { type: 'epoch', ...result, shares: { w: 256 }, networkWaitSeconds: 0.5, endSeconds: { state: 0.1, evaluate: 0.2, verify: 0 } };
    writeFileSync(join(run, 'metrics.jsonl'), `${JSON.stringify(record)}\n`);
    const history = new RunStore();
    loadHistory(history, run, 64);
    expect(history.snapshot().epochs).toEqual(live.snapshot().epochs);
    expect(Object.keys(history.snapshot().epochs[0]).sort()).toEqual([...Object.keys(result), 'shares'].sort());
  });
});

describe('the updates a page is sent', () => {
  const participant = (id: string, rows: number, computeMs: number) => ({ id, kind: 'remote' as const, state: 'computing' as const, rows, computeMs, applyMs: 0, wireMs: 0, waitMs: 0 });

  it('sends the plans whole when one is chosen, then only the time of the one in force', () => {
    const store = new RunStore();
    store.addClusterEvent({ type: 'plan', step: 0, plan: 'replicated', reason: 'as asked', estimates: [] });
    store.addStep(1, 1, 10, 64);
    const first = store.takeUpdate();
    expect(first?.kind === 'update' && first.update.plans?.map((p) => p.measuredMs)).toEqual([10]);
    store.addStep(2, 1, 20, 64);
    const next = store.takeUpdate();
    expect(next?.kind === 'update' && next.update).toMatchObject({ measuredMs: 15 });
    expect(next?.kind === 'update' && next.update.plans).toBeUndefined();
    expect(store.snapshot().plans.map((p) => p.measuredMs)).toEqual([15]);
  });

  it('sends the participants with the slowest of them, as the records since the last update left them', () => {
    const store = new RunStore();
    store.addParticipants({ step: 1, epoch: 1, participants: [participant('a', 48, 10), participant('b', 16, 10)] });
    store.addParticipants({ step: 2, epoch: 1, participants: [participant('a', 16, 10), participant('b', 48, 30)] });
    const change = store.takeUpdate();
    expect(change?.kind).toBe('update');
    if (change?.kind !== 'update') return;
    expect(change.update.participants?.map((p) => [p.id, p.share, p.lastStep])).toEqual([
      ['a', 0.5, 2],
      ['b', 0.5, 2],
    ]);
    // a: 64 rows in 20 ms; b: 64 rows in 40 ms.
    expect(change.update.slowest).toBe('b');
  });

  it('builds nothing while no page is open, and keeps nothing for later', () => {
    const store = new RunStore();
    const server = new DashboardServer(store, { host: '127.0.0.1', port: 0 });
    store.addStep(1, 1, 10, 64);
    store.addParticipants({ step: 1, epoch: 1, participants: [participant('a', 64, 10)] });
    server.flush();
    expect(store.takeUpdate()).toBeUndefined();
    expect(store.snapshot().steps.step).toEqual([1]);
  });
});
