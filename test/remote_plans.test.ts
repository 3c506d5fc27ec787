/**
 * The replica plans of a coordinator without rows of its own (replica_plan.ts): sharded, server, and `auto`
 * choosing among them by the cost model, each ending on the local threads' parameters. Kept together: they
 * move with the plan interface when it lands. ReplicaPlan's own unit tests: replica_plan.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { runWorker } from '../src/cluster/remote/client.js';
import type { RowsDone } from '../src/cluster/remote/messages.js';
import { readMetrics } from '../src/report/metrics.js';
import { coordinator, referenceHash } from './remote_helpers.js';

const reference = referenceHash({ threads: 2 }, 'reference');
const referenceOneEpoch = referenceHash({ threads: 2, epochs: 1 }, 'reference1');

describe('the sharded plan (--plan sharded)', () => {
  /** In-process workers with their hooks; `units` counts the sharded steps' units each started. */
  function workersOf(count: number, options: Partial<Parameters<typeof runWorker>[0]> = {}) {
    const abort = new AbortController();
    const units: number[] = Array.from({ length: count }, () => 0);
    const start = (url: string, i: number, extra: Partial<Parameters<typeof runWorker>[0]> = {}) =>
      void runWorker({ connect: url, signal: abort.signal, onUnits: () => units[i]++, ...options, ...extra });
    return { abort, units, start };
  }

  it('ends on the threads-only hash with 2, 3 and 4 remote workers, and with 2 worker threads each on their own copy of the data', async () => {
    const { loadDataset } = await import('../src/data/datasets.js');
    const dataset = loadDataset();
    for (const [count, extra] of [[2, {}], [3, {}], [4, {}], [2, { threads: 2, dataset }]] as const) {
      const { abort, units, start } = workersOf(count, extra);
      const summary = await coordinator({ threads: 0, plan: 'sharded', minWorkers: count }, (url) => {
        for (let i = 0; i < count; i++) start(url, i);
      });
      abort.abort();
      expect(summary.paramsSha256, `${count} workers ${JSON.stringify(Object.keys(extra))}`).toBe(await reference());
      // Every step was sharded among all of them: each started its units of each of the 6 steps.
      expect(units).toEqual(Array.from({ length: count }, () => 6));
    }
  });

  it('redoes the steps of an owner that stops in the middle of its units (replayed here), and ends on the same hash', async () => {
    const { abort, start } = workersOf(3);
    const quitter = new AbortController();
    const events: string[] = [];
    const summary = await coordinator(
      { threads: 0, plan: 'sharded', minWorkers: 3 },
      (url) => {
        start(url, 0);
        start(url, 1);
        start(url, 2, { signal: quitter.signal, onUnits: (step) => step === 4 && quitter.abort() });
      },
      (e) => e.type === 'cluster' && events.push(e.event.type),
    );
    abort.abort();
    expect(events).toContain('left');
    expect(events).toContain('replay');
    expect(summary.paramsSha256).toBe(await reference());
  });

  it('shares the units anew when a worker joins mid-run, and ends on the same hash', async () => {
    const { abort, units, start } = workersOf(3);
    let address = '';
    let joined = 0;
    let third = () => {};
    const summary = await coordinator(
      { threads: 0, plan: 'sharded', minWorkers: 2 },
      (url) => {
        address = url;
        start(url, 0);
        start(url, 1);
      },
      (e) => e.type === 'cluster' && e.event.type === 'joined' && ++joined === 3 && third(),
      async (step) => {
        if (step !== 4) return;
        const joinedNow = new Promise<void>((resolve) => (third = resolve));
        start(address, 2);
        await joinedNow;
      },
    );
    abort.abort();
    expect(units[2]).toBeGreaterThan(0);
    expect(units[0]).toBe(6);
    expect(summary.paramsSha256).toBe(await reference());
  });
});

