/**
 * The scheduler the trainer talks to: local worker slots (this process and its threads) and remote
 * workers, behind one row pass, one weight pass and one evaluation. Row work is handed out in whole
 * micro-shards, in proportion to each participant's measured speed; whoever fails or times out has its
 * rows redone by the others. The result never depends on who computed what (see cluster/plan.ts).
 *
 * A pass runs over the participants it started with: membership (joiners admitted with the committed
 * state, waiting when nobody is left to compute) changes only at step boundaries, which the trainer
 * handles (Trainer.boundary), as torch.distributed.elastic does in one place of its agent loop. A pass
 * that cannot finish with the participants it has says so and the trainer redoes the step after the
 * boundary; the scheduler never calls back into the trainer.
 */
import type { StepPlan } from '../config.js';
import type { StateArrays, StateSnapshot } from './training_state.js';
import { ReplicaPlan, type PlanChoice, type StepSlices } from './replica_plan.js';
import { packSlice, placeSlice } from './unit_slices.js';
import type { Range } from './plan.js';
import { apportion, coalesce, microShards, shardGroups } from './plan.js';
import { rowsOf, RowVerifier, sameBits, type AcceptedRows } from './verify.js';
import { LOCAL, smooth, withAverage, WorkLedger, type WorkShares } from './work_ledger.js';
import { ParticipantTally, type ParticipantState, type ParticipantStep, type StepShare } from './participant_stats.js';
import type { RemotePeer, HubEvent, SuspectRows } from './remote/hub.js';
import type { RemoteMembers } from './remote/members.js';
import type { RowsDone, StateMessage } from './remote/messages.js';
import type { Task, TaskResult } from './slot_runner.js';
import { stoppedWaiting } from '../errors.js';
import { paramsSha256 } from '../model/checksum.js';
import { gatherBatchRows, optimizerMemoryOf, placeBatchRows, type TrainingMemory } from './training_memory.js';
import type { Team } from './team.js';

/** What a joining worker is sent: the committed state and what it needs to compute with it. */
export type JoinState = StateSnapshot & Pick<StateMessage, 'spec' | 'batchSize' | 'adam'>;

/**
 * How a step is computed, decided once for the run from the local slots, whether remote workers may join,
 * and what the engine can do.
 */
export type StepMode =
  /** One local slot computes every step alone, both passes in one task (Engine.stepPass when it has one). */
  | 'whole'
  /** Rows on every participant, then the weight pass on the local slots. */
  | 'split'
  /**
   * No local rows (--threads 0, or --plan server): remote replicas compute the rows, and the steps are
   * applied by them, each the whole step or its share of the units, or here (the server plan, on the local
   * threads) — the plan: replica_plan.ts.
   */
  | 'replicated';

export function chooseStepMode(localThreads: number, remoteWorkers: boolean, plan: StepPlan = 'auto'): StepMode {
  if (localThreads === 0 || (remoteWorkers && plan === 'server')) return 'replicated';
  return localThreads === 1 && !remoteWorkers ? 'whole' : 'split';
}

/**
 * The outcome of a row pass: every row of the batch is computed, its loss in the batch buffers
 * (`replicated`: the remote replicas apply this step; `rowsHere`: its activations and deltas are in the
 * buffers too, not only on the workers that sent them compact or as losses only), or the pass could not
 * finish and the step is redone after the boundary — nobody is left to compute, or suspect rows must be
 * judged here on a state this process does not hold yet.
 */
export type RowsOutcome = { done: true; replicated: boolean; rowsHere: boolean } | { done: false; needs: 'participant' | 'state' };

interface RemoteJob {
  worker: RemotePeer;
  rows: Range;
  shardRange: Range;
  sent: number;
  /** When its answer came (performance.now()): the round trip, less the worker's compute, is its wire time. */
  arrived: number;
  /** Never rejects: a failure arrives as the Error, so the rows can be redone. */
  result: Promise<RowsDone | Error>;
}

/** A worker's answer of non-finite rows (its micro-shards), held until this process has computed them too. */
interface Suspect {
  worker: RemotePeer;
  reason: string;
  shardRange: Range;
}

