/**
 * Network faults between the coordinator and its workers, on a private network of this machine
 * (scripts/netns.ts): each worker runs in a network namespace of its own, and its link is cut for a
 * while in the middle of a run. Unlike a SIGKILL, a cut tells nobody: sockets stay open, TCP retransmits,
 * and only the step deadline and the heartbeats can tell a slow link from a dead one. Whatever happens,
 * the run must end with the parameters of a run on local threads.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { train, type TrainConfig, type TrainEvent } from '../src/index.js';
import { readMetrics } from '../src/report/metrics.js';
import { TestNetwork } from '../scripts/netns.js';
import { referenceHash } from './remote_helpers.js';

const cli = new URL('../dist/src/cli.js', import.meta.url).pathname;
const out = mkdtempSync(join(tmpdir(), 'dtrain-netfaults-'));
// 145 samples: 2 full batches and a short one an epoch; 3 epochs, 9 steps.
const BASE: Partial<TrainConfig> = { trainSamples: 145, testSamples: 100, epochs: 3, logEvery: 1000 };
/** Beyond loopback the coordinator requires a token (the workers read it from DTRAIN_TOKEN). */
const TOKEN = 'netfaults-token-of-16+-bytes';
/** The link of worker 0 goes down just before this step: a full batch of the first epoch, both workers in. */
const CUT_STEP = 1;

const unavailable = TestNetwork.unavailable();
if (unavailable) console.warn(`test/netfaults.test.ts is skipped: ${unavailable}`);

let net: TestNetwork | undefined;
// Also kills the workers, which run in the namespaces.
afterEach(() => net?.remove());

/** paramsSha256 of the same run on 2 local threads, computed once. */
const reference = referenceHash({ threads: 2, epochs: 3 }, 'reference3');

/** What a run showed: cluster events in order ("left worker 2 (10.77.x.2:port): reason"), worker output. */
interface Seen {
  events: string[];
  output: string[];
  /** Rows per participant, per epoch. */
  shares: Record<string, number>[];
}

function describeEvent(e: TrainEvent, seen: Seen): void {
  if (e.type === 'epoch') seen.shares.push(e.shares.rows);
  if (e.type !== 'cluster') return;
  const event = e.event;
  if (event.type === 'joined') seen.events.push(`joined ${event.worker}`);
  if (event.type === 'left') seen.events.push(`left ${event.worker}: ${event.reason}`);
  if (event.type === 'redo') seen.events.push(`redo rows ${event.rows.join('–')}: ${event.reason}`);
}

/** Starts a `dtrain worker` process in namespace i that reconnects for ever (--max-retries 0). */
function startWorker(network: TestNetwork, i: number, url: string, seen: Seen): void {
  const child = network.spawnIn(i, process.execPath, [cli, 'worker', '--connect', url, '--max-retries', '0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, DTRAIN_TOKEN: TOKEN },
  });
  const log = (data: Buffer) => seen.output.push(...String(data).trim().split('\n').map((line) => `[namespace ${i}] ${line}`));
  child.stdout!.on('data', log);
  child.stderr!.on('data', log);
}

/**
 * A --threads 0 coordinator listening on the network's address, with a worker in each of two namespaces;
 * step 0 waits for both (--min-workers 2), and `beforeStep` paces the run. Returns the summary, what was
 * seen, and the step records of metrics.jsonl.
 */
async function faultRun(config: Partial<TrainConfig>, name: string, beforeStep: (step: number, seen: Seen) => Promise<void> | void) {
  const network = (net = new TestNetwork(2));
  const seen: Seen = { events: [], output: [], shares: [] };
  const summary = await train(
    { ...BASE, threads: 0, minWorkers: 2, token: TOKEN, listen: `${network.address}:0`, out: join(out, name), ...config },
    {
      onListening: ({ port }) => [0, 1].forEach((i) => startWorker(network, i, `ws://${network.address}:${port}`, seen)),
      onEvent: (e) => describeEvent(e, seen),
      beforeStep: (step) => beforeStep(step, seen),
    },
  );
  const ms = readMetrics(summary.outDir!).flatMap((r) => (r.type === 'step' ? [r.ms] : []));
  return { summary, seen, ms, log: () => [...seen.events, ...seen.output].join('\n') };
}