describe('the server plan (--plan server)', () => {
  it('ends on the threads-only hash with 1, 3 and 4 remote workers, 2 worker threads each on their own copy of the data, and 2 coordinator threads, the weight pass here and the parameters sent back', async () => {
    const { loadDataset } = await import('../src/data/datasets.js');
    const dataset = loadDataset();
    // The last: the coordinator's two threads share the weight pass (and compute no rows).
    const runs = [[1, {}, 0], [3, {}, 0], [4, {}, 0], [2, { threads: 2, dataset }, 0], [2, {}, 2]] as const;
    for (const [count, extra, threads] of runs) {
      const abort = new AbortController();
      const steps: number[] = Array.from({ length: count }, () => 0);
      const shares: Record<string, number>[] = [];
      const summary = await coordinator({ threads, plan: 'server', minWorkers: count }, (url) => {
        for (let i = 0; i < count; i++) {
          void runWorker({
            connect: url,
            signal: abort.signal,
            ...extra,
            onEvent: (e) => e.type === 'step' && steps[i]++,
          });
        }
      }, (e) => e.type === 'epoch' && shares.push(e.shares.rows));
      abort.abort();
      const label = `${count} workers ${JSON.stringify(Object.keys(extra))}, ${threads} coordinator threads`;
      expect(shares.flatMap((s) => Object.keys(s)).filter((who) => !who.startsWith('worker')), label).toEqual([]);
      expect(summary.paramsSha256, label).toBe(await reference());
      expect(summary.plan, label).toBe('server');
      // Every worker committed the coordinator's parameters of each of the 6 steps.
      expect(steps, label).toEqual(Array.from({ length: count }, () => 6));
    }
  });
});

describe('the server plan asks for the next rows early', () => {
  it('sends step s+1\'s rows request with step s\'s parameters, before step s+1 begins, so the workers compute while the coordinator moves on', async () => {
    const abort = new AbortController();
    const answered = new Set<number>();
    let early = 0;
    const summary = await coordinator(
      { threads: 0, plan: 'server', minWorkers: 1, epochs: 1 },
      (url) => void runWorker({ connect: url, signal: abort.signal, tamperRows: (rows) => (answered.add(rows.step), rows) }),
      () => {},
      async (step) => {
        if (step === 0) return;
        // The coordinator waits here before step `step`: only a request sent early can be answered meanwhile.
        for (let waited = 0; waited < 2000 && !answered.has(step); waited += 10) await new Promise((r) => setTimeout(r, 10));
        if (answered.has(step)) early++;
      },
    );
    abort.abort();
    // Steps 1 and 2 of the epoch's 3 (the next batch of the last is not known before the epoch ends).
    expect(early).toBe(2);
    expect(summary.paramsSha256).toBe(await referenceOneEpoch());
  });
});