/** Who computes which micro-shards of one step. */
interface Plan {
  step: number;
  batch: number;
  /** The form its remote rows were asked in (Scheduler.compactRows and lossOnly when it was made). */
  compact: boolean;
  lossOnly: boolean;
  /** Its rows went between peers (each member sent them to the others; losses only came here). */
  direct?: boolean;
  /** Its remote members were sent the state since it was asked for (Scheduler.admit): its answers are dropped. */
  resent?: boolean;
  local?: Range[];
  remote: RemoteJob[];
}

export type ClusterEvent =
  | HubEvent
  | { type: 'waiting'; reason: string }
  | { type: 'redo'; rows: Range; reason: string }
  | { type: 'replay'; from: number; to: number }
  | ({ type: 'plan' } & PlanChoice);

export class Scheduler {
  private readonly ledger = new WorkLedger();
  /** Each participant's rows and times in the step under way (takeParticipants(): the step's record). */
  private readonly tally = new ParticipantTally<RemotePeer | typeof LOCAL>();
  /** The remote members the last record named: one gone since is named once more, dropped. */
  private recorded: RemotePeer[] = [];
  private prefetched?: Plan;
  /**
   * Remote rows may travel in compact form (activations and the last layer's delta; receivers rebuild the
   * other deltas): without local compute, where this process never runs a weight pass on remote rows, and
   * with an engine that can rebuild them (Engine.deltasPass). Not while steps are sharded among several
   * owners: an owner's weight pass reads its units' deltas of every layer, cheaper sent than rebuilt.
   */
  private readonly compactCapable: boolean;
  /** How the remote replicas run the steps, and the sharded plan's owners and slices (mode 'replicated'). */
  private readonly remotePlan?: ReplicaPlan;
  /** The generation the last row pass read: with --verify, a sharded step's slices are checked against it. */
  private rowsGeneration = 0;
  /**
   * What confirm() asked when it last confirmed a replica's state: the step, every replica's checksum of it,
   * the SHA-256 of the state taken (when more than one replica was compared) and who was resynced for a
   * differing checksum. verifyReplicas of that step and state reuses it (the epoch's end: one round trip).
   */
  private confirmed?: { step: number; sums: Map<RemotePeer, string>; sha?: string; resynced: string[] };
  /** The local slots' engine and device, as the participants' record names them (describeLocal). */
  private localKind?: Pick<ParticipantStep, 'engine' | 'device'>;
  /** Steps below this one are a replay's (replaying): their weight passes are no step's participants' work. */
  private replayedBelow = 0;

  constructor(
    private readonly memory: TrainingMemory,
    readonly local: Team,
    readonly mode: StepMode,
    private readonly hub: RemoteMembers | undefined,
    private readonly onEvent: (event: ClusterEvent) => void,
    private readonly verifier = new RowVerifier(0, 0),
    plan: StepPlan = 'auto',
  ) {
    this.compactCapable = mode === 'replicated' && local.capabilities.compactRows;
    if (mode === 'replicated' && hub) this.remotePlan = new ReplicaPlan(hub, memory.spec, memory.batchSize, plan, (c) => onEvent({ type: 'plan', ...c }), this.compactCapable);
  }

  /**
   * Whether remote rows travel compact (see compactCapable); changes only when members are admitted. Not
   * in the server plan either: this process runs the weight pass on every row, and would rebuild them.
   */
  private get compactRows(): boolean {
    return this.compactCapable && !this.remotePlan?.active && !this.serving;
  }

  /**
   * Whether remote rows are asked for as their losses only: a sole replica computes every row of a step and
   * applies it, and nobody else reads its rows (not while verifying, which compares them here). The
   * coordinator then receives a few bytes a step instead of the batch's activations.
   */
  private get lossOnly(): boolean {
    return this.mode === 'replicated' && !this.remotePlan?.active && !this.serving && !this.verifier.enabled && this.hub?.ready().length === 1;
  }

  /**
   * The server plan: remote workers compute rows, the weight pass runs here and each step's parameters go
   * to the workers (sendParams), before the next rows, which need them, are asked for.
   */
  get serving(): boolean {
    return this.remotePlan?.serving ?? false;
  }

  /** How steps are distributed now: the step mode, or with remote replicas their plan (replicated, sharded or server). */
  get planName(): string {
    return this.remotePlan?.current ?? this.mode;
  }

  /** The plans chosen so far, with the cost model's estimates (remote replicas only). */
  get planChoices(): readonly PlanChoice[] {
    return this.remotePlan?.choices ?? [];
  }

