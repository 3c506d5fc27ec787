/**
 * One optimizer step at a time: the membership boundary, the row pass on the participants, the loss, the
 * weight pass (gradient reduction and Adam) on the local slots, then commit; and evaluation on the test
 * set. Knows compute only through the scheduler (what it asks of it: StepScheduler) and the state only
 * through TrainingState.
 */
import type { TrainConfig } from '../config.js';
import type { Dataset } from '../data/datasets.js';
import { deviceStateLost, nonFiniteGradient, nonFiniteLoss, workersMissing, workersMissingRanks } from '../errors.js';
import type { AdamOptions } from '../optim/adam.js';
import type { Scheduler } from '../cluster/scheduler.js';
import type { Team } from '../cluster/team.js';
import { batchCount, evenSplit, microShards } from '../cluster/plan.js';
import type { TaskResult } from '../cluster/slot_runner.js';
import type { TrainingMemory } from '../cluster/training_memory.js';
import type { TrainingState } from '../cluster/training_state.js';

/**
 * Steps a coordinator without compute threads lets its remote replicas run ahead before it takes their
 * state: bounds what it replays on its own if every replica is lost (~3 s for the tutorial MLP). Taking
 * the state (~7 MB) costs ~50 ms on loopback, so it is rarely worth doing more often than each epoch's
 * evaluation does anyway.
 */
const MAX_UNAPPLIED = 1000;

/**
 * The same bound for sharded steps: there every owner's loss takes a replay from the last gathered state
 * (its moments go with it), so the state is gathered more often; a gather moves 12 bytes a parameter once.
 */
const MAX_UNAPPLIED_SHARDED = 100;

/**
 * What the trainer asks of the scheduler (Scheduler implements it): the passes, the membership boundary and
 * the replicas' state, not the hub or the plan behind them. The trainer and its tests depend on this.
 */
export interface StepScheduler
  extends Pick<
    Scheduler,
    | 'mode' | 'verifying' | 'serving' | 'planName'
    | 'computeWholeStep' | 'computeRows' | 'computeRowsHere' | 'applyWeights' | 'evaluate' | 'pullState'
    | 'hasJoiners' | 'nobodyComputes' | 'admit' | 'waitForParticipant' | 'waitForJoin' | 'remoteMembers' | 'remoteRanks'
    | 'prefetch' | 'sendParams' | 'replicaState' | 'replaying'
  > {
  /** How many weight and evaluation tasks to plan (one per local slot). */
  readonly local: Pick<Team, 'size'>;
}

export interface EvalResult {
  accuracy: number;
  avgLoss: number;
}

export class Trainer {
  /**
   * With replicated steps (--threads 0), the batches of the steps the replicas applied and this process
   * has not (yet): the state's memory holds the state of step `state.step - unapplied.length`.
   */
  private unapplied: Int32Array[] = [];

  constructor(
    readonly config: TrainConfig,
    readonly dataset: Dataset,
    readonly scheduler: StepScheduler,
    readonly memory: TrainingMemory,
    readonly state: TrainingState,
    readonly adam: AdamOptions,
    /** Aborts a wait for workers too (a run stopped with nobody to compute). */
    private readonly signal?: AbortSignal,
  ) {}

  /**
   * One optimizer step on the given dataset rows; returns the batch-mean loss. `next`, the following
   * step's rows when known, lets remote workers start on them while this step's weight pass runs.
   */
  async trainStep(index: Int32Array, next?: Int32Array): Promise<number> {
    if (this.scheduler.mode === 'whole') {
      // A whole step writes only into the next generation (on a GPU, the device keeps the state it started
      // from), so a non-finite loss found after it loses nothing.
      const results = await this.scheduler.computeWholeStep(this.state.step, this.state.generation, index);
      return this.commit(index, results);
    }
    // A pass that could not finish with its participants is redone after the boundary; membership
    // changes are not failures and are not counted.
    for (;;) {
      await this.boundary();
      // Verifying computes rows here, on the committed state: take it before the pass, not after the rows
      // came (a retry would ask a replica for a step it may already have applied).
      if (this.scheduler.verifying) await this.current();
      const pass = await this.scheduler.computeRows(this.state.step, this.state.generation, index, this.config.microBatch, this.unapplied.length === 0);
      if (pass.done) return this.afterRows(index, next, pass);
      if (pass.needs === 'state') await this.current();
    }
  }