/** Cuts worker i's link now and restores it `ms` later; the promise settles once it is restored. */
function cutFor(i: number, ms: number): Promise<void> {
  const network = net!;
  network.cut(i);
  return sleep(ms).then(() => network.restore(i));
}

/**
 * How long steps CUT_STEP and CUT_STEP + 1 took together (metrics.jsonl, ms per step, 0-based here). The
 * rows of a step are requested ahead, as soon as the step before is in: if worker 0 had answered those of
 * CUT_STEP before its link went down, the wait falls in the next step instead. Either way both start after
 * the cut, and the one that waited ends after the link is back.
 */
const aroundCut = (ms: number[]) => ms[CUT_STEP] + ms[CUT_STEP + 1];

describe.skipIf(!!unavailable)(`network faults, each worker in a network namespace${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  it('a link cut for less than the step deadline stalls the run for as long, drops nobody, and the result is unchanged', async () => {
    const CUT_MS = 1500;
    let restored = Promise.resolve();
    // The heartbeat too outlasts the cut and TCP's retransmission backoff after it: only the cut is tested.
    const run = await faultRun({ stepTimeoutMs: 6000, heartbeatMs: 5000 }, 'short-cut', (step) => {
      if (step === CUT_STEP) restored = cutFor(0, CUT_MS);
    });
    await restored;
    const { summary, seen, ms } = run;
    expect(seen.events.filter((e) => e.startsWith('left') && !e.endsWith('coordinator finished')), run.log()).toEqual([]);
    // The few ms the coordinator spends between the two steps are not in either.
    expect(aroundCut(ms), `ms per step: ${ms.map(Math.round)}`).toBeGreaterThanOrEqual(CUT_MS - 20);
    // And the wait is there, not elsewhere (step 0, which sends the workers the state, is left out).
    expect(Math.max(...ms.slice(1))).toBe(Math.max(ms[CUT_STEP], ms[CUT_STEP + 1]));
    expect(summary.paramsSha256).toBe(await reference());
  });

  it('a link cut for longer than the step deadline: the worker is dropped, the other redoes its rows, it rejoins, the result is unchanged', async () => {
    const CUT_MS = 3000;
    const STEP_TIMEOUT_MS = 1500;
    /** The step that waits for the cut worker to rejoin (or for 15 s): one of the second epoch. */
    const REJOIN_STEP = 4;
    let restored = Promise.resolve();
    // A heartbeat of 2000 ms drops a silent worker only 2-4 s into the cut: the step deadline comes first.
    const run = await faultRun({ stepTimeoutMs: STEP_TIMEOUT_MS, heartbeatMs: 2000 }, 'long-cut', async (step, seen) => {
      if (step === CUT_STEP) restored = cutFor(0, CUT_MS);
      // Once the link is back, the coordinator's close frame gets through (or the worker's watchdog gives up on
      // a silent coordinator) and the worker reconnects; the run holds here until it has.
      const until = performance.now() + 15_000;
      while (step === REJOIN_STEP && seen.events.filter((e) => e.startsWith('joined')).length < 3 && performance.now() < until) await sleep(50);
    });
    await restored;
    const { summary, seen, ms } = run;
    const cutAddress = net!.links[0].address;
    const left = seen.events.filter((e) => e.startsWith('left') && !e.endsWith('coordinator finished'));
    expect(left, run.log()).toEqual([expect.stringMatching(new RegExp(`^left worker \\d \\(${cutAddress}:\\d+\\): did not answer step \\d within ${STEP_TIMEOUT_MS} ms$`))]);
    expect(seen.events.some((e) => e.startsWith('redo rows')), run.log()).toBe(true);
    // The deadline runs from the request, which went out a little before its step started (see aroundCut).
    expect(aroundCut(ms), `ms per step: ${ms.map(Math.round)}`).toBeGreaterThanOrEqual(STEP_TIMEOUT_MS - 100);
    expect(seen.events.filter((e) => e.startsWith(`joined`) && e.includes(`(${cutAddress}:`)), run.log()).toHaveLength(2);
    // In the last epoch both workers computed rows again.
    expect(Object.keys(seen.shares[seen.shares.length - 1])).toHaveLength(2);
    expect(summary.paramsSha256).toBe(await reference());
  });
});
