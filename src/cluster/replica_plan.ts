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
 * cost calibrated from the measured steps), and plans again whenever the members change. The rule, its
 * timing and its trial are auto_judge.ts's (AutoJudge, a state machine over the measurements with the clock
 * injected); this class does what it decides to the members and keeps the owners' books. Every plan gives
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
import { AutoJudge, type PlanChoice, type Verdict } from './auto_judge.js';
import { stepSizes, type MemberCost, type PlanContext } from './cost_model.js';
import { shareUnits, type Range } from './plan.js';
import type { RemotePeer } from './remote/hub.js';
import type { RemoteMembers } from './remote/members.js';
import type { Snapshot } from './remote/peer_work.js';
import type { SliceMessage } from './remote/messages.js';
import type { StateArrays } from './training_state.js';
import { placeSlice } from './unit_slices.js';
import { smooth, withAverage } from './work_ledger.js';

export type { PlanChoice } from './auto_judge.js';

/** The slices of a sharded step as they came, for --verify: its step and batch, and each owner's slice. */
export interface StepSlices {
  step: number;
  batch: number;
  slices: Map<RemotePeer, SliceMessage>;
}

/** Checks a step's slices on this process; returns the owners whose slice was wrong (they are dropped). */
export type SliceCheck = (slices: StepSlices) => Promise<RemotePeer[]>;

/** What the plan asks of the remote members: who they are, their state, and a sharded step's slices. */
export type PlanMembers = Pick<
  RemoteMembers,
  'ready' | 'standby' | 'joining' | 'admit' | 'resync' | 'park' | 'requestSlices' | 'fetchState' | 'direct' | 'peersCapable' | 'meshBroken'
>;

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
  /**
   * `auto`'s judgment (and a fixed plan's estimates), from the steps' timing. Its rows-on-one trial: every
   * row of a step to the fastest member, the others on standby (RemoteHub.park: sent nothing, applying
   * nothing). Splitting the rows halves their compute but puts a relay of rows and every worker's rebuild
   * of the others' deltas on the path of each step, and a replica that follows every step takes CPU and the
   * coordinator's bytes: for a small model that can cost more than it saves. The members on standby are
   * sent the state again when the trial loses, when membership changes (one that leaves without an
   * admission — the replicated plan needs none — makes the timing start over), or when the one computing
   * leaves (its state is then replayed here from the last one taken: Trainer.catchUp).
   */
  private readonly judge: AutoJudge;
  /** The plan `auto` chose, taken at the next admission. */
  private due?: RemotePlan;
  /** The coordinator's measured rate for a weight pass (weighed); until then, assumed the average member's. */
  private coordinator?: MemberCost;
  readonly choices: PlanChoice[] = [];

  constructor(
    private readonly hub: PlanMembers,
    private readonly spec: ModelSpec,
    batchSize: number,
    asked: StepPlan,
    private readonly onChoice: (choice: PlanChoice) => void,
    /** Whether replicated rows travel compact (Scheduler.compactRows): what they cost depends on it. */
    private readonly compactRows: boolean,
    /** The clock the steps are timed by (ms); a test's own, to drive `auto` without runs. */
    now: () => number = () => performance.now(),
  ) {
    this.plan = asked === 'auto' ? 'replicated' : asked;
    this.judge = new AutoJudge(spec, batchSize, asked, now);
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
   * owners changed, or members on standby must compute (the one that did left: see `judge`'s trial).
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
   * changes plan when another is cheaper (AutoJudge decides; this does it).
   */
  beginStep(step: number): void {
    // The cost model's context only when the judge judges (it reads the members' peer listeners).
    this.act(this.judge.beginStep(step, this.plan, this.members(), this.contextOf));
  }

  private act(verdict: Verdict): void {
    // Members changed, or the trial lost: those on standby join again at the next boundary, to be judged with the rest.
    if (verdict.wakeStandby) this.wakeStandby();
    // Due before it is told, as stale() says to whoever hears of the choice.
    if (verdict.replan) this.due = verdict.replan;
    for (const choice of verdict.choices) this.choose(choice);
    if (verdict.startTrial) {
      // Every row on the first of the fastest, by the speed the rows are shared by (Scheduler.plan): no
      // state moves until the trial ends (the others only fall behind).
      const ready = this.hub.ready();
      const fastest = ready.reduce((best, p) => (p.speed > best.speed ? p : best));
      for (const peer of ready) if (peer !== fastest) this.hub.park(peer);
      this.choose(verdict.startTrial);
    }
  }

  /** Members on standby will be sent the state at the next boundary (they join again). */
  private wakeStandby(): void {
    for (const peer of this.hub.standby()) this.hub.resync(peer);
  }

  /**
   * Sends the committed state to the joiners — and to every member when the plan changes (the state says
   * how steps come; a server plan's replicas hold stale moments) or is sharded (units move, and each owner's
   * moments must be current for its new ones) — and shares the units.
   */
  async admit(snapshot: Snapshot): Promise<void> {
    // Every slice of the last step has come, or its owner was dropped: none reaches a member after its new state.
    await this.settle();
    const onStandby = this.hub.standby().length > 0;
    // Any admission but a return from a trial brings every member back, to be judged together (a return has
    // no one on standby: this then changes nothing).
    this.wakeStandby();
    const admitted = [...this.hub.ready(), ...this.hub.joining()];
    // Members coming back from a trial that ended (lost: no one stands by) with no one else (the one that
    // computed may be sent the state too: Scheduler.admit): the same members, timed and judged already.
    const returning = !onStandby && this.judge.returningFromTrial(admitted);
    if (returning && this.due === undefined && !this.ownersChanged) {
      this.hub.admit(snapshot, this.plan);
      return;
    }
    // Measurements hold for these members only: a change of plan alone keeps them.
    if (this.due === undefined || this.ownersChanged || this.hub.joining().length > 0) this.judge.forgetMeasurements();
    const plan = this.due ?? this.decide(snapshot.step, admitted);
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
    this.judge.restart(members);
  }

  /** The plan for the members about to be admitted (AutoJudge.atAdmission), its choice recorded. */
  private decide(step: number, members: readonly RemotePeer[]): RemotePlan {
    const { plan, choice } = this.judge.atAdmission(step, this.plan, members, this.contextOf, this.choices.length === 0);
    if (choice) this.choose(choice);
    return plan;
  }

  /**
   * What the cost model needs besides the members: how rows travel, the coordinator's measured rate, and
   * whether sharded steps would go between peers (every member announced a listener; whether the links
   * then come up is known only once they are tried).
   */
  private readonly contextOf = (): PlanContext => ({ compact: this.compactRows, coordinator: this.coordinator, direct: this.hub.peersCapable() });

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