  /**
   * The step boundary, the one place where membership changes: joiners get the committed state (made
   * current here first), and with nobody left to compute the run waits for a worker. With no replica left,
   * catching up at once (rather than when someone joins) finds at once a step that cannot be applied.
   */
  private async boundary(): Promise<void> {
    for (;;) {
      if (!this.scheduler.hasJoiners() && !this.scheduler.nobodyComputes()) return;
      await this.current();
      // Asked again: catching up takes time, and a worker may have joined meanwhile.
      if (this.scheduler.hasJoiners()) {
        const { spec, batchSize } = this.memory;
        await this.scheduler.admit({ ...this.state.snapshot(), spec, batchSize, adam: this.adam });
      } else {
        await this.scheduler.waitForParticipant(this.state.step, this.signal);
      }
    }
  }

  /**
   * Before the first step: waits until `count` remote workers have joined and admits them, so that a
   * late joiner does not count as slow steps (torchrun's --nnodes); fails after `timeoutMs` naming how
   * many are missing, and which of `ranks` (a launched job's: dtrain run) have not joined.
   */
  async gather(count: number, timeoutMs: number, ranks?: readonly number[]): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (let have = this.scheduler.remoteMembers(); have < count; have = this.scheduler.remoteMembers()) {
      const left = deadline - performance.now();
      const reason = `step ${this.state.step}: waiting for ${count - have} more of ${count} remote workers (--min-workers)`;
      if (left <= 0 || !(await this.scheduler.waitForJoin(this.state.step, reason, { ms: left, signal: this.signal }))) {
        if (this.scheduler.remoteMembers() < count) throw this.missing(count, timeoutMs, ranks);
      }
    }
    await this.boundary();
  }

  private missing(count: number, timeoutMs: number, ranks?: readonly number[]): Error {
    const joined = this.scheduler.remoteMembers();
    const present = this.scheduler.remoteRanks();
    const absent = ranks?.filter((r) => !present.has(r)) ?? [];
    return absent.length > 0 ? workersMissingRanks(count, joined, timeoutMs, absent) : workersMissing(count, joined, timeoutMs);
  }

  /** After the rows: the replicas apply the step, or the weight pass runs here. */
  private async afterRows(index: Int32Array, next: Int32Array | undefined, { replicated, rowsHere }: { replicated: boolean; rowsHere: boolean }): Promise<number> {
    // The loss first: rows of the next step are asked for only when this one goes on.
    const loss = this.batchLoss(index.length);
    const serving = this.scheduler.serving;
    // Server plan: the next rows need this step's parameters, so they are asked for after those are sent.
    if (next && !serving) this.scheduler.prefetch(this.state.step + 1, next, this.config.microBatch);
    if (replicated) {
      // The remote replicas apply this step; this process catches up when it needs the state.
      this.unapplied.push(index.slice());
      this.state.commit();
      if (this.unapplied.length >= (this.scheduler.planName === 'sharded' ? MAX_UNAPPLIED_SHARDED : MAX_UNAPPLIED)) await this.current();
      return loss;
    }
    const replayed = this.unapplied.length > 0 && (await this.current());
    if (replayed || !rowsHere) {
      // No replica took this step, and the catch-up replayed steps through the batch buffers, or the remote
      // rows came without their inner deltas (compact, or losses only): compute the rows here for the weight pass.
      await this.scheduler.computeRowsHere(this.state.step, this.state.generation, index, this.config.microBatch);
    }
    const step = this.state.step;
    await this.commit(index);
    if (serving) {
      // From this memory: a GPU gives them back first.
      await this.current();
      this.scheduler.sendParams(step, this.state.params);
      if (next) this.scheduler.prefetch(step + 1, next, this.config.microBatch);
    }
    return loss;
  }

  /** The batch-mean loss of the rows in the batch buffers; throws if it is not finite. */
  private batchLoss(rows: number): number {
    let lossSum = 0;
    for (let r = 0; r < rows; r++) lossSum += this.memory.batch.rowLoss[r];
    if (!Number.isFinite(lossSum)) throw nonFiniteLoss(this.state.step, this.locateNonFinite([this.memory.batch.rowLoss], [1], rows));
    return lossSum / rows;
  }

  /**
   * Checks the loss, runs the weight pass on the local slots (unless a whole-step task already did:
   * `results`), checks the gradient and commits the step.
   */
  private async commit(index: Int32Array, results?: TaskResult[]): Promise<number> {
    const whole = results !== undefined;
    const rows = index.length;
    const loss = this.batchLoss(rows);
    results ??= await this.scheduler.applyWeights(this.state.weightTasks(rows, this.scheduler.local.size));
    const bad = [...new Set(results.flatMap((r) => r.nonFiniteLayers))].sort((a, b) => a - b);
    if (bad.length > 0) {
      // A whole step keeps activations and deltas inside the engine: the row pass recomputes them to locate the culprit.
      if (whole) {
        await this.current();
        await this.scheduler.computeRowsHere(this.state.step, this.state.generation, index, this.config.microBatch);
      }
      const l = bad[0];
      const { batch } = this.memory;
      const sources = [l === 0 ? batch.x : batch.hidden[l - 1], batch.deltas[l]];
      const widths = [this.state.spec.sizes[l], this.state.spec.sizes[l + 1]];
      throw nonFiniteGradient(this.state.step, `layer ${l} (W${l}, b${l}), ${this.locateNonFinite(sources, widths, rows)}`);
    }
    this.state.commit();
    return loss;
  }

  /**
   * Makes this process's state the committed one: from the GPU that holds it after steps there, and
   * after steps that only the remote replicas applied: it takes a replica's state, or, when no replica is
   * left, replays those steps on the local slots from the state it last had (the batches are known and the
   * result is bitwise the same). Returns true if it replayed (which reuses the batch buffers).
   */
  async current(): Promise<boolean> {
    const replayed = await this.catchUp();
    // Last: a replay on a GPU leaves the state there too.
    if (this.state.onDevice) await this.pullFromDevice();
    return replayed;
  }

  /** The steps only the remote replicas applied: a replica's state, or a replay here. True if it replayed. */
  private async catchUp(): Promise<boolean> {
    if (this.unapplied.length === 0) return false;
    const taken = await this.scheduler.replicaState(this.state.step);
    if (taken) {
      this.state.load(taken, this.state.step);
      this.unapplied = [];
      return false;
    }
    const steps = this.unapplied;
    this.unapplied = [];
    this.state.rewind(steps.length);
    this.scheduler.replaying(this.state.step, this.state.step + steps.length);
    for (const index of steps) {
      await this.scheduler.computeRowsHere(this.state.step, this.state.generation, index, this.config.microBatch);
      await this.commit(index);
    }
    return true;
  }

  /**
   * Steps on a GPU leave the state there (Engine.deviceState): it comes back here. If the device fails
   * first, the state is the last one this process held, and the run ends saying so.
   */
  private async pullFromDevice(): Promise<void> {
    const step = this.state.step;
    try {
      await this.scheduler.pullState(step, this.state.generation);
    } catch (e) {
      throw deviceStateLost(step, this.state.fallBackToHost(), (e as Error).message);
    }
  }

  /** Names the micro-shard holding the first non-finite value among the batch rows of the given buffers. */
  private locateNonFinite(buffers: Float32Array[], widths: number[], rows: number): string {
    const shards = microShards(rows, this.config.microBatch);
    for (let r = 0; r < rows; r++) {
      for (let k = 0; k < buffers.length; k++) {
        const row = buffers[k].subarray(r * widths[k], (r + 1) * widths[k]);
        if (row.some((v) => !Number.isFinite(v))) {
          const s = shards.findIndex(([a, b]) => r >= a && r < b);
          return `micro-shard ${s} (batch rows ${shards[s][0]}–${shards[s][1] - 1}, first at dataset sample ${this.memory.batch.index[r]})`;
        }
      }
    }
    return 'no single micro-shard (the sum overflowed)';
  }

  /** Accuracy and the tutorial's average loss (the mean of per-batch mean losses) on the test set. */
  async evaluate(): Promise<EvalResult> {
    await this.current();
    const { test, evalLoss, evalPredicted } = this.memory;
    await this.scheduler.evaluate(this.state.step, this.state.generation, evenSplit(test.count, this.scheduler.local.size));
    const labels = this.dataset.test.labels;
    let correct = 0;
    let lossOfBatches = 0;
    const batchSize = this.config.batchSize;
    for (let start = 0; start < test.count; start += batchSize) {
      const end = Math.min(test.count, start + batchSize);
      let sum = 0;
      for (let i = start; i < end; i++) {
        sum += evalLoss[i];
        if (evalPredicted[i] === labels[i]) correct++;
      }
      lossOfBatches += sum / (end - start);
    }
    return { accuracy: (100 * correct) / test.count, avgLoss: lossOfBatches / batchCount(test.count, batchSize) };
  }
}