describe('--plan auto', () => {
  const reference7 = referenceHash({ threads: 2, epochs: 7 }, 'reference7');
  const reference8 = referenceHash({ threads: 2, epochs: 8 }, 'reference8');
  const reference11 = referenceHash({ threads: 2, epochs: 11 }, 'reference11');
  const reference12 = referenceHash({ threads: 2, epochs: 12 }, 'reference12');

  it('estimates the step of the plan a run takes within a factor of 3 of the measured one (a tiny configuration)', async () => {
    const abort = new AbortController();
    const summary = await coordinator({ threads: 0, epochs: 7, minWorkers: 2, plan: 'replicated' }, (url) => {
      for (let i = 0; i < 2; i++) void runWorker({ connect: url, signal: abort.signal });
    });
    abort.abort();
    const [first, judged] = summary.plans;
    expect([first.plan, first.reason]).toEqual(['replicated', 'as asked (--plan)']);
    // The byte's cost is calibrated from steps 2–13, and the estimate is checked against those same steps as
    // metrics.jsonl timed them: a later window can run at another speed when other test files load the machine
    // (one ran 4.6× faster than the steps before it in CI), which no estimate made before it can know.
    expect(judged.step).toBe(14);
    const estimate = judged.estimates.find((e) => e.plan === judged.plan)!.ms;
    const steps = readMetrics(summary.outDir!).flatMap((r) => (r.type === 'step' && r.step > 2 && r.step <= 14 ? [r.ms] : []));
    const measured = steps.sort((x, y) => x - y)[steps.length >> 1];
    expect(measured / estimate).toBeGreaterThan(1 / 3);
    expect(measured / estimate).toBeLessThan(3);
    expect(summary.paramsSha256).toBe(await reference7());
  });

  it('tries every row on one worker once the plan is judged, keeps what measured faster, and ends on the same result', async () => {
    const abort = new AbortController();
    const shares: Record<string, number>[] = [];
    const summary = await coordinator(
      { threads: 0, epochs: 11, minWorkers: 2 },
      (url) => {
        for (let i = 0; i < 2; i++) void runWorker({ connect: url, signal: abort.signal });
      },
      (e) => e.type === 'epoch' && shares.push(e.shares.rows),
    );
    abort.abort();
    expect(summary.plans.find((c) => c.rowsOnOne)?.reason).toBe('trial: every row of a step on the fastest worker, the others on standby');
    const trial = summary.plans.find((c) => c.reason.startsWith('measured: rows on one'))!;
    expect(trial.reason).toMatch(/^measured: rows on one worker [\d.]+ ms a step, shared [\d.]+ ms: (on one|shared)$/);
    // Steps 18–20 are in the trial: one worker computed every row of that epoch.
    expect(Object.keys(shares[6])).toHaveLength(1);
    expect(summary.paramsSha256).toBe(await reference11());
  });

  /** Blocks this process (the coordinator and the in-process workers alike) for `ms`: a worker slow in earnest. */
  const stall = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
  /** Reports its rows twice as slow as they were: the other worker is then the fastest, and gets most rows. */
  const slower = (rows: RowsDone): RowsDone => ({ ...rows, ms: rows.ms * 2 + 1 });

  it('keeps every row on one worker when the others slow the shared steps: they stand by and apply nothing, and when the one computing leaves they are sent the replayed state', async () => {
    const abort = new AbortController();
    const leader = new AbortController();
    const applied = [0, 0];
    const synced = [0, 0];
    const events: string[] = [];
    // The participants' states the steps recorded: the one set aside shows on standby, the leader dropped.
    const states = new Set<string>();
    const count = (i: number) => (e: { type: string }) => {
      if (e.type === 'step') applied[i]++;
      if (e.type === 'synced') synced[i]++;
    };
    const summary = await coordinator(
      { threads: 0, epochs: 12, minWorkers: 2 },
      (url) => {
        void runWorker({ connect: url, signal: leader.signal, onEvent: (e) => (count(0)(e), e.type === 'step' && e.step === 31 && leader.abort()) });
        // Each time it computes rows it holds every step that waits on them by 20 ms.
        void runWorker({ connect: url, signal: abort.signal, onEvent: count(1), tamperRows: (rows) => (stall(20), slower(rows)) });
      },
      (e) => {
        if (e.type === 'cluster') events.push(e.event.type === 'plan' ? `plan ${e.event.step}` : e.event.type);
        if (e.type === 'participants') for (const p of e.record.participants) states.add(p.state);
      },
      (step) => {
        // From the trial on (step 14; step 13 may still be applied then) until the one computing leaves, the slow worker applies no step.
        if (step === 16) applied[1] = 0;
        if (step === 31) expect(applied[1]).toBe(0);
      },
    );
    abort.abort();
    const kept = summary.plans.find((c) => c.reason.startsWith('measured: rows on one'))!;
    expect(kept.reason).toMatch(/: on one$/);
    expect(kept.rowsOnOne).toBe(true);
    // It was sent the state at its admission and again after the other left, from a replay here.
    expect(synced[1]).toBe(2);
    expect(events).toContain('left');
    expect(events).toContain('replay');
    expect([...states].sort()).toEqual(['computing', 'dropped', 'standby']);
    expect(summary.paramsSha256).toBe(await reference12());
  });

  it('sends the state again to the workers set aside when every row on one worker measured slower, and shares the rows again', async () => {
    const abort = new AbortController();
    const synced = [0, 0];
    const shares: Record<string, number>[] = [];
    const summary = await coordinator(
      { threads: 0, epochs: 11, minWorkers: 2 },
      (url) => {
        // Slow only when asked for a whole batch of 64 rows: only in the trial, whichever worker it runs on.
        const slowAlone = (rows: RowsDone) => (rows.range[1] - rows.range[0] >= 64 && stall(20), rows);
        for (let i = 0; i < 2; i++) void runWorker({ connect: url, signal: abort.signal, tamperRows: slowAlone, onEvent: (e) => e.type === 'synced' && synced[i]++ });
      },
      (e) => e.type === 'epoch' && shares.push(e.shares.rows),
    );
    abort.abort();
    const lost = summary.plans.find((c) => c.reason.startsWith('measured: rows on one'))!;
    expect(lost.reason).toMatch(/: shared$/);
    // The one set aside was sent the state again; the other only at its admission.
    expect(synced.sort()).toEqual([1, 2]);
    // No new trial after it: the last epochs' rows are shared.
    expect(summary.plans.filter((c) => c.rowsOnOne)).toHaveLength(1);
    expect(Object.keys(shares[shares.length - 1])).toHaveLength(2);
    expect(summary.paramsSha256).toBe(await reference11());
  });

  it('changes plan by the cost model, and plans again after a join and a death, without changing the result', async () => {
    // Workers that report their rows as slow make compute look dear and bytes cheap: the model then shards
    // (the coordinator, not measured yet, is assumed as slow as they are).
    const slow = (rows: RowsDone): RowsDone => ({ ...rows, ms: 1000 });
    const abort = new AbortController();
    const quitter = new AbortController();
    let address = '';
    const plans: string[] = [];
    const events: string[] = [];
    const summary = await coordinator(
      { threads: 0, epochs: 8, minWorkers: 2 },
      (url) => {
        address = url;
        void runWorker({ connect: url, signal: abort.signal, tamperRows: slow });
        void runWorker({ connect: url, signal: quitter.signal, tamperRows: slow, onUnits: (step) => step === 21 && quitter.abort() });
      },
      (e) => {
        if (e.type !== 'cluster') return;
        events.push(e.event.type);
        if (e.event.type === 'plan') plans.push(`${e.event.step}: ${e.event.plan}`);
      },
      (step) => {
        if (step === 17) void runWorker({ connect: address, signal: abort.signal, tamperRows: slow });
      },
    );
    abort.abort();
    console.log(JSON.stringify(summary.plans, null, 1));
    expect(plans[0]).toBe('0: replicated');
    expect(plans[1]).toBe('14: sharded');
    expect(events.filter((e) => e === 'joined')).toHaveLength(3);
    expect(events).toContain('left');
    expect(events).toContain('replay');
    const choices = summary.plans;
    expect(choices[1].estimates.map((e) => e.plan)).toEqual(['sharded', 'server', 'replicated']);
    expect(choices[1].measuredMs).toBeGreaterThan(0);
    // The owner's death made the coordinator replay, which measured its own weight pass: far faster than the
    // workers claim their rows are, so the parameter server is now the cheapest plan.
    const last = choices[choices.length - 1];
    expect([last.plan, last.reason, last.estimates[0].plan]).toEqual(['server', 'the cost model, as the workers changed', 'server']);
    expect(summary.plan).toBe('server');
    expect(summary.paramsSha256).toBe(await reference8());
  });
});
