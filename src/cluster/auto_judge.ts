/**
 * `--plan auto`'s decision rule, apart from the members it acts on (replica_plan.ts does what it decides):
 *
 * - when to judge: a row pass's start is taken (from the injected clock) at every step once two or more
 *   members are measured; the first SETTLING_STEPS after an admission are left out, and the plan is judged by
 *   the median of the next TIMED_STEPS intervals (an epoch's end is an outlier);
 * - what to choose: the cost model's cheapest plan (a byte's cost calibrated from the measured median), or
 *   the measured one where both plans were measured with these members, taken only for a gain above
 *   REPLAN_GAIN (a change costs every member a state);
 * - the rows-on-one trial: judged replicated and kept, every row is tried on the fastest member for another
 *   timed window, kept if that measured faster by more than REPLAN_GAIN, else the rows are shared again;
 * - members change: the timing, the trial and the measurements start over.
 *
 * Everything it decides from is passed in (the step, the plan run now, every member's id and speed, the cost
 * model's context: a thunk, built only when a judgment needs it) and the clock is injected, so the rule is unit-tested with a fake clock
 * (test/auto_judge.test.ts), no run needed.
 */
import type { RemotePlan, StepPlan } from '../config.js';
import type { ModelSpec } from '../model/spec.js';
import { byteCost, estimatePlans, type PlanContext, type PlanEstimate } from './cost_model.js';
import { withAverage } from './work_ledger.js';

/** Steps after an admission left out of its timing (the state just sent, rows asked for anew). */
export const SETTLING_STEPS = 2;

/**
 * Steps timed after those before `auto` judges the plan, by their median (an epoch's end is an outlier):
 * with 6, two judgments of the same thing differed by up to 30 % on this machine's tutorial steps.
 */
export const TIMED_STEPS = 12;

/** `auto` changes plan only for an estimated gain above this share (a change costs every member a state). */
export const REPLAN_GAIN = 0.1;

/** A choice of plan, with what the cost model estimated, for the console, summary.json and metrics.jsonl. */
export interface PlanChoice {
  step: number;
  plan: RemotePlan;
  /** Why: as asked (--plan), not measured yet, or the cost model's estimates (cheapest first). */
  reason: string;
  estimates: PlanEstimate[];
  /** Replicated: every row of a step goes to the fastest worker (auto kept it after measuring it faster). */
  rowsOnOne?: boolean;
}

/** A member as the judge sees it: who (to tell a change of members) and its measured rows per ms (0: not yet). */
export interface JudgedMember {
  id: number;
  speed: number;
}

/** What a step's judgment asks of the plan's members; the choices are to be recorded in this order. */
export interface Verdict {
  choices: PlanChoice[];
  /** The members changed since the steps were timed: those on standby join again at the next boundary. */
  wakeStandby: boolean;
  /** `auto` chose another plan: every member is sent the state at the next boundary. */
  replan?: RemotePlan;
  /** The trial begins: every row of a step to the fastest member, the others on standby; then this is recorded. */
  startTrial?: PlanChoice;
}

/** The median of the intervals between the starts after the settling ones (`starts`: one a step, in order). */
export function medianStep(starts: readonly number[], settling = SETTLING_STEPS): number {
  const timed = starts.slice(settling);
  const intervals = timed.slice(1).map((t, i) => t - timed[i]);
  return [...intervals].sort((a, b) => a - b)[Math.floor(intervals.length / 2)];
}

/**
 * The other plan that promises most against the current one (measured `measuredMs`, if it was): by its own
 * measurement with these members when both have one (a byte's cost calibrated under one plan can flatter
 * another), else by the model's estimate against the current plan's.
 */
export function bestOther(
  estimates: readonly PlanEstimate[],
  current: RemotePlan,
  measured: ReadonlyMap<RemotePlan, number>,
  measuredMs?: number,
): { plan: RemotePlan; ratio: number; measuredMs?: number } {
  const now = estimates.find((e) => e.plan === current)!.ms;
  const others = estimates
    .filter((e) => e.plan !== current)
    .map((e) => {
      const theirs = measured.get(e.plan);
      const ratio = theirs === undefined || measuredMs === undefined ? e.ms / now : theirs / measuredMs;
      return { plan: e.plan, ratio, measuredMs: theirs };
    });
  return others.sort((a, b) => a.ratio - b.ratio)[0];
}