  /** Whether rows are verified here (--verify): the committed state must then be here before a row pass. */
  get verifying(): boolean {
    return this.verifier.enabled;
  }

  /** False with --threads 0: local slots then only apply the optimizer and evaluate. */
  private get localComputes(): boolean {
    return this.mode !== 'replicated';
  }

  get description(): string {
    const joined = this.hub ? this.hub.ready().length + this.hub.standby().length : 0;
    const standby = this.hub?.standby().length ? ` (${this.hub.standby().length} on standby)` : '';
    const remote = this.hub ? `, remote workers via ${joined ? `${joined} connected${standby}` : 'none yet'}` : '';
    const resident = this.mode === 'whole' && this.local.capabilities.deviceState ? ', parameters and Adam moments kept on the device' : '';
    if (this.localComputes) return `${this.local.description}${resident}${remote}`;
    const plan = this.remotePlan?.current ?? 'replicated';
    if (plan === 'server') return `no local rows (remote workers compute them; the weight pass and Adam on ${this.local.description}, parameters sent back)${remote}`;
    const replicas = plan === 'sharded' ? 'remote replicas share the weight pass by output units' : 'remote replicas apply the steps';
    return `no local compute (${replicas}; evaluation here)${remote}`;
  }

  /** Every engine/device a remote worker joined with (see RemoteHub.kinds). */
  get remoteKinds(): string[] {
    return [...(this.hub?.kinds ?? [])];
  }

  // ------------------------------------------------------------ membership, at step boundaries only

  /**
   * Whether workers authenticated (or must resynchronise) and wait for the committed state; sharded, also
   * when the units must be shared anew (an owner left, or its slice was lost).
   */
  hasJoiners(): boolean {
    return (this.hub?.joining().length ?? 0) > 0 || (this.remotePlan?.stale ?? false);
  }

  /** Whether nobody could compute rows now: no local compute and no ready remote worker. */
  nobodyComputes(): boolean {
    return !this.localComputes && (this.hub?.ready().length ?? 0) === 0;
  }

  /** Sends the committed state to the joiners, which makes them participants from this step on. */
  async admit(state: JoinState): Promise<void> {
    // A sole member asked early for a step's rows as their losses only may apply that step before anybody
    // else could get its rows: when others are to be admitted, it is sent the state too, and those rows dropped.
    const early = this.prefetched;
    if (early?.lossOnly && this.hub && this.hub.joining().length + this.hub.standby().length > 0) {
      for (const job of early.remote) this.hub.resync(job.worker);
      early.resent = true;
    }
    if (this.remotePlan) await this.remotePlan.admit(state);
    else this.hub?.admit(state);
  }

  /** Remote workers that joined: ready, on standby, or authenticated and waiting for the state. */
  remoteMembers(): number {
    return this.joinedWorkers().length;
  }

  /** The ranks the joined remote workers said they have (those of a launched job; others have none). */
  remoteRanks(): Set<number> {
    const members = this.joinedWorkers();
    return new Set(members.flatMap((w) => (w.rank === undefined ? [] : [w.rank])));
  }

  private joinedWorkers(): RemotePeer[] {
    return this.hub ? [...this.hub.ready(), ...this.hub.standby(), ...this.hub.joining()] : [];
  }

