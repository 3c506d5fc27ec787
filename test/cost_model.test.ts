/**
 * The cost model behind --plan auto (src/cluster/cost_model.ts): its estimates move the way the costs do,
 * and in a real run they come within a stated factor of the measured step.
 */
import { describe, expect, it } from 'vitest';
import { byteCost, coordinatorBytes, estimatePlans, stepSizes } from '../src/cluster/cost_model.js';
import { makeSpec } from '../src/model/spec.js';

const big = makeSpec(784, [2048, 2048], 10, 'sigmoid');
const tutorial = makeSpec(784, [512, 256, 128, 64], 10, 'sigmoid');
const member = (rowsPerMs: number) => ({ rowsPerMs });
const byPlan = (estimates: ReturnType<typeof estimatePlans>) => Object.fromEntries(estimates.map((e) => [e.plan, e.ms]));

describe('the cost model', () => {
  it('counts the FLOPs and bytes of a step', () => {
    const s = stepSizes(makeSpec(4, [3], 2, 'relu'), 10);
    // MACs 4·3 + 3·2 = 18: forward 36, backward to the hidden delta 2·6 = 12.
    expect(s.rowFlops).toBe(48);
    expect(s.rebuildFlops).toBe(12);
    expect(s.parameters).toBe(4 * 3 + 3 + 3 * 2 + 2);
    expect(s.weightFlops).toBe(2 * 10 * 18 + 130 * 23);
    expect([s.compactRowBytes, s.fullRowBytes]).toEqual([4 * (3 + 2), 4 * (3 + 3 + 2)]);
  });

  it('prefers replicated when bytes are dear and sharded when compute is, and sharding more helps only the latter', () => {
    const dearWire = byPlan(estimatePlans(big, 512, [member(6), member(6)], 1e-5));
    expect(dearWire.replicated).toBeLessThan(dearWire.sharded);
    const cheapWire = byPlan(estimatePlans(big, 4096, [member(6), member(6)], 1e-9));
    expect(cheapWire.sharded).toBeLessThan(cheapWire.replicated);
    const four = byPlan(estimatePlans(big, 4096, [1, 2, 3, 4].map(() => member(6)), 1e-9));
    expect(four.sharded).toBeLessThan(cheapWire.sharded);
    expect(four.replicated / cheapWire.replicated).toBeGreaterThan(0.8);
  });

  it('gives a slower member a smaller share: the step is bounded by the slowest member\'s own share', () => {
    const even = estimatePlans(tutorial, 64, [member(20), member(20)], 1e-7)[0];
    const uneven = estimatePlans(tutorial, 64, [member(20), member(10)], 1e-7)[0];
    expect(uneven.ms).toBeGreaterThan(even.ms);
    expect(uneven.ms).toBeLessThan(2 * even.ms);
  });

  it('prices replicated rows in full, with nothing to rebuild, when the engine cannot rebuild them (tfjs)', () => {
    const replicated = (compact: boolean) => estimatePlans(big, 512, [member(6), member(6)], 1e-6, { compact }).find((e) => e.plan === 'replicated')!;
    expect(replicated(false).computeMs).toBeLessThan(replicated(true).computeMs);
    expect(replicated(false).wireMs).toBeGreaterThan(replicated(true).wireMs);
  });

  it('prefers the parameter server for a coordinator much faster than its members, and prices its weight pass and fan-out', () => {
    const members = [member(6), member(6)];
    const same = byPlan(estimatePlans(big, 512, members, 1e-7));
    const strong = byPlan(estimatePlans(big, 512, members, 1e-7, { coordinator: member(60) }));
    // As fast as a member, it does the whole weight pass alone after the rows: dearer than sharing it.
    expect(same.server).toBeGreaterThan(same.sharded);
    // Ten times faster (a GPU coordinator, CPU workers): its weight pass is the cheap part.
    expect(strong.server).toBeLessThan(Math.min(strong.sharded, strong.replicated));
    expect(same.server - strong.server).toBeCloseTo((stepSizes(big, 512).weightFlops / stepSizes(big, 512).rowFlops) * (1 / 6 - 1 / 60), 6);
    // Every member is sent every parameter: the coordinator's link carries N times the model, after its
    // weight pass, so on a real link (the star's cost per byte given) that time adds to the step.
    expect(coordinatorBytes(big, 512, 8, 'server')).toBe(8 * 4 * stepSizes(big, 512).parameters);
    const eight = Array.from({ length: 8 }, () => member(6));
    const perByte = 8e-8;
    const onLink = estimatePlans(big, 512, eight, perByte, { starMsPerByte: perByte, coordinator: member(60) }).find((e) => e.plan === 'server')!;
    const noStar = estimatePlans(big, 512, eight, perByte, { coordinator: member(60) }).find((e) => e.plan === 'server')!;
    expect(onLink.ms - noStar.ms).toBeCloseTo(7 * 4 * stepSizes(big, 512).parameters * perByte, 6);
  });

  it('calibrates a byte\'s cost so that the running plan\'s estimate meets its measured step', () => {
    const members = [member(6), member(5)];
    const perByte = byteCost(big, 512, members, 'replicated', 300);
    const replicated = estimatePlans(big, 512, members, perByte).find((e) => e.plan === 'replicated')!;
    expect(replicated.ms).toBeCloseTo(300, 6);
    // The same for the server plan, whose estimate holds the coordinator's weight pass too.
    const coordinator = member(9);
    const serverByte = byteCost(big, 512, members, 'server', 300, { coordinator });
    expect(estimatePlans(big, 512, members, serverByte, { coordinator }).find((e) => e.plan === 'server')!.ms).toBeCloseTo(300, 6);
    // A step faster than the compute alone leaves bytes (nearly) free, never negative.
    expect(byteCost(big, 512, members, 'replicated', 1)).toBeGreaterThan(0);
  });
});