/** A change pays only below 1 − REPLAN_GAIN of what runs now. */
export function worthChanging(ratio: number): boolean {
  return ratio < 1 - REPLAN_GAIN;
}

/** The trial keeps the rows on one member only if that measured faster than sharing them by more than REPLAN_GAIN. */
export function rowsOnOneWins(onOneMs: number, sharedMs: number): boolean {
  return onOneMs < (1 - REPLAN_GAIN) * sharedMs;
}

/** Who a plan was timed with, whatever their order (a member on standby comes back in another place). */
function idsOf(members: readonly { id: number }[]): string {
  return members
    .map((p) => p.id)
    .sort((a, b) => a - b)
    .join();
}

/** The judge's state: the steps timed since the members last changed, what was measured, and the trial. */
export class AutoJudge {
  /** When each row pass since the last admission began, and whether the plan was judged since. */
  private starts: number[] = [];
  private judged = false;
  /** The cost of a byte (ms), calibrated from the measured steps when last judged; 0 before. */
  private msPerByte = 0;
  /**
   * The median step measured under each plan since the members last changed: a plan measured slower is
   * not taken again for the model's estimate (which a byte's cost, calibrated under one plan, can flatter).
   */
  private readonly measured = new Map<RemotePlan, number>();
  /** The rows-on-one trial under way (the shared steps' median), and whether it was tried with these members. */
  private trial?: { sharedMs: number };
  private rowsOnOneTried = false;
  /** The members the steps since the last admission were timed with (idsOf). */
  private timedWith = '';

  constructor(
    private readonly spec: ModelSpec,
    private readonly batchSize: number,
    /** As asked: with a fixed plan the estimates are still recorded once, to stand beside the measurements. */
    private readonly asked: StepPlan,
    /** The clock the steps are timed by, in ms (ReplicaPlan: performance.now). */
    private readonly now: () => number,
  ) {}

  /** Whether a byte's cost has been calibrated (the members were measured): only then can the model choose. */
  get calibrated(): boolean {
    return this.msPerByte > 0;
  }

  /**
   * A row pass of `step` begins under `plan` with these members (ready or on standby): once the steps since
   * the last admission have been timed, the cost model estimates every plan, and `auto` asks for another
   * when it is cheaper, or tries the rows on one member, or ends that trial.
   */
  beginStep(step: number, plan: RemotePlan, members: readonly JudgedMember[], contextOf: () => PlanContext): Verdict {
    const timedWith = idsOf(members);
    const changed = timedWith !== this.timedWith;
    if (changed) this.retime(timedWith);
    const verdict: Verdict = { choices: [], wakeStandby: changed };
    // One member has no plan to choose: nothing is timed (an admission starts over when one joins).
    if (this.judged || members.length < 2) return verdict;
    this.starts.push(this.now());
    if (this.starts.length <= SETTLING_STEPS + TIMED_STEPS || members.some((p) => p.speed === 0)) return verdict;
    this.judged = true;
    const measured = medianStep(this.starts);
    if (this.trial) return this.endTrial(step, plan, measured);
    this.measured.set(plan, measured);
    const context = contextOf();
    this.msPerByte = byteCost(this.spec, this.batchSize, members.map((p) => ({ rowsPerMs: p.speed })), plan, measured, context);
    const estimates = this.estimate(members, context);
    if (this.asked !== 'auto') {
      return { ...verdict, choices: [{ step, plan, reason: "as asked (--plan); the cost model's estimates", estimates }] };
    }
    const best = bestOther(estimates, plan, this.measured, measured);
    const replan = worthChanging(best.ratio) ? best.plan : undefined;
    const kept = replan ? '' : ': kept';
    const why =
      best.measuredMs === undefined
        ? `the cost model, from the measured workers${kept}`
        : `measured: ${best.plan} ${best.measuredMs.toFixed(1)} ms a step, ${plan} ${measured.toFixed(1)} ms${kept}`;
    // Recorded whether it changes the plan or not: summary.json then holds the estimate beside the measured steps.
    const choices: PlanChoice[] = [{ step, plan: replan ?? plan, reason: why, estimates }];
    const tryOnOne = !replan && plan === 'replicated' && !this.rowsOnOneTried;
    return { ...verdict, choices, replan, startTrial: tryOnOne ? this.startTrial(step, plan, measured) : undefined };
  }

