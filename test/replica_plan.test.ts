/**
 * ReplicaPlan (src/cluster/replica_plan.ts): which plan the members run, who owns which units of a sharded
 * step, when the state must be sent again, and the cost model's judgment, driven through the members it
 * asks things of (PlanMembers), with peers on real loopback connections; `auto` on a fake clock, for what
 * the plan does with AutoJudge's verdicts (the rule itself: auto_judge.test.ts). Whole runs of each plan:
 * remote_plans.test.ts.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { RemotePlan, StepPlan } from '../src/config.js';
import type { Range } from '../src/cluster/plan.js';
import type { RemotePeer } from '../src/cluster/remote/peer.js';
import type { ReplicaState, SliceMessage } from '../src/cluster/remote/messages.js';
import { ReplicaPlan, type PlanChoice, type PlanMembers } from '../src/cluster/replica_plan.js';
import { createTrainingMemory } from '../src/cluster/training_memory.js';
import { packSlice } from '../src/cluster/unit_slices.js';
import { makeSpec, paramLayout } from '../src/model/spec.js';
import { loopbackPeers, membersWith, syntheticDataset, zeroSnapshot } from './helpers.js';

/** A 4→6→2 model: 6 units in the hidden layer, 2 in the output layer. */
const spec = makeSpec(4, [6], 2, 'sigmoid');
const memory = createTrainingMemory(spec, syntheticDataset(8, 4, 4, 2), 8, 1);
const total = paramLayout(spec).total;

const open: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of open.splice(0)) await close();
});

/**
 * A plan as asked, over `count` peers of the given speeds (status as given, ready by default), and members
 * that change their status as the hub does; what they were asked is recorded.
 */
async function planOver(asked: StepPlan, speeds: number[], status: RemotePeer['status'] = 'ready', now?: () => number) {
  const { peers, close } = await loopbackPeers(speeds.length);
  open.push(close);
  peers.forEach((p, i) => Object.assign(p, { speed: speeds[i], status }));
  const admitted: (RemotePlan | undefined)[] = [];
  const owners: Map<RemotePeer, Range[]>[] = [];
  const fetched: [number, number, Range[] | undefined][] = [];
  let slices: (step: number, owners: ReadonlyMap<RemotePeer, Range[]>) => Promise<SliceMessage>[] = () => [];
  let states: (peer: RemotePeer, step: number, units?: Range[]) => Promise<ReplicaState> = () => Promise.reject(new Error('no state'));
  const members: PlanMembers = membersWith({
    ready: () => peers.filter((p) => p.status === 'ready'),
    standby: () => peers.filter((p) => p.status === 'standby'),
    joining: () => peers.filter((p) => p.status === 'joining'),
    admit: (_snapshot, plan) => {
      admitted.push(plan);
      for (const p of peers) if (p.status === 'joining') p.status = 'ready';
    },
    resync: (p) => void ((p.status === 'ready' || p.status === 'standby') && (p.status = 'joining')),
    park: (p) => void (p.status === 'ready' && (p.status = 'standby')),
    requestSlices: (step, _batch, given) => (owners.push(new Map(given)), slices(step, given)),
    fetchState: (peer, step, units) => (fetched.push([peer.id, step, units]), states(peer, step, units)),
  });
  const told: PlanChoice[] = [];
  const plan = new ReplicaPlan(members, spec, memory.batchSize, asked, (c) => told.push(c), false, now);
  return {
    plan, peers, admitted, owners, fetched, told,
    answerSlices: (f: typeof slices) => void (slices = f),
    answerStates: (f: typeof states) => void (states = f),
  };
}

/** Every unit of each layer owned exactly once, in one contiguous range per owner. */
function expectPartition(shares: Range[][]): void {
  [6, 2].forEach((units, l) => {
    const ranges = shares.map((s) => s[l]).sort((a, b) => a[0] - b[0]);
    expect(ranges[0][0]).toBe(0);
    ranges.forEach((r, i) => i > 0 && expect(r[0]).toBe(ranges[i - 1][1]));
    expect(ranges[ranges.length - 1][1]).toBe(units);
  });
}

