/**
 * `--plan auto`'s decision rule (src/cluster/auto_judge.ts) on a fake clock: when it judges, by what median,
 * what it chooses and when, the rows-on-one trial, and the timing starting over when the members change. No
 * runs, no workers: the steps' times are what the clock says. ReplicaPlan's acting on the verdicts:
 * replica_plan.test.ts; whole auto runs: remote_plans.test.ts "--plan auto".
 */
import { describe, expect, it } from 'vitest';
import type { StepPlan } from '../src/config.js';
import {
  AutoJudge,
  bestOther,
  medianStep,
  rowsOnOneWins,
  worthChanging,
  REPLAN_GAIN,
  SETTLING_STEPS,
  TIMED_STEPS,
  type JudgedMember,
  type Verdict,
} from '../src/cluster/auto_judge.js';
import type { PlanEstimate } from '../src/cluster/cost_model.js';
import { makeSpec } from '../src/model/spec.js';

/**
 * A 4→64→2 model at batch 8, rows travelling full, two members of 1 row a ms: its replicated step computes
 * ~67 ms by the cost model. Measured at 50 ms a step (no wire to speak of) the model finds sharded (~36 ms)
 * far cheaper; at 200 ms the cheapest other is server, by under 5 % (not worth a change).
 */
const spec = makeSpec(4, [64], 2, 'sigmoid');
const BATCH = 8;
const context = () => ({ compact: false });
const two: JudgedMember[] = [
  { id: 1, speed: 1 },
  { id: 2, speed: 1 },
];
/** Steps from one admission to its judgment: the settling ones, then one more start than timed intervals. */
const UNTIL_JUDGED = SETTLING_STEPS + TIMED_STEPS + 1;

/** A judge on a clock that moves only when told; `steps` runs row passes of the given durations. */
function judgeOn(asked: StepPlan = 'auto') {
  let clock = 0;
  const judge = new AutoJudge(spec, BATCH, asked, () => clock);
  let step = 0;
  /** Begins one step per duration (the clock advancing by each after its start); every verdict, in order. */
  const steps = (durations: number[], plan: 'replicated' | 'sharded' | 'server' = 'replicated', members = two): Verdict[] =>
    durations.map((ms) => {
      const verdict = judge.beginStep(step++, plan, members, context);
      clock += ms;
      return verdict;
    });
  return { judge, steps, step: () => step };
}

const same = (count: number, ms: number) => Array<number>(count).fill(ms);
const chosen = (verdicts: Verdict[]) => verdicts.flatMap((v) => [...v.choices, ...(v.startTrial ? [v.startTrial] : [])]);

describe('medianStep', () => {
  it('leaves the settling starts out and takes the median interval, so that an outlier step does not count', () => {
    // Two slow settling steps, then 12 intervals of 10 ms with one of 900 (an epoch's end) among them.
    const starts = [0, 5000, 10_000];
    for (let i = 0; i < 12; i++) starts.push(starts[starts.length - 1] + (i === 5 ? 900 : 10));
    expect(medianStep(starts)).toBe(10);
  });

  it('takes the upper of the two middle intervals of an even count', () => {
    // Intervals 1, 2, 3, 4 after two settling starts.
    expect(medianStep([0, 0, 0, 1, 3, 6, 10])).toBe(3);
  });
});

describe('the choice rules', () => {
  const estimate = (plan: PlanEstimate['plan'], ms: number): PlanEstimate => ({ plan, ms, computeMs: ms, wireMs: 0 });
  const estimates = [estimate('sharded', 89), estimate('replicated', 100), estimate('server', 95)];

  it('changes plan only for a gain above REPLAN_GAIN', () => {
    expect(REPLAN_GAIN).toBe(0.1);
    expect(worthChanging(0.9)).toBe(false);
    expect(worthChanging(0.899)).toBe(true);
  });

  it('compares another plan by the model\'s estimates, unless both were measured with these members', () => {
    expect(bestOther(estimates, 'replicated', new Map())).toEqual({ plan: 'sharded', ratio: 0.89, measuredMs: undefined });
    // Sharded was measured at 120 ms against replicated's 100: its flattering estimate is not taken again.
    const measured = new Map([['sharded', 120] as const]);
    expect(bestOther(estimates, 'replicated', measured, 100)).toEqual({ plan: 'server', ratio: 0.95, measuredMs: undefined });
  });

  it('keeps the rows on one member only when that measured faster by more than REPLAN_GAIN', () => {
    expect(rowsOnOneWins(89, 100)).toBe(true);
    expect(rowsOnOneWins(90, 100)).toBe(false);
    expect(rowsOnOneWins(120, 100)).toBe(false);
  });
});