  /**
   * The plan for these members (ready and joining), about to be admitted under `plan`: as asked (--plan), or
   * the cheaper by the cost model once they are measured; with the choice to record, if any (a change, or the
   * run's first admission: `first`).
   */
  atAdmission(step: number, plan: RemotePlan, members: readonly JudgedMember[], contextOf: () => PlanContext, first: boolean): { plan: RemotePlan; choice?: PlanChoice } {
    if (this.asked !== 'auto') return { plan: this.asked, choice: first ? { step, plan: this.asked, reason: 'as asked (--plan)', estimates: [] } : undefined };
    const cheaper = this.cheaperAtAdmission(step, plan, members, contextOf);
    if (cheaper) return { plan: cheaper.plan, choice: cheaper };
    const unmeasured = members.length < 2 || !this.calibrated;
    return { plan, choice: first && unmeasured ? { step, plan, reason: 'auto: until the workers are measured', estimates: [] } : undefined };
  }

  /**
   * At an admission of these members (ready and joining) under `plan`: the cheaper plan by the cost model, if
   * one promises a gain above REPLAN_GAIN; undefined when none does or the members are not measured yet.
   */
  cheaperAtAdmission(step: number, plan: RemotePlan, members: readonly JudgedMember[], contextOf: () => PlanContext): PlanChoice | undefined {
    if (members.length < 2 || !this.calibrated) return undefined;
    const estimates = this.estimate(members, contextOf());
    const best = bestOther(estimates, plan, this.measured);
    if (!worthChanging(best.ratio)) return undefined;
    return { step, plan: best.plan, reason: 'the cost model, as the workers changed', estimates };
  }

  /** Members coming back from a trial that ended (lost) with the same members: timed and judged already. */
  returningFromTrial(members: readonly JudgedMember[]): boolean {
    return this.rowsOnOneTried && !this.trial && idsOf(members) === this.timedWith;
  }

  /** Measurements hold for the members they were taken with only (a change of plan alone keeps them). */
  forgetMeasurements(): void {
    this.measured.clear();
  }

  /** Timing starts over with these members (an admission), and rows are shared again until measured otherwise. */
  restart(members: readonly JudgedMember[]): void {
    this.restartTiming(idsOf(members));
  }

  /** The members changed: what was timed, tried and measured held for others. */
  private retime(timedWith: string): void {
    this.restartTiming(timedWith);
    this.measured.clear();
  }

  private restartTiming(timedWith: string): void {
    this.timedWith = timedWith;
    this.starts = [];
    this.judged = false;
    this.trial = undefined;
    this.rowsOnOneTried = false;
  }

  /** Times the next steps with every row on the fastest member: no state moves until the trial ends. */
  private startTrial(step: number, plan: RemotePlan, sharedMs: number): PlanChoice {
    this.trial = { sharedMs };
    this.rowsOnOneTried = true;
    this.judged = false;
    this.starts = [];
    // Its own entry, so that the trial's steps are not measured as the shared ones (summary.json measuredMs).
    return { step, plan, reason: 'trial: every row of a step on the fastest worker, the others on standby', estimates: [], rowsOnOne: true };
  }

  /**
   * Keeps the rows on one member if that measured faster than sharing them, by more than REPLAN_GAIN; else
   * the members on standby are sent the state at the next boundary, and the rows are shared again.
   */
  private endTrial(step: number, plan: RemotePlan, onOneMs: number): Verdict {
    const { sharedMs } = this.trial!;
    this.trial = undefined;
    const onOne = rowsOnOneWins(onOneMs, sharedMs);
    // Lost: this step and the next (asked for already) still run on one, and rows are shared from the one
    // after; this choice's measured step in summary.json includes those two.
    const said = `measured: rows on one worker ${onOneMs.toFixed(1)} ms a step, shared ${sharedMs.toFixed(1)} ms`;
    const choice: PlanChoice = { step, plan, reason: `${said}: ${onOne ? 'on one' : 'shared'}`, estimates: [], rowsOnOne: onOne };
    return { choices: [choice], wakeStandby: !onOne };
  }

  private estimate(members: readonly JudgedMember[], context: PlanContext): PlanEstimate[] {
    const costs = withAverage(members.map((p) => p.speed)).map((rowsPerMs) => ({ rowsPerMs }));
    return estimatePlans(this.spec, this.batchSize, costs, this.msPerByte, context);
  }
}
