/**
 * How remote replicas run the steps when the coordinator computes no rows itself (--threads 0), and who
 * owns what:
 *
 * - replicated: every replica applies the whole step (the fewest bytes; the weight pass repeated on each);
 * - sharded: each replica (an owner) reduces and updates only its share of every layer's output units, and
 *   the new parameters are all-gathered through the hub (remote/peer_work.ts requestSlices and slice);
 * - server: the replicas compute rows only; the coordinator reduces them, applies Adam and sends every
 *   replica the new parameters (peer_work.ts broadcastParams), as a parameter server. The gradients travel
 *   in their factored form, each row's activations and deltas, which the coordinator reduces in the one
 *   call every plan uses: a dense gradient per micro-shard, summed here, would end on other bits.
 *
 * `--plan replicated|sharded|server` fixes the plan; `auto` (the default) runs the first steps replicated,
 * then takes the cheapest plan by the cost model (cost_model.ts: the members' measured speed, and a byte's
 * cost calibrated from the measured steps), and plans again whenever the members change. Every plan gives
 * the same bits (every unit's gradient is one reduction over the whole batch: cluster/plan.ts), so a
 * change of plan changes only the speed.
 *
 * An owner's Adam moments are current only for its own units, so the shares are fixed from the moment every
 * member was sent the full state (admit) until membership or the plan changes: then the state is gathered
 * from the owners' shards (or, when an owner or its slice was lost, replayed by the trainer from the last
 * state gathered) and sent to every member again.
 */
import type { StepPlan } from '../config.js';
import type { ModelSpec } from '../model/spec.js';
import { paramLayout } from '../model/spec.js';
import type { RemotePlan } from '../config.js';
import { byteCost, estimatePlans, stepSizes, type MemberCost, type PlanContext, type PlanEstimate } from './cost_model.js';
import { shareUnits, type Range } from './plan.js';
import type { RemoteHub, RemotePeer } from './remote/hub.js';
import type { Snapshot } from './remote/peer_work.js';
import type { SliceMessage } from './remote/messages.js';
import type { StateArrays } from './training_state.js';
import { placeSlice } from './unit_slices.js';
import { smooth, withAverage } from './work_ledger.js';

/** Steps after an admission left out of its timing (the state just sent, rows asked for anew). */
const SETTLING_STEPS = 2;

/**
 * Steps timed after those before `auto` judges the plan, by their median (an epoch's end is an outlier):
 * with 6, two judgments of the same thing differed by up to 30 % on this machine's tutorial steps.
 */
const TIMED_STEPS = 12;

/** `auto` changes plan only for an estimated gain above this share (a change costs every member a state). */
const REPLAN_GAIN = 0.1;

/** The slices of a sharded step as they came, for --verify: its step and batch, and each owner's slice. */
export interface StepSlices {
  step: number;
  batch: number;
  slices: Map<RemotePeer, SliceMessage>;
}

/** Checks a step's slices on this process; returns the owners whose slice was wrong (they are dropped). */
export type SliceCheck = (slices: StepSlices) => Promise<RemotePeer[]>;

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