describe('AutoJudge', () => {
  it('judges nothing before the settling and timed steps have passed, and judges once for the same members', () => {
    const { steps, step } = judgeOn();
    expect(chosen(steps(same(UNTIL_JUDGED - 1, 200)))).toEqual([]);
    const [judged] = steps([200]);
    expect(step() - 1).toBe(UNTIL_JUDGED - 1);
    expect(judged.choices).toHaveLength(1);
    expect(judged.choices[0]).toMatchObject({ step: UNTIL_JUDGED - 1, plan: 'replicated' });
  });

  it('times nothing with one member, nor while a member is not measured yet', () => {
    const one = judgeOn();
    expect(chosen(one.steps(same(40, 200), 'replicated', [{ id: 1, speed: 1 }]))).toEqual([]);
    const unmeasured = judgeOn();
    const verdicts = unmeasured.steps(same(40, 200), 'replicated', [{ id: 1, speed: 1 }, { id: 2, speed: 0 }]);
    expect(chosen(verdicts)).toEqual([]);
    expect(unmeasured.judge.calibrated).toBe(false);
  });

  it('calibrates a byte\'s cost by the median step: the settling steps and an outlier leave the estimates as they were', () => {
    const clean = judgeOn();
    const [cleanJudged] = clean.steps(same(UNTIL_JUDGED, 200)).slice(-1);
    const noisy = judgeOn();
    const durations = same(UNTIL_JUDGED, 200);
    durations[0] = durations[1] = 10_000;
    durations[7] = 5000;
    const [noisyJudged] = noisy.steps(durations).slice(-1);
    // The replicated estimate meets the measured median by calibration: 200 ms, whatever the outliers.
    expect(noisyJudged.choices[0].estimates.find((e) => e.plan === 'replicated')!.ms).toBeCloseTo(200, 6);
    expect(noisyJudged.choices[0].estimates).toEqual(cleanJudged.choices[0].estimates);
  });

  it('with a fixed plan, records the estimates once and changes nothing', () => {
    const { steps } = judgeOn('replicated');
    const verdicts = steps(same(60, 50));
    const choices = chosen(verdicts);
    expect(choices).toHaveLength(1);
    expect(choices[0].reason).toBe("as asked (--plan); the cost model's estimates");
    expect(verdicts.some((v) => v.replan || v.startTrial)).toBe(false);
  });

  it('takes the cheapest plan when it promises more than REPLAN_GAIN, and no trial then', () => {
    const { steps } = judgeOn();
    const judged = steps(same(UNTIL_JUDGED, 50)).at(-1)!;
    expect(judged.replan).toBe('sharded');
    expect(judged.startTrial).toBeUndefined();
    expect(judged.choices).toEqual([expect.objectContaining({ plan: 'sharded', reason: 'the cost model, from the measured workers' })]);
    const [best, current] = ['sharded', 'replicated'].map((p) => judged.choices[0].estimates.find((e) => e.plan === p)!.ms);
    expect(best / current).toBeLessThan(1 - REPLAN_GAIN);
  });

  it('keeps the plan when the cheapest other promises less than REPLAN_GAIN, and then tries the rows on one member', () => {
    const { steps } = judgeOn();
    const judged = steps(same(UNTIL_JUDGED, 200)).at(-1)!;
    const [cheapest, current] = [judged.choices[0].estimates[0], judged.choices[0].estimates.find((e) => e.plan === 'replicated')!];
    expect(cheapest.plan).toBe('server');
    expect(cheapest.ms / current.ms).toBeGreaterThan(1 - REPLAN_GAIN);
    expect(cheapest.ms).toBeLessThan(current.ms);
    expect(judged.replan).toBeUndefined();
    expect(judged.choices).toEqual([expect.objectContaining({ plan: 'replicated', reason: 'the cost model, from the measured workers: kept' })]);
    expect(judged.startTrial).toMatchObject({ plan: 'replicated', rowsOnOne: true, reason: 'trial: every row of a step on the fastest worker, the others on standby' });
  });

  it('keeps the trial when the rows on one measured more than 10 % faster than shared', () => {
    const { steps } = judgeOn();
    steps(same(UNTIL_JUDGED, 200));
    // The trial is timed as an admission is: settling steps first (slow here), then the timed window.
    const trial = [5000, 5000, ...same(UNTIL_JUDGED - 2, 170)];
    const verdicts = steps(trial);
    expect(chosen(verdicts.slice(0, -1))).toEqual([]);
    const ended = verdicts.at(-1)!;
    expect(ended.choices).toEqual([
      expect.objectContaining({ plan: 'replicated', rowsOnOne: true, reason: 'measured: rows on one worker 170.0 ms a step, shared 200.0 ms: on one' }),
    ]);
    expect(ended.wakeStandby).toBe(false);
    // Judged and tried with these members: nothing more until they change.
    expect(chosen(steps(same(60, 100)))).toEqual([]);
  });

  it('loses the trial at 10 % faster or less: the members on standby join again, and the same members coming back are not judged anew', () => {
    const { judge, steps } = judgeOn();
    steps(same(UNTIL_JUDGED, 200));
    expect(judge.returningFromTrial(two)).toBe(false);
    const ended = steps(same(UNTIL_JUDGED, 180)).at(-1)!;
    expect(ended.choices).toEqual([expect.objectContaining({ rowsOnOne: false, reason: 'measured: rows on one worker 180.0 ms a step, shared 200.0 ms: shared' })]);
    expect(ended.wakeStandby).toBe(true);
    expect(judge.returningFromTrial(two)).toBe(true);
    expect(judge.returningFromTrial([...two, { id: 3, speed: 1 }])).toBe(false);
  });

  it('starts the timing over when a member leaves mid-window, and asks for those on standby back', () => {
    const three = [...two, { id: 3, speed: 1 }];
    const { steps } = judgeOn();
    expect(chosen(steps(same(UNTIL_JUDGED - 1, 200), 'replicated', three))).toEqual([]);
    // Member 3 leaves (no admission: the replicated plan needs none).
    const [left, ...rest] = steps(same(UNTIL_JUDGED, 200), 'replicated', two);
    expect(left.wakeStandby).toBe(true);
    expect(rest.slice(0, -1).every((v) => v.choices.length === 0 && !v.wakeStandby)).toBe(true);
    expect(rest.at(-1)!.choices).toHaveLength(1);
    // The same members in another order are the same members.
    expect(steps([200], 'replicated', [...two].reverse())[0].wakeStandby).toBe(false);
  });

  it('starts the timing over at an admission, and keeps a measured plan\'s step across a change of plan alone', () => {
    const { judge, steps } = judgeOn();
    expect(steps(same(UNTIL_JUDGED, 50)).at(-1)!.replan).toBe('sharded');
    // Admitted under sharded with the same members (ReplicaPlan keeps the measurements for a change of plan).
    judge.restart(two);
    expect(chosen(steps(same(UNTIL_JUDGED - 1, 300), 'sharded'))).toEqual([]);
    const judged = steps([300], 'sharded').at(-1)!;
    // Sharded measured 300 ms against replicated's 50: back, by the measurements rather than the model.
    expect(judged.replan).toBe('replicated');
    expect(judged.choices[0].reason).toBe('measured: replicated 50.0 ms a step, sharded 300.0 ms');
  });

  it('forgets what was measured when the members change: the model alone judges again', () => {
    const { judge, steps } = judgeOn();
    steps(same(UNTIL_JUDGED, 50));
    judge.restart(two);
    steps(same(3, 300), 'sharded');
    const others = [{ id: 1, speed: 1 }, { id: 4, speed: 1 }];
    const judged = steps(same(UNTIL_JUDGED, 300), 'sharded', others).at(-1)!;
    expect(judged.choices[0].reason).toMatch(/^the cost model, from the measured workers/);
  });

  it('at an admission, offers a cheaper plan only once calibrated and with two or more members', () => {
    const { judge, steps } = judgeOn();
    expect(judge.cheaperAtAdmission(0, 'replicated', two, context)).toBeUndefined();
    // Judged at 200 ms: nothing promises 10 %.
    steps(same(UNTIL_JUDGED, 200));
    expect(judge.calibrated).toBe(true);
    expect(judge.cheaperAtAdmission(20, 'replicated', two, context)).toBeUndefined();
    expect(judge.cheaperAtAdmission(20, 'replicated', [two[0]], context)).toBeUndefined();
    // Four members of the same speed at the same byte's cost: the weight pass split four ways pays.
    const four = [...two, { id: 3, speed: 1 }, { id: 4, speed: 1 }];
    expect(judge.cheaperAtAdmission(20, 'replicated', four, context)).toMatchObject({ step: 20, reason: 'the cost model, as the workers changed' });
  });
});