describe('npm run plans', () => {
  it('predicts every model, link and machine count, and the star saturating as machines are added on a slow link', async () => {
    const { predictions } = await import('../scripts/plans.js');
    const rows = predictions(100);
    expect(rows).toHaveLength(3 * 3 * 6);
    const busy = (row: string) => Number(/\| (\d+) % \|$/.exec(row)![1]);
    const slow = rows.filter((r) => r.startsWith('| tutorial MLP, batch 64 | 1 Gbit/s |'));
    expect(busy(slow[slow.length - 1])).toBe(100);
    expect(busy(slow[0])).toBeLessThan(100);
  });
});

describe('the sharded plan between peers (context.direct)', () => {
  it('takes the rows and slices off the coordinator\'s link, and prices each member\'s mesh sends', () => {
    const { parameters, fullRowBytes } = stepSizes(big, 512);
    const everyone = 512 * fullRowBytes + 4 * parameters;
    // Through the star the coordinator sends each member what it did not compute or own; between peers, only indices.
    expect(coordinatorBytes(big, 512, 4, 'sharded')).toBe(3 * everyone);
    expect(coordinatorBytes(big, 512, 4, 'sharded', true, true)).toBe(4 * 4 * 512);
    // Four equal members: each sends its quarter to three others and takes three quarters in.
    const members = [1, 1, 1, 1].map(member);
    const msPerByte = 1e-6;
    const relay = estimatePlans(big, 512, members, msPerByte).find((e) => e.plan === 'sharded')!;
    const direct = estimatePlans(big, 512, members, msPerByte, { direct: true }).find((e) => e.plan === 'sharded')!;
    expect(direct.wireMs).toBeCloseTo(1.5 * relay.wireMs, 6);
    expect(direct.computeMs).toBe(relay.computeMs);
    // On a real link of the coordinator's, eight fast members: the star (7 × everything) capped the step, the mesh does not.
    const eight = Array.from({ length: 8 }, () => member(1000));
    const star = { starMsPerByte: msPerByte };
    const starred = estimatePlans(big, 512, eight, msPerByte, star).find((e) => e.plan === 'sharded')!;
    const meshed = estimatePlans(big, 512, eight, msPerByte, { ...star, direct: true }).find((e) => e.plan === 'sharded')!;
    expect(starred.ms).toBeCloseTo(7 * everyone * msPerByte, 6);
    expect(meshed.ms).toBeLessThan(starred.ms / 3);
  });
});