export class ReplicaPlan {
  /** As asked, or with `auto` replicated until judged. */
  private plan: RemotePlan;
  private owners = new Map<RemotePeer, Range[]>();
  /** The last step's slices, until settled. */
  private inFlight?: Promise<void>;
  /** The last sharded step's slices, once all came (for --verify). */
  private landed?: StepSlices;
  /** A slice was lost (its owner dropped): the replicas are torn mid-step, and only a replay mends the state. */
  private torn = false;
  /** When each row pass since the last admission began, and whether `auto` judged the plan since. */
  private starts: number[] = [];
  private judged = false;
  /** The cost of a byte (ms), calibrated from the measured steps when `auto` last judged; 0 before. */
  private msPerByte = 0;
  /**
   * The median step measured under each plan since the members last changed: a plan measured slower is
   * not taken again for the model's estimate (which a byte's cost, calibrated under one plan, can flatter).
   */
  private readonly measured = new Map<RemotePlan, number>();
  /**
   * Replicated, `auto`: every row of a step to the fastest member, the others on standby (RemoteHub.park:
   * sent nothing, applying nothing). Splitting the rows halves their compute but puts a relay of rows and
   * every worker's rebuild of the others' deltas on the path of each step, and a replica that follows
   * every step takes CPU and the coordinator's bytes: for a small model that can cost more than it saves.
   * Tried once the plan is judged (a timed trial, `trial`: the shared steps' median), kept if faster; the
   * members on standby are sent the state again when the trial loses, when membership changes, or when the
   * one computing leaves (its state is then replayed here from the last one taken: Trainer.catchUp).
   */
  private trial?: { sharedMs: number };
  private rowsOnOneTried = false;
  /**
   * The members the steps since the last admission were timed with: one that leaves without an admission
   * (the replicated plan needs none) makes the timing, the trial and the measurements start over.
   */
  private timedWith = '';
  private due?: RemotePlan;
  /** The coordinator's measured rate for a weight pass (weighed); until then, assumed the average member's. */
  private coordinator?: MemberCost;
  readonly choices: PlanChoice[] = [];

  constructor(
    private readonly hub: RemoteHub,
    private readonly spec: ModelSpec,
    private readonly batchSize: number,
    private readonly asked: StepPlan,
    private readonly onChoice: (choice: PlanChoice) => void,
    /** Whether replicated rows travel compact (Scheduler.compactRows): what they cost depends on it. */
    private readonly compactRows: boolean,
  ) {
    this.plan = asked === 'auto' ? 'replicated' : asked;
  }

  /** The plan the members run now. */
  get current(): RemotePlan {
    return this.plan;
  }

  /**
   * Whether steps are sharded now: with a sole owner there is nobody to share the units with, and it runs
   * as a replicated run's replica (compact rows, the next rows asked for early, plain updates).
   */
  get active(): boolean {
    return this.plan === 'sharded' && this.owners.size > 1;
  }

  /** Sharded: the owners no longer hold the state together — a slice was lost, an owner left, or a member owns nothing. */
  private get ownersChanged(): boolean {
    if (this.plan !== 'sharded') return false;
    const ready = this.hub.ready();
    return this.torn || ready.length !== this.owners.size || ready.some((p) => !this.owners.has(p));
  }

  /** Whether the coordinator applies the steps and sends the parameters (the server plan). */
  get serving(): boolean {
    return this.plan === 'server';
  }

  /**
   * The coordinator's weight pass over a batch of `batch` rows took `ms` (the server plan's, or a replay's):
   * its rate, in the cost model's terms, for the server plan's estimate.
   */
  weighed(ms: number, batch: number): void {
    const { weightFlops, rowFlops } = stepSizes(this.spec, batch);
    this.coordinator = { rowsPerMs: smooth(this.coordinator?.rowsPerMs ?? 0, weightFlops / (Math.max(0.01, ms) * rowFlops)) };
  }

  /**
   * Whether the members must be sent the state again before the next step: `auto` chose another plan, the
   * owners changed, or members on standby must compute (the one that did left: see rowsOnOne).
   */
  get stale(): boolean {
    return this.due !== undefined || this.ownersChanged || this.hub.meshBroken || (this.hub.ready().length === 0 && this.hub.standby().length > 0);
  }

  /**
   * Whether the step about to be asked for goes between peers (its rows and slices over the members' links,
   * remote/peer_mesh.ts): sharded among several owners, every one linked to every other.
   */
  direct(): boolean {
    return this.active && this.hub.direct();
  }

  /** Every member, ready or on standby: what a plan is timed and judged with. */
  private members(): RemotePeer[] {
    return [...this.hub.ready(), ...this.hub.standby()];
  }