  /**
   * Announces `reason` and waits until some worker authenticates (true), `ms` pass (false), or `signal`
   * aborts (throws: a run stopped while it waits for workers ends like one stopped mid-step).
   */
  async waitForJoin(step: number, reason: string, { ms, signal }: { ms?: number; signal?: AbortSignal } = {}): Promise<boolean> {
    this.onEvent({ type: 'waiting', reason });
    if (signal?.aborted) throw stoppedWaiting(step);
    let timer: NodeJS.Timeout | undefined;
    let onAbort = () => {};
    const ends = [
      this.hub!.waitForWorker().then(() => true),
      new Promise<boolean>((resolve) => ms !== undefined && (timer = setTimeout(() => resolve(false), ms))),
      new Promise<boolean>((_, reject) => signal?.addEventListener('abort', (onAbort = () => reject(stoppedWaiting(step))))),
    ];
    try {
      return await Promise.race(ends);
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Waits until some worker has authenticated (the trainer then admits it). */
  async waitForParticipant(step: number, signal?: AbortSignal): Promise<void> {
    await this.waitForJoin(step, `step ${step}: no worker is connected; waiting for one`, { signal });
  }

  // ------------------------------------------------------------ the row pass

  /**
   * Forward and backward rows of the batch (dataset samples `index`) on the participants; on success the
   * batch buffers hold every row's loss, activations and deltas. `stateIsHere`: this process holds the
   * committed state, so rows a worker sent back non-finite can be judged here.
   */
  async computeRows(step: number, generation: number, index: Int32Array, microBatch: number, stateIsHere: boolean): Promise<RowsOutcome> {
    const batch = index.length;
    // Sharded: the last step must have landed on every owner, and the owners must still be the members.
    this.remotePlan?.beginStep(step);
    this.rowsGeneration = generation;
    if (this.remotePlan && (!(await this.remotePlan.settle()) || this.remotePlan.stale)) return { done: false, needs: 'state' };
    this.memory.batch.index.set(index);
    const shards = microShards(batch, microBatch);
    let plans: Plan[] = await this.takePrefetched(step);
    let todo: Range[] = plans.length > 0 ? [] : [[0, shards.length]];
    let rowsHere = true;
    let direct = false;
    while (plans.length > 0 || todo.length > 0) {
      if (todo.length > 0 && this.nobodyComputes()) return { done: false, needs: 'participant' };
      // One range a round: a remote worker holds one rows request at a time.
      if (todo.length > 0) plans.push(this.plan(step, batch, shards, todo.shift()!, index));
      direct ||= plans.some((plan) => plan.direct);
      const outcomes = await Promise.all(plans.map((plan) => this.execute(plan, generation)));
      plans = [];
      todo = coalesce([...todo, ...outcomes.flatMap((o) => o.failed)]);
      // Rows lost when the members must be sent the state anyway (an owner left, a peer link broke) are not
      // redone: the step is, after the boundary (and a member waiting on a peer gives no answer until then).
      if (todo.length > 0 && this.remotePlan?.stale) return { done: false, needs: 'state' };
      const suspects = outcomes.flatMap((o) => o.suspect);
      const accepted = outcomes.flatMap((o) => o.accepted);
      rowsHere &&= outcomes.every((o) => o.rowsHere);
      // Without --verify nothing is drawn: the row pass is the training step's hot path.
      const toVerify = this.verifier.enabled && accepted.some((a) => this.verifier.pick(step, a.shardRange).length > 0);
      if ((suspects.length > 0 || toVerify) && !stateIsHere) return { done: false, needs: 'state' };
      if (suspects.length > 0) await this.judge(suspects, step, generation, batch, shards);
      if (toVerify) todo = coalesce([...todo, ...(await this.verify(accepted, step, generation, batch, shards))]);
    }
    if (!this.rowsFinite(0, batch)) return { done: true, replicated: false, rowsHere };
    // An owner lost during the row pass leaves units nobody can update: shared anew after the boundary.
    if (this.remotePlan?.stale) return { done: false, needs: 'state' };
    if (this.remotePlan?.active) {
      this.remotePlan.request(step, batch, direct);
      return { done: true, replicated: true, rowsHere };
    }
    // The server plan's step is applied here (the trainer's weight pass), and then sent (sendParams).
    if (this.serving) return { done: true, replicated: false, rowsHere };
    const replicas = this.hub?.broadcastUpdate(step, batch, this.compactRows) ?? 0;
    return { done: true, replicated: !this.localComputes && replicas > 0, rowsHere };
  }

  /** The row pass of batch `index` on the local slots alone (a replay, or rows to recompute here). */
  async computeRowsHere(step: number, generation: number, index: Int32Array, microBatch: number): Promise<void> {
    this.memory.batch.index.set(index);
    await this.runLocalRows(step, generation, index.length, microShards(index.length, microBatch));
  }

  /**
   * Computes here the rows that workers sent back non-finite: a worker whose rows come out finite here
   * is dropped; otherwise the rows really are non-finite, and the trainer stops on them, naming the
   * micro-shard.
   */
  private async judge(suspects: Suspect[], step: number, generation: number, batch: number, shards: Range[]): Promise<void> {
    for (const { worker, reason, shardRange } of suspects) {
      const rows = shards.slice(shardRange[0], shardRange[1]);
      const [r0, r1] = [rows[0][0], rows[rows.length - 1][1]];
      await this.runLocalRows(step, generation, batch, rows);
      this.ledger.credit(LOCAL, r1 - r0);
      if (this.rowsFinite(r0, r1)) this.hub!.reject(worker, `rowsDone: ${reason.replace(/^rowsDone: /, '')}, where this coordinator computes finite values`);
    }
  }

  /**
   * --verify: computes here the drawn micro-shards of each participant's accepted rows and compares them bit
   * for bit with what it sent; a participant that differs is dropped, and all its rows of the step are
   * returned to be redone (the drawn ones already hold this process's values).
   */
  private async verify(accepted: AcceptedRows<RemotePeer>[], step: number, generation: number, batch: number, shards: Range[]): Promise<Range[]> {
    const redo: Range[] = [];
    for (const { peer, shardRange } of accepted) {
      for (const s of this.verifier.pick(step, shardRange)) {
        const theirs = rowsOf(this.memory, shards[s], this.compactRows);
        await this.runLocalRows(step, generation, batch, [shards[s]]);
        if (sameBits(theirs, rowsOf(this.memory, shards[s], this.compactRows))) continue;
        const [r0, r1] = shards[s];
        this.hub!.reject(peer, `--verify: its rows ${r0}–${r1 - 1} of step ${step} differ from this coordinator's own computation`);
        redo.push(shardRange);
        break;
      }
    }
    return redo;
  }

  /** Whether batch rows [r0, r1) have a finite loss (non-finite activations or deltas make it so too). */
  private rowsFinite(r0: number, r1: number): boolean {
    const loss = this.memory.batch.rowLoss;
    for (let r = r0; r < r1; r++) if (!Number.isFinite(loss[r])) return false;
    return true;
  }

  /**
   * The state of step `step` from a remote replica (trying each ready one in turn; sharded, put together
   * from every owner's shard), confirmed by the other replicas (confirm), or undefined when no replica
   * could give one that is: the steps are then computed again here.
   */
  async replicaState(step: number): Promise<StateArrays | undefined> {
    if (this.remotePlan?.current === 'sharded') return this.remotePlan.gather(step, this.verifier.enabled ? (s) => this.checkSlices(s) : undefined);
    for (const worker of this.hub?.ready() ?? []) {
      if (worker.status !== 'ready') continue; // dropped or resynchronised by an earlier try
      let state: StateArrays;
      try {
        state = await this.hub!.fetchState(worker, step);
      } catch {
        continue; // it left or timed out (and was dropped): ask the next one
      }
      const verdict = await this.confirm(worker, step, state.params);
      if (verdict === 'confirmed') return state;
      if (verdict === 'undecided') return undefined;
    }
    return undefined;
  }

  /**
   * Whether the other replicas confirm the parameters `from` sent for `step`: every ready replica's checksum
   * of that step is asked, and more than half of those answering (the sender's own included) must have the
   * SHA-256 of what it sent; those that differ are sent the state again. A state most checksums contradict
   * drops its sender (another is asked); no majority either way is undecided (the steps are computed
   * again here). A sole replica has no one to be compared with: its state is taken as it is (as its rows).
   */
  private async confirm(from: RemotePeer, step: number, params: Float32Array): Promise<'confirmed' | 'contradicted' | 'undecided'> {
    const sums = await this.hub!.checksumsAt(step);
    this.confirmed = undefined;
    if (sums.size <= 1) {
      this.confirmed = { step, sums, resynced: [] };
      return 'confirmed';
    }
    const sha = paramsSha256(params);
    const counts = new Map<string, number>();
    for (const s of sums.values()) counts.set(s, (counts.get(s) ?? 0) + 1);
    const majority = [...counts].find(([, n]) => n * 2 > sums.size)?.[0];
    if (majority === sha) {
      const resynced: string[] = [];
      for (const [worker, s] of sums) {
        if (s === sha) continue;
        this.hub!.resync(worker);
        resynced.push(worker.name);
      }
      this.confirmed = { step, sums, sha, resynced };
      return 'confirmed';
    }
    if (majority === undefined) return 'undecided';
    this.hub!.reject(from, `its state of step ${step} does not match the checksum ${counts.get(majority)} of ${sums.size} replicas (itself included) sent`);
    return 'contradicted';
  }

  /**
   * --verify, sharded steps: for a drawn step, one unit of each layer of each owner's share is computed
   * again here from that step's state and rows (still in memory: verifying keeps the state here before every
   * row pass, and sharded rows come in full), and compared bit for bit with the owner's slice; an owner whose
   * parameters differ is dropped (its slice reached the others: they are sent the state again).
   */
  private async checkSlices({ step, batch, slices }: StepSlices): Promise<RemotePeer[]> {
    if (this.verifier.pick(step, [0, 1]).length === 0) return [];
    const spec = this.memory.spec;
    const next = optimizerMemoryOf(this.memory).paramsOf(this.rowsGeneration ^ 1);
    const wrong: RemotePeer[] = [];
    for (const [peer, slice] of slices) {
      const units = slice.units.map(([u0, u1]) => [u0, Math.min(u1, u0 + 1)] as Range);
      await this.local.runPass([{ kind: 'weights', step, generation: this.rowsGeneration, batch, units, slot: 0 }]);
      const theirs = new Float32Array(next.length);
      placeSlice(spec, theirs, slice.units, slice.params);
      if (sameBits([packSlice(spec, next, units)], [packSlice(spec, theirs, units)])) continue;
      this.hub!.reject(peer, `--verify: its parameters of step ${step} differ from this coordinator's own computation`);
      wrong.push(peer);
    }
    return wrong;
  }

  /** Reports that the local slots replay steps the replicas had applied (they are all gone). */
  replaying(from: number, to: number): void {
    this.replayedBelow = to;
    this.onEvent({ type: 'replay', from, to });
  }

  /**
   * Sends the next step's row requests to the remote workers now, so that they compute them right after
   * applying this step, while the coordinator is still busy with its own weight pass. Their answers are
   * only copied into the batch buffers when that step's row pass begins.
   */
  prefetch(step: number, index: Int32Array, microBatch: number): void {
    // Sharded among several owners: a replica could compute the next rows only once every slice of this
    // step came, which is after the rows request would have come anyway.
    if (!this.hub || this.hub.ready().length === 0 || this.remotePlan?.active) return;
    const shards = microShards(index.length, microBatch);
    this.prefetched = this.plan(step, index.length, shards, [0, shards.length], index);
  }

  /** Server plan: the parameters step `step` gave, to every worker (which commits them). */
  sendParams(step: number, params: Float32Array): void {
    this.hub?.broadcastParams(step, params);
  }

  /**
   * The plan asked for early for `step`, if it still holds: rows asked for in another form than rows travel
   * in now (the plan changed at an admission), or of members sent the state since (admit), are awaited and
   * dropped — the members, sent the state after those requests, compute the step's rows again in the new form.
   */
  private async takePrefetched(step: number): Promise<Plan[]> {
    const early = this.prefetched;
    this.prefetched = undefined;
    if (early?.step !== step) return [];
    if (early.compact === this.compactRows && !early.resent) return [early];
    await Promise.all(early.remote.map((job) => job.result));
    return [];
  }

  /** Assigns micro-shards [s0, s1) to the participants by speed, and sends the remote requests at once. */
  private plan(step: number, batch: number, shards: Range[], [s0, s1]: Range, index: Int32Array): Plan {
    const remotes = this.hub?.ready() ?? [];
    const weights = withAverage([...(this.localComputes ? [this.ledger.localSpeed] : []), ...remotes.map((w) => w.speed)]);
    const counts = apportion(s1 - s0, weights);
    // Between peers only when every member computes some of the rows (and so holds the batch's samples).
    const direct = !this.localComputes && counts.every((c) => c > 0) && !!this.remotePlan?.direct();
    const plan: Plan = { step, batch, compact: this.compactRows, lossOnly: this.lossOnly || direct, direct, remote: [] };
    let next = s0;
    if (this.localComputes) {
      if (counts[0] > 0) plan.local = shards.slice(next, next + counts[0]);
      next += counts.shift()!;
    }
    remotes.forEach((worker, i) => {
      if (counts[i] === 0) return;
      const shardRange: Range = [next, next + counts[i]];
      next += counts[i];
      const rows: Range = [shards[shardRange[0]][0], shards[shardRange[1] - 1][1]];
      const form = { compact: plan.compact, lossOnly: plan.lossOnly, ...(direct ? { peers: true } : {}) };
      const sent = performance.now();
      // Its result, set next, notes when the answer came.
      const job = { worker, rows, shardRange, sent, arrived: sent } as RemoteJob;
      job.result = this.hub!.requestRows(worker, step, batch, rows, index, form).then(
        (done) => ((job.arrived = performance.now()), done),
        (e: Error) => e,
      );
      plan.remote.push(job);
    });
    return plan;
  }

  /**
   * Computes a plan's local part and collects its remote answers; returns the shard ranges to redo, those
   * whose rows came back non-finite (to be checked here), and whether every row it accepted is here whole.
   */
  private async execute(plan: Plan, generation: number): Promise<{ failed: Range[]; suspect: Suspect[]; accepted: AcceptedRows<RemotePeer>[]; rowsHere: boolean }> {
    const started = performance.now();
    let localDone = started;
    if (plan.local) {
      const count = plan.local[plan.local.length - 1][1] - plan.local[0][0];
      await this.runLocalRows(plan.step, generation, plan.batch, plan.local);
      localDone = performance.now();
      this.ledger.local(count, localDone - started);
      this.tally.add(LOCAL, { rows: count, computeMs: localDone - started });
    }
    const failed: Range[] = [];
    const suspect: Suspect[] = [];
    const accepted: AcceptedRows<RemotePeer>[] = [];
    for (const job of plan.remote) {
      const done = await job.result;
      if (isSuspect(done)) {
        suspect.push({ worker: done.worker, reason: done.reason, shardRange: job.shardRange });
        continue;
      }
      if (done instanceof Error) {
        this.onEvent({ type: 'redo', rows: job.rows, reason: done.message });
        failed.push(job.shardRange);
        continue;
      }
      const count = job.rows[1] - job.rows[0];
      if (plan.lossOnly) this.memory.batch.rowLoss.set(done.rowLoss, done.range[0]);
      else this.copyRows(done.range, done.rowLoss, done.hidden, done.deltas);
      // Its speed is what it reports its rows took to compute, not the round trip: the round trip also holds
      // the previous step's weight pass, the same for every replica whatever its share, which made the
      // smaller share look slower per row, and shrink further (two identical workers ended near 75 % / 25 %).
      job.worker.speed = smooth(job.worker.speed, count / Math.max(0.01, done.ms > 0 ? done.ms : performance.now() - job.sent));
      this.ledger.credit(job.worker.name, count);
      const wireMs = Math.max(0, job.arrived - job.sent - done.ms - done.queuedMs);
      this.tally.add(job.worker, { rows: count, computeMs: done.ms, applyMs: done.applyMs, wireMs, waitMs: done.waitMs });
      accepted.push({ peer: job.worker, shardRange: job.shardRange });
    }
    if (plan.remote.length > 0) {
      const waited = performance.now() - localDone;
      this.ledger.waited(waited);
      if (plan.local) this.tally.add(LOCAL, { waitMs: waited });
    }
    return { failed, suspect, accepted, rowsHere: accepted.length === 0 || !(plan.compact || plan.lossOnly) };
  }

  private async runLocalRows(step: number, generation: number, batch: number, shards: Range[]): Promise<void> {
    await this.local.runPass(shardGroups(shards, this.local.size).map((range) => ({ kind: 'rows', step, generation, batch, range }) as Task));
  }

  private copyRows([r0, r1]: Range, rowLoss: Float32Array, hidden: Float32Array[], deltas: Float32Array[]): void {
    this.memory.batch.rowLoss.set(rowLoss, r0);
    placeBatchRows(this.memory, r0, hidden, deltas);
    // The weight pass reads the batch's pixels too; a remote worker's rows were never gathered locally.
    gatherBatchRows(this.memory, [r0, r1], true);
  }

  /** Both passes of a step on the single local slot ('whole' mode). */
  async computeWholeStep(step: number, generation: number, index: Int32Array): Promise<TaskResult[]> {
    const batch = index.length;
    this.memory.batch.index.set(index);
    const started = performance.now();
    const results = await this.local.runPass([{ kind: 'step', step, generation, batch }]);
    const ms = performance.now() - started;
    this.ledger.local(batch, ms);
    // Both passes in one task: its weight pass is not timed apart from its rows.
    this.tally.add(LOCAL, { rows: batch, computeMs: ms });
    return results;
  }

  /** Gradient reduction and Adam on the local slots: the state's weight tasks (TrainingState.weightTasks). */
  async applyWeights(tasks: Task[]): Promise<TaskResult[]> {
    const started = performance.now();
    const results = await this.local.runPass(tasks);
    const ms = performance.now() - started;
    // A replay's weight passes would land in the next step's record, as local work with no rows.
    const replay = tasks.some((t) => t.step < this.replayedBelow);
    if (!replay) this.tally.add(LOCAL, { applyMs: ms });
    // The coordinator's rate for the server plan's estimate (its whole weight pass, here).
    const batch = tasks.find((t) => t.kind === 'weights')?.batch;
    if (batch && this.remotePlan) this.remotePlan.weighed(ms, batch);
    return results;
  }

  /** The local slots' engine and device, named in every record of the participants from now on (a session's, once). */
  describeLocal(kind: Pick<ParticipantStep, 'engine' | 'device'>): void {
    this.localKind = kind;
  }

  /**
   * Every participant's rows and times since the last call (one step): the local slots when they computed
   * or applied, every remote member in its state, and each member gone since, dropped with its reason.
   */
  takeParticipants(): ParticipantStep[] {
    const members = this.joinedWorkers();
    const gone = new Set([...this.recorded, ...this.tally.who()].filter((w): w is RemotePeer => w !== LOCAL && w.status === 'closed'));
    const steps: ParticipantStep[] = [];
    if (this.localComputes || this.tally.has(LOCAL)) steps.push({ id: LOCAL, kind: 'local', state: 'computing', ...this.tally.shareOf(LOCAL), ...this.localKind });
    for (const peer of [...members, ...gone]) steps.push(remoteStep(peer, this.tally.shareOf(peer)));
    this.recorded = members;
    this.tally.clear();
    return steps;
  }

  /** The committed state from the local slot's device (a GPU that keeps it) into the shared memory. */
  async pullState(step: number, generation: number): Promise<void> {
    await this.local.runPass([{ kind: 'pull', step, generation, committed: true }]);
  }

  evaluate(step: number, generation: number, ranges: Range[]): Promise<TaskResult[]> {
    return this.local.runPass(ranges.map((range) => ({ kind: 'eval', step, generation, range }) as Task));
  }

  /**
   * Compares every remote replica with the coordinator's parameters (`sha256`, of step `step`); a diverged
   * one is resynchronised. A replica that has not answered by the step deadline (--step-timeout-ms) is not
   * compared this time. When this state is the replica state confirm() just took, its checksums are reused
   * (not asked again), and those it resynced are named diverged too.
   */
  async verifyReplicas(step: number, sha256: string): Promise<string[]> {
    if (!this.hub) return [];
    const confirmed = this.confirmed;
    this.confirmed = undefined;
    const reuse = confirmed?.step === step && (confirmed.sha === undefined || confirmed.sha === sha256);
    const diverged = reuse ? [...confirmed.resynced] : [];
    for (const [worker, sha] of reuse ? confirmed.sums : await this.hub.checksumsAt(step)) {
      // Reused: a replica resynced or gone since is no longer compared (as one asked again would not answer).
      if (sha === sha256 || (reuse && worker.status !== 'ready')) continue;
      diverged.push(worker.name);
      this.hub.resync(worker);
    }
    return diverged;
  }

  /** Bytes sent to and received from remote workers so far. */
  bytesMoved(): number {
    return this.hub?.bytesMoved ?? 0;
  }

  /** Shares of the rows computed since the last call, and the time spent waiting on the network. */
  takeShares(): WorkShares {
    return this.ledger.take();
  }

  async close(): Promise<void> {
    await Promise.all([this.local.close(), this.hub?.close()]);
  }
}

/** A peer's status as a participant's state (an authenticating peer is no member, and is never asked). */
const STATES: Record<RemotePeer['status'], ParticipantState> = { authenticating: 'joining', joining: 'joining', ready: 'computing', standby: 'standby', closed: 'dropped' };

function remoteStep(peer: RemotePeer, share: StepShare): ParticipantStep {
  const state = STATES[peer.status];
  return {
    id: peer.participant,
    kind: 'remote',
    address: peer.address,
    state,
    ...(state === 'dropped' ? { reason: (peer.leftReason ?? 'left').split('\n')[0] } : {}),
    engine: peer.hello?.engine,
    device: peer.hello?.device,
    ...share,
  };
}

// By name: the remote module (and ws) is only loaded when the coordinator listens.
function isSuspect(result: unknown): result is SuspectRows {
  return result instanceof Error && result.name === 'SuspectRows';
}