describe('ReplicaPlan', () => {
  it('as asked (--plan sharded), shares every layer\'s units among the members by their speed, and asks each owner for its units', async () => {
    const { plan, peers, admitted, owners, told } = await planOver('sharded', [3, 1], 'joining');
    await plan.admit(zeroSnapshot(memory, 0));
    expect(admitted).toEqual(['sharded']);
    expect([plan.current, plan.active, plan.stale, plan.serving]).toEqual(['sharded', true, false, false]);
    expect(told).toEqual([{ step: 0, plan: 'sharded', reason: 'as asked (--plan)', estimates: [] }]);
    plan.request(0, 8);
    expect(await plan.settle()).toBe(true);
    const [fast, slow] = peers.map((p) => owners[0].get(p)!);
    expectPartition([fast, slow]);
    // The faster member owns more of the hidden layer's units.
    expect(fast[0][1] - fast[0][0]).toBeGreaterThan(slow[0][1] - slow[0][0]);
  });

  it('runs a sole member of a sharded run as a replicated replica: there is nobody to share the units with', async () => {
    const { plan, admitted } = await planOver('sharded', [1], 'joining');
    await plan.admit(zeroSnapshot(memory, 0));
    expect(admitted).toEqual(['replicated']);
    expect([plan.current, plan.active]).toEqual(['sharded', false]);
  });

  it('puts the state of a sharded step together from every owner\'s shard', async () => {
    const { plan, peers, fetched, answerStates } = await planOver('sharded', [1, 1], 'joining');
    await plan.admit(zeroSnapshot(memory, 0));
    const full = (k: number) => Float32Array.from({ length: total }, (_, i) => k * (i + 1));
    answerStates(async (_peer, step, units) => ({ t: 'replicaState', step, params: packSlice(spec, full(1), units!), m: packSlice(spec, full(2), units!), v: packSlice(spec, full(3), units!) }));
    const state = await plan.gather(4);
    expect(state).toEqual({ params: full(1), m: full(2), v: full(3) });
    expect(fetched.map(([id, step]) => [id, step])).toEqual(peers.map((p) => [p.id, 4]));
    expectPartition(fetched.map(([, , units]) => units!));
  });

  it('tears the step when a slice is lost: the state must be sent again, and no state is gathered from the owners', async () => {
    const { plan, fetched, answerSlices } = await planOver('sharded', [1, 1], 'joining');
    await plan.admit(zeroSnapshot(memory, 0));
    answerSlices((step, owners) => [...owners].map(([, units], i) => (i === 0 ? Promise.resolve({ t: 'slice', step, units, params: new Float32Array(0) }) : Promise.reject(new Error('worker 2 left')))));
    plan.request(0, 8);
    expect(await plan.settle()).toBe(false);
    expect(plan.stale).toBe(true);
    expect(await plan.gather(1)).toBeUndefined();
    expect(fetched).toEqual([]);
    // Sent the state again, the owners hold it together anew.
    await plan.admit(zeroSnapshot(memory, 1));
    expect(plan.stale).toBe(false);
  });

  it('is stale when an owner leaves, until the rest are admitted again (a sole one as a replicated replica)', async () => {
    const { plan, peers, admitted } = await planOver('sharded', [1, 1], 'joining');
    await plan.admit(zeroSnapshot(memory, 0));
    peers[1].status = 'closed';
    expect(plan.stale).toBe(true);
    expect(await plan.gather(1)).toBeUndefined();
    await plan.admit(zeroSnapshot(memory, 1));
    expect([plan.stale, plan.active]).toEqual([false, false]);
    expect(admitted).toEqual(['sharded', 'replicated']);
  });

  it('as asked (--plan server), serves: the members are told so with the state', async () => {
    const { plan, admitted } = await planOver('server', [1, 1], 'joining');
    await plan.admit(zeroSnapshot(memory, 0));
    expect([plan.current, plan.serving, plan.active]).toEqual(['server', true, false]);
    expect(admitted).toEqual(['server']);
  });

  it('with auto, runs replicated until the members are measured, and says so', async () => {
    const { plan, admitted, told } = await planOver('auto', [0, 0], 'joining');
    await plan.admit(zeroSnapshot(memory, 0));
    expect(admitted).toEqual(['replicated']);
    expect(told).toEqual([{ step: 0, plan: 'replicated', reason: 'auto: until the workers are measured', estimates: [] }]);
  });

  it('records the cost model\'s estimates of every plan once 2 settling and 12 timed steps have passed, and times again from a change of members', async () => {
    const { plan, peers, told } = await planOver('replicated', [1, 1, 1]);
    peers[2].status = 'joining';
    for (let step = 0; step < 10; step++) plan.beginStep(step);
    // A third member: what was timed held for the two.
    peers[2].status = 'ready';
    for (let step = 10; step < 24; step++) plan.beginStep(step);
    expect(told).toEqual([]);
    plan.beginStep(24);
    expect(told).toHaveLength(1);
    expect(told[0]).toMatchObject({ step: 24, plan: 'replicated', reason: "as asked (--plan); the cost model's estimates" });
    expect(told[0].estimates.map((e) => e.plan).sort()).toEqual(['replicated', 'server', 'sharded']);
    // Judged once for these members.
    for (let step = 25; step < 60; step++) plan.beginStep(step);
    expect(told).toHaveLength(1);
  });

  /** `auto` over peers of these speeds, ready, on a clock that moves by the given ms after each step begins. */
  async function autoOnClock(speeds: number[]) {
    let clock = 0;
    const over = await planOver('auto', speeds, 'ready', () => clock);
    let step = 0;
    const steps = (count: number, ms: number) => {
      for (let i = 0; i < count; i++, clock += ms) over.plan.beginStep(step++);
    };
    return { ...over, steps };
  }

  it('with auto, takes the plan the judge chose at the next admission: due (stale) until then, every member sent the state', async () => {
    // At 50 ms a step (compute only, by the model) sharing the weight pass is far cheaper.
    const { plan, admitted, told, steps } = await autoOnClock([1, 1]);
    steps(15, 50);
    expect(told.map((c) => [c.step, c.plan])).toEqual([[14, 'sharded']]);
    expect([plan.current, plan.stale]).toEqual(['replicated', true]);
    await plan.admit(zeroSnapshot(memory, 15));
    expect(admitted).toEqual(['sharded']);
    expect([plan.current, plan.active, plan.stale]).toEqual(['sharded', true, false]);
  });

  it('with auto, sets every member but the fastest on standby for the trial, and wakes them when it loses', async () => {
    // At 1000 ms a step bytes dominate: replicated is kept, and the rows are tried on the faster, peer 2.
    const { plan, peers, admitted, told, steps } = await autoOnClock([1, 2]);
    steps(15, 1000);
    expect(told.map((c) => c.reason)).toEqual(['the cost model, from the measured workers: kept', 'trial: every row of a step on the fastest worker, the others on standby']);
    expect(peers.map((p) => p.status)).toEqual(['standby', 'ready']);
    expect(plan.stale).toBe(false);
    // 950 ms on one against 1000 shared: not 10 % faster.
    steps(15, 950);
    expect(told.at(-1)!.reason).toBe('measured: rows on one worker 950.0 ms a step, shared 1000.0 ms: shared');
    expect(peers.map((p) => p.status)).toEqual(['joining', 'ready']);
    // Back with the same members, judged already: admitted as they were, nothing chosen anew.
    await plan.admit(zeroSnapshot(memory, 30));
    expect(admitted).toEqual(['replicated']);
    expect(told).toHaveLength(3);
    steps(40, 1000);
    expect(told).toHaveLength(3);
  });

  it('times nothing with one member (it has no plan to choose)', async () => {
    const { plan, told } = await planOver('auto', [1]);
    for (let step = 0; step < 40; step++) plan.beginStep(step);
    expect(told).toEqual([]);
  });
});