  /**
   * A row pass begins: once the steps since the last admission have been timed, the cost model estimates
   * every plan (recorded whatever --plan says, so that estimates stand beside measurements), and `auto`
   * changes plan when another is cheaper.
   */
  beginStep(step: number): void {
    const members = this.members();
    const timedWith = idsOf(members);
    if (timedWith !== this.timedWith) this.retime(timedWith);
    // One member has no plan to choose: nothing is timed (an admission starts over when one joins).
    if (this.judged || members.length < 2) return;
    this.starts.push(performance.now());
    if (this.starts.length <= SETTLING_STEPS + TIMED_STEPS || members.some((p) => p.speed === 0)) return;
    this.judged = true;
    const intervals = this.starts.slice(SETTLING_STEPS).map((t, i, a) => (i === 0 ? NaN : t - a[i - 1])).slice(1);
    const measured = [...intervals].sort((a, b) => a - b)[Math.floor(intervals.length / 2)];
    if (this.trial) return this.endTrial(step, measured);
    this.measured.set(this.plan, measured);
    this.msPerByte = byteCost(this.spec, this.batchSize, members.map((p) => ({ rowsPerMs: p.speed })), this.plan, measured, this.context);
    const estimates = this.estimate(members);
    if (this.asked !== 'auto') {
      this.choose({ step, plan: this.plan, reason: 'as asked (--plan); the cost model\'s estimates', estimates });
      return;
    }
    const best = this.bestOther(estimates, measured);
    if (best.ratio < 1 - REPLAN_GAIN) this.due = best.plan;
    const kept = this.due ? '' : ': kept';
    const why =
      best.measuredMs === undefined
        ? `the cost model, from the measured workers${kept}`
        : `measured: ${best.plan} ${best.measuredMs.toFixed(1)} ms a step, ${this.plan} ${measured.toFixed(1)} ms${kept}`;
    // Recorded whether it changes the plan or not: summary.json then holds the estimate beside the measured steps.
    this.choose({ step, plan: this.due ?? this.plan, reason: why, estimates });
    if (!this.due && this.plan === 'replicated' && !this.rowsOnOneTried) this.startTrial(step, measured);
  }

  /**
   * The members changed: what was timed, tried and measured held for others; those on standby join again
   * at the next boundary, to be judged with the rest.
   */
  private retime(timedWith: string): void {
    this.wakeStandby();
    this.restartTiming(timedWith);
    this.measured.clear();
  }

  /** Members on standby will be sent the state at the next boundary (they join again). */
  private wakeStandby(): void {
    for (const peer of this.hub.standby()) this.hub.resync(peer);
  }

  /** Timing starts over with these members, and rows are shared again until measured otherwise. */
  private restartTiming(timedWith: string): void {
    this.timedWith = timedWith;
    this.starts = [];
    this.judged = false;
    this.trial = undefined;
    this.rowsOnOneTried = false;
  }

  /**
   * Times the next steps with every row on the fastest member and the others on standby: no state moves
   * until the trial ends (the others only fall behind).
   */
  private startTrial(step: number, sharedMs: number): void {
    this.trial = { sharedMs };
    this.rowsOnOneTried = true;
    this.judged = false;
    this.starts = [];
    // The first of the fastest, by the speed the rows are shared by (Scheduler.plan).
    const ready = this.hub.ready();
    const fastest = ready.reduce((best, p) => (p.speed > best.speed ? p : best));
    for (const peer of ready) if (peer !== fastest) this.hub.park(peer);
    // Its own entry, so that the trial's steps are not measured as the shared ones (summary.json measuredMs).
    this.choose({ step, plan: this.plan, reason: 'trial: every row of a step on the fastest worker, the others on standby', estimates: [], rowsOnOne: true });
  }

  /**
   * Keeps the rows on one member if that measured faster than sharing them, by more than REPLAN_GAIN; else
   * the members on standby are sent the state at the next boundary, and the rows are shared again.
   */
  private endTrial(step: number, onOneMs: number): void {
    const { sharedMs } = this.trial!;
    this.trial = undefined;
    const onOne = onOneMs < (1 - REPLAN_GAIN) * sharedMs;
    // Lost: this step and the next (asked for already) still run on one, and rows are shared from the one
    // after; this choice's measured step in summary.json includes those two.
    if (!onOne) this.wakeStandby();
    const said = `measured: rows on one worker ${onOneMs.toFixed(1)} ms a step, shared ${sharedMs.toFixed(1)} ms`;
    this.choose({ step, plan: this.plan, reason: `${said}: ${onOne ? 'on one' : 'shared'}`, estimates: [], rowsOnOne: onOne });
  }

  /**
   * The other plan that promises most against the current one (measured `measuredMs`, if it was): by its
   * own measurement with these members when both have one (a byte's cost calibrated under one plan can
   * flatter another), else by the model's estimate against the current plan's. A change pays only below
   * 1 − REPLAN_GAIN (it costs every member a state).
   */
  private bestOther(estimates: PlanEstimate[], measuredMs?: number): { plan: RemotePlan; ratio: number; measuredMs?: number } {
    const now = estimates.find((e) => e.plan === this.plan)!.ms;
    const others = estimates
      .filter((e) => e.plan !== this.plan)
      .map((e) => {
        const theirs = this.measured.get(e.plan);
        const ratio = theirs === undefined || measuredMs === undefined ? e.ms / now : theirs / measuredMs;
        return { plan: e.plan, ratio, measuredMs: theirs };
      });
    return others.sort((a, b) => a.ratio - b.ratio)[0];
  }

  /**
   * Sends the committed state to the joiners — and to every member when the plan changes (the state says
   * how steps come; a server plan's replicas hold stale moments) or is sharded (units move, and each owner's
   * moments must be current for its new ones) — and shares the units.
   */
  async admit(snapshot: Snapshot): Promise<void> {
    // Every slice of the last step has come, or its owner was dropped: none reaches a member after its new state.
    await this.settle();
    // Members coming back from a trial that ended (lost: no one stands by) with no one else (the one that
    // computed may be sent the state too: Scheduler.admit): the same members, timed and judged already.
    const trialEnded = this.rowsOnOneTried && !this.trial;
    const sameMembers = this.hub.standby().length === 0 && idsOf([...this.hub.ready(), ...this.hub.joining()]) === this.timedWith;
    if (trialEnded && sameMembers && this.due === undefined && !this.ownersChanged) {
      this.hub.admit(snapshot, this.plan);
      return;
    }
    // Any other admission brings every member back, to be judged together.
    this.wakeStandby();
    // Measurements hold for these members only: a change of plan alone keeps them.
    if (this.due === undefined || this.ownersChanged || this.hub.joining().length > 0) this.measured.clear();
    const plan = this.due ?? this.decide(snapshot.step);
    // Every member is told a new plan with the state; sharded, units move too. (A server plan's replicas
    // hold stale moments: the state they leave it with is the coordinator's.)
    if (plan === 'sharded' || plan !== this.plan) for (const peer of this.hub.ready()) this.hub.resync(peer);
    this.plan = plan;
    const alone = this.hub.joining().length + this.hub.ready().length <= 1;
    this.hub.admit(snapshot, plan === 'sharded' && alone ? 'replicated' : plan);
    const members = this.hub.ready();
    // A newcomer is assumed as fast as the average so far (as rows are shared: Scheduler.plan).
    const speeds = withAverage(members.map((p) => p.speed));
    const shares = plan === 'sharded' && members.length ? shareUnits(this.spec.sizes.slice(1), speeds) : [];
    this.owners = new Map(shares.map((units, i) => [members[i], units]));
    this.torn = false;
    this.due = undefined;
    this.restartTiming(idsOf(members));
  }

  /** The plan for the members about to be admitted: as asked, or by the cost model once they are measured. */
  private decide(step: number): RemotePlan {
    const first = this.choices.length === 0;
    if (this.asked !== 'auto') {
      if (first) this.choose({ step, plan: this.asked, reason: 'as asked (--plan)', estimates: [] });
      return this.asked;
    }
    const members = [...this.hub.ready(), ...this.hub.joining()];
    if (members.length < 2 || this.msPerByte === 0) {
      if (first) this.choose({ step, plan: this.plan, reason: 'auto: until the workers are measured', estimates: [] });
      return this.plan;
    }
    const estimates = this.estimate(members);
    const best = this.bestOther(estimates);
    if (best.ratio >= 1 - REPLAN_GAIN) return this.plan;
    this.choose({ step, plan: best.plan, reason: 'the cost model, as the workers changed', estimates });
    return best.plan;
  }

  private estimate(members: RemotePeer[]): PlanEstimate[] {
    const costs = withAverage(members.map((p) => p.speed)).map((rowsPerMs) => ({ rowsPerMs }));
    return estimatePlans(this.spec, this.batchSize, costs, this.msPerByte, this.context);
  }

  /**
   * What the cost model needs besides the members: how rows travel, the coordinator's measured rate, and
   * whether sharded steps would go between peers (every member announced a listener; whether the links
   * then come up is known only once they are tried).
   */
  private get context(): PlanContext {
    return { compact: this.compactRows, coordinator: this.coordinator, direct: this.hub.peersCapable() };
  }

  private choose(choice: PlanChoice): void {
    this.choices.push(choice);
    this.onChoice(choice);
  }

  /**
   * Sends the step's update to the owners (active() only); settle() awaits their slices. `direct`: the step's
   * rows went between peers, and so do the slices (only that each went comes here).
   */
  request(step: number, batch: number, direct = false): void {
    // Every owner's answer is awaited, not only up to the first loss: a slice still on its way when the state is
    // sent again would reach members that moved on.
    const owners = [...this.owners.keys()];
    this.landed = undefined;
    this.inFlight = Promise.allSettled(this.hub.requestSlices(step, batch, this.owners, direct)).then((results) => {
      if (results.some((r) => r.status === 'rejected')) this.torn = true;
      else if (!direct) this.landed = { step, batch, slices: new Map(results.map((r, i) => [owners[i], (r as PromiseFulfilledResult<SliceMessage>).value])) };
    });
  }

  /** Waits for the last step's slices (each came, or its owner was dropped); false when one was lost. */
  async settle(): Promise<boolean> {
    await this.inFlight;
    this.inFlight = undefined;
    return !this.torn;
  }

  /**
   * Sharded: the full state of `step` put together from the owners' shards, or undefined when an owner is
   * gone. `check` (--verify) first judges the last step's slices: a wrong one drops its owner, and the state
   * is then replayed here.
   */
  async gather(step: number, check?: SliceCheck): Promise<StateArrays | undefined> {
    // Not when only the plan is to change: the owners still hold the state together.
    if (!(await this.settle()) || this.ownersChanged || this.owners.size === 0) return undefined;
    const landed = this.landed;
    this.landed = undefined;
    if (check && landed && (await check(landed)).length > 0) return undefined;
    const total = paramLayout(this.spec).total;
    const state: StateArrays = { params: new Float32Array(total), m: new Float32Array(total), v: new Float32Array(total) };
    try {
      const shards = await Promise.all([...this.owners].map(async ([peer, units]) => ({ units, shard: await this.hub.fetchState(peer, step, units) })));
      for (const { units, shard } of shards) {
        placeSlice(this.spec, state.params, units, shard.params);
        placeSlice(this.spec, state.m, units, shard.m);
        placeSlice(this.spec, state.v, units, shard.v);
      }
      return state;
    } catch {
      // an owner left or timed out (and was dropped): its moments are gone with it
      return undefined;
    }
  }
}

/** Who a plan was timed with, whatever their order (a member on standby comes back in another place). */
function idsOf(members: RemotePeer[]): string {
  return members
    .map((p) => p.id)
    .sort((a, b) => a - b)
    .join();
}
