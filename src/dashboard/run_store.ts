/**
 * What the dashboard knows of a run, in bounded memory whatever its length: the step curves (downsampled
 * by averaging neighbours once they pass MAX_POINTS), the epochs, every participant's recent rows and times,
 * the plans and the cluster's last events, the run's identity, progress and end. Fed by the run's events
 * live, or by metrics.jsonl and summary.json (a resumed or finished run); read as a snapshot by a page that
 * opens, and as updates by the pages already open.
 */
import { slowestParticipant, type ParticipantState, type ParticipantsRecord, type ParticipantStep } from '../cluster/participant_stats.js';
import type { PlanEstimate } from '../cluster/cost_model.js';
import type { EpochResult, RunSummary } from '../report/summary.js';
import { clusterLine, type RunClusterEvent } from '../report/cluster_line.js';
import type { TrainEvent } from '../train/events.js';

/** Points of each step curve kept at most; past it neighbours are averaged in pairs (a page gets them all). */
export const MAX_POINTS = 4000;
/** Steps whose times make the median, tail and ETA: the recent ones, as the run goes now. */
const RECENT_STEPS = 512;
/** Participant records a participant's share and times are averaged over. */
const RECENT_RECORDS = 50;
/** Participants remembered (the dropped ones go first). */
const MAX_PARTICIPANTS = 256;
/** Cluster events listed. */
const MAX_EVENTS = 100;

/** The step curves as columns: x is the last step of each point, the rest are means (samples a sum). */
export interface StepColumns {
  step: number[];
  loss: number[];
  ms: number[];
  samplesPerSecond: number[];
}

export interface Identity {
  model: string;
  parameters: number;
  dataset: string;
  datasetSha256: string;
  trainSamples: number;
  testSamples: number;
  workers: string;
  listening?: string;
  outDir: string;
  config: Record<string, unknown>;
}

export interface Progress {
  step: number;
  epoch: number;
  batch: number;
  batches: number;
  /** Steps the run is configured for (--steps, else epochs × batches); 0 while unknown. */
  totalSteps: number;
  etaSeconds: number | null;
}

export interface StepStats {
  medianMs: number;
  p90Ms: number;
  p99Ms: number;
  samplesPerSecond: number;
  /** Steps these are computed over. */
  steps: number;
}

export interface ParticipantView {
  id: string;
  kind: ParticipantStep['kind'];
  address?: string;
  state: ParticipantState;
  reason?: string;
  engine?: string;
  device?: string;
  /** Share of the rows over the last 50 steps recorded, 0–1. */
  share: number;
  /** Rows per second of its own compute. */
  rowsPerSecond: number;
  /** Means a step over its recent steps, ms. */
  computeMs: number;
  applyMs: number;
  wireMs: number;
  waitMs: number;
  lastStep: number;
}

export interface PlanView {
  step: number;
  plan: string;
  reason: string;
  estimates: PlanEstimate[];
  rowsOnOne?: boolean;
  /** Mean step time measured while this plan was in force. */
  measuredMs: number | null;
}

export interface EpochView extends EpochResult {
  shares?: Record<string, number>;
}

/** An epoch as the page shows it, live or from metrics.jsonl alike: its result and the rows each participant computed. */
export function epochView(
  { epoch, steps, testAccuracy, testAvgLoss, trainLoss, seconds, samplesPerSecond }: EpochResult,
  shares: Record<string, number> | undefined,
): EpochView {
  return { epoch, steps, testAccuracy, testAvgLoss, trainLoss, seconds, samplesPerSecond, shares };
}

export interface Snapshot {
  /** true: a finished run's folder, nothing more will come. */
  finished: boolean;
  identity: Identity | null;
  progress: Progress;
  steps: StepColumns;
  stepStats: StepStats | null;
  epochs: EpochView[];
  participants: ParticipantView[];
  slowest: string | null;
  plans: PlanView[];
  events: { step: number; line: string }[];
  done: { paramsSha256: string; steps: number; msPerStep: number; samplesPerSecond: number; error?: string } | null;
}

/**
 * What changed since the last update: new step points, and each other part whole when it changed; when only
 * the plan in force was measured over more steps, its measuredMs alone.
 */
export type Update = Partial<Omit<Snapshot, 'steps'>> & { steps?: StepColumns; measuredMs?: number };

/** The parts sent whole when they change (the slowest goes with the participants it is one of). */
type Part = Exclude<keyof Snapshot, 'steps' | 'stepStats' | 'progress' | 'slowest'>;

const PARTS: readonly Part[] = ['finished', 'identity', 'epochs', 'participants', 'plans', 'events', 'done'];

/** A participant as its records left it: its latest state, and its recent records, summed only when read. */
interface ParticipantTotals {
  latest: ParticipantStep;
  /** Its recent records' rows and times, oldest first, and the step of each. */
  recent: ParticipantStep[];
  steps: number[];
  /** The step of its last record, to forget the dropped and the longest silent first. */
  seen: number;
}

const emptyColumns = (): StepColumns => ({ step: [], loss: [], ms: [], samplesPerSecond: [] });

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

export class RunStore {
  private identity: Identity | null = null;
  private readonly progress: Progress = { step: 0, epoch: 0, batch: 0, batches: 0, totalSteps: 0, etaSeconds: null };
  private columns = emptyColumns();
  /** Steps averaged into one point now (doubles at each halving). */
  private stride = 1;
  /** The point being filled while stride > 1. */
  private pending = { count: 0, step: 0, loss: 0, ms: 0, samples: 0 };
  private readonly recentMs: number[] = [];
  private readonly recentSamples: number[] = [];
  private readonly epochs: EpochView[] = [];
  private readonly participants = new Map<string, ParticipantTotals>();
  /** The step of the last participants record: shares are over the RECENT_RECORDS steps up to it. */
  private participantsStep = 0;
  private readonly plans: PlanView[] = [];
  private readonly planTotals: { ms: number; steps: number }[] = [];
  private readonly events: { step: number; line: string }[] = [];
  private done: Snapshot['done'] = null;
  private finished = false;

  /** Points added since the last update, and whether the curves were halved (then pages take a snapshot). */
  private fresh = emptyColumns();
  private halved = false;
  private readonly changed = new Set<Part | 'progress' | 'measured'>();

  /** A live run's event. */
  apply(event: TrainEvent): void {
    switch (event.type) {
      case 'start':
        this.identity = {
          model: event.spec,
          parameters: event.parameters,
          dataset: event.dataset,
          datasetSha256: event.datasetSha256,
          trainSamples: event.trainSamples,
          testSamples: event.testSamples,
          workers: event.workers,
          listening: event.listening,
          outDir: event.outDir,
          config: event.config,
        };
        this.changed.add('identity');
        return;
      case 'step':
        Object.assign(this.progress, { step: event.step, epoch: event.epoch, batch: event.batch, batches: event.batches });
        this.updateTotalSteps();
        this.addStep(event.step, event.loss, event.ms, event.samples);
        return;
      case 'participants':
        this.addParticipants(event.record);
        return;
      case 'epoch':
        this.addEpoch(epochView(event.result, event.shares.rows));
        return;
      case 'cluster':
        this.addClusterEvent(event.event);
        return;
      case 'checkpoint':
        // Resumed: the run goes on from here (its history comes with its first step); cluster events before that are dated so.
        if (event.action === 'resumed') this.progress.step = Math.max(this.progress.step, event.step);
        return;
      case 'done':
        this.finish(event.summary);
        return;
      default:
        return;
    }
  }

  /**
   * A step record (live, or read from metrics.jsonl). `underPlan`: it counts toward the plan in force (not a
   * resumed run's history: those steps were taken before this session's plans).
   */
  addStep(step: number, loss: number, ms: number, samples: number, underPlan = true): void {
    this.progress.step = Math.max(this.progress.step, step);
    this.recentMs.push(ms);
    this.recentSamples.push(samples);
    if (this.recentMs.length > RECENT_STEPS) {
      this.recentMs.shift();
      this.recentSamples.shift();
    }
    const plan = underPlan ? this.planTotals.at(-1) : undefined;
    if (plan) {
      plan.ms += ms;
      plan.steps++;
      this.changed.add('measured');
    }
    const p = this.pending;
    p.count++;
    p.step = step;
    p.loss += loss;
    p.ms += ms;
    p.samples += samples;
    if (p.count < this.stride) return;
    this.pushPoint(this.columns, p);
    this.pushPoint(this.fresh, p);
    this.pending = { count: 0, step: 0, loss: 0, ms: 0, samples: 0 };
    if (this.columns.step.length > MAX_POINTS) this.halve();
    this.changed.add('progress');
  }

  private pushPoint(into: StepColumns, p: RunStore['pending']): void {
    into.step.push(p.step);
    into.loss.push(p.loss / p.count);
    into.ms.push(p.ms / p.count);
    into.samplesPerSecond.push(p.ms > 0 ? (1000 * p.samples) / p.ms : 0);
  }

  /** Averages neighbouring points in pairs: the curves keep their shape in half the memory. */
  private halve(): void {
    const c = this.columns;
    const half = emptyColumns();
    for (let i = 0; i + 1 < c.step.length; i += 2) {
      half.step.push(c.step[i + 1]);
      half.loss.push((c.loss[i] + c.loss[i + 1]) / 2);
      half.ms.push((c.ms[i] + c.ms[i + 1]) / 2);
      half.samplesPerSecond.push((c.samplesPerSecond[i] + c.samplesPerSecond[i + 1]) / 2);
    }
    // An odd last point stays as it is, so no step is lost from the curve's end.
    if (c.step.length % 2 === 1) {
      const last = c.step.length - 1;
      half.step.push(c.step[last]);
      half.loss.push(c.loss[last]);
      half.ms.push(c.ms[last]);
      half.samplesPerSecond.push(c.samplesPerSecond[last]);
    }
    this.columns = half;
    this.stride *= 2;
    this.halved = true;
  }

  addEpoch(epoch: EpochView): void {
    const at = this.epochs.findIndex((e) => e.epoch === epoch.epoch);
    if (at >= 0) this.epochs[at] = epoch;
    else this.epochs.push(epoch);
    this.changed.add('epochs');
  }

  /** A participants record: kept as it comes, summed into views only when a page is sent them. */
  addParticipants(record: ParticipantsRecord): void {
    for (const p of record.participants) {
      let totals = this.participants.get(p.id);
      if (!totals) this.participants.set(p.id, (totals = { latest: p, recent: [], steps: [], seen: record.step }));
      totals.latest = p;
      totals.recent.push(p);
      totals.steps.push(record.step);
      if (totals.recent.length > RECENT_RECORDS) {
        totals.recent.shift();
        totals.steps.shift();
      }
      totals.seen = record.step;
    }
    this.participantsStep = record.step;
    this.forgetParticipants();
    this.changed.add('participants');
  }

  /** Every participant's view (means over its recent records, its share) and the slowest among them. */
  private participantParts(): Pick<Snapshot, 'participants' | 'slowest'> {
    // Shares over the same recent steps for everyone, so that they add up to one and a participant gone
    // (or on standby) loses its share as the others take its rows.
    const since = this.participantsStep - RECENT_RECORDS;
    const sums = [...this.participants.values()].map(({ latest, recent, steps, seen }) => {
      const sum = { rows: 0, rowsSince: 0, computeMs: 0, applyMs: 0, wireMs: 0, waitMs: 0 };
      recent.forEach((r, i) => {
        sum.rows += r.rows;
        if (steps[i] > since) sum.rowsSince += r.rows;
        sum.computeMs += r.computeMs;
        sum.applyMs += r.applyMs;
        sum.wireMs += r.wireMs;
        sum.waitMs += r.waitMs;
      });
      return { latest, sum, n: recent.length, seen };
    });
    const all = sums.reduce((a, { sum }) => a + sum.rowsSince, 0);
    const participants = sums.map(({ latest, sum, n, seen }): ParticipantView => ({
      id: latest.id,
      kind: latest.kind,
      address: latest.address,
      state: latest.state,
      reason: latest.reason,
      engine: latest.engine,
      device: latest.device,
      share: all > 0 ? sum.rowsSince / all : 0,
      rowsPerSecond: sum.computeMs > 0 ? (1000 * sum.rows) / sum.computeMs : 0,
      computeMs: sum.computeMs / n,
      applyMs: sum.applyMs / n,
      wireMs: sum.wireMs / n,
      waitMs: sum.waitMs / n,
      lastStep: seen,
    }));
    // The slowest by its recent rate (cluster/participant_stats.ts's rule); one computing alone is nobody's straggler.
    const recent = sums.map(({ latest, sum }) => ({ ...latest, rows: sum.rows, computeMs: sum.computeMs }));
    const computing = recent.filter((p) => p.state === 'computing' && p.rows > 0).length;
    const slowest = computing < 2 ? null : (slowestParticipant({ step: this.progress.step, epoch: this.progress.epoch, participants: recent }) ?? null);
    return { participants, slowest };
  }

  private forgetParticipants(): void {
    if (this.participants.size <= MAX_PARTICIPANTS) return;
    const order = [...this.participants.entries()].sort(([, a], [, b]) => Number(b.latest.state === 'dropped') - Number(a.latest.state === 'dropped') || a.seen - b.seen);
    for (const [id] of order.slice(0, this.participants.size - MAX_PARTICIPANTS)) this.participants.delete(id);
  }

  addClusterEvent(event: RunClusterEvent): void {
    if (event.type === 'plan') {
      this.plans.push({ step: event.step, plan: event.plan, reason: event.reason, estimates: event.estimates, rowsOnOne: event.rowsOnOne, measuredMs: null });
      this.planTotals.push({ ms: 0, steps: 0 });
      this.changed.add('plans');
    }
    this.events.push({ step: this.progress.step, line: clusterLine(event) });
    if (this.events.length > MAX_EVENTS) this.events.shift();
    this.changed.add('events');
  }

  /** The run's end: its hash, and the plans as summary.json measured them. */
  finish(summary: RunSummary): void {
    this.done = {
      paramsSha256: summary.paramsSha256,
      steps: summary.steps,
      msPerStep: summary.msPerStep,
      samplesPerSecond: summary.samplesPerSecond,
      ...(summary.error ? { error: summary.error } : {}),
    };
    if (summary.plans.length > 0) {
      this.plans.splice(0, this.plans.length, ...summary.plans.map((p) => ({ step: p.step, plan: p.plan, reason: p.reason, estimates: p.estimates, rowsOnOne: p.rowsOnOne, measuredMs: p.measuredMs })));
      this.planTotals.splice(0, this.planTotals.length, ...summary.plans.map(() => ({ ms: 0, steps: 0 })));
    }
    this.progress.etaSeconds = 0;
    this.changed.add('done').add('plans').add('progress');
  }

  /** A finished run's folder: its identity from summary.json, and nothing more to come. */
  setFinished(identity: Identity): void {
    this.identity = identity;
    this.finished = true;
    this.progress.epoch = this.epochs.length;
    this.updateTotalSteps();
    this.changed.add('identity').add('finished');
  }

  private updateTotalSteps(): void {
    const config = this.identity?.config ?? {};
    const epochs = typeof config.epochs === 'number' ? config.epochs : 0;
    const steps = typeof config.steps === 'number' ? config.steps : 0;
    const byEpochs = epochs * this.progress.batches;
    this.progress.totalSteps = steps > 0 && (byEpochs === 0 || steps < byEpochs) ? steps : byEpochs;
  }

  private stepStats(): StepStats | null {
    if (this.recentMs.length === 0) return null;
    const sorted = [...this.recentMs].sort((a, b) => a - b);
    const ms = this.recentMs.reduce((a, b) => a + b, 0);
    const samples = this.recentSamples.reduce((a, b) => a + b, 0);
    return { medianMs: quantile(sorted, 0.5), p90Ms: quantile(sorted, 0.9), p99Ms: quantile(sorted, 0.99), samplesPerSecond: ms > 0 ? (1000 * samples) / ms : 0, steps: sorted.length };
  }

  /** The progress with its ETA, from the step stats of this flush. */
  private progressNow(stats: StepStats | null): Progress {
    const left = this.progress.totalSteps - this.progress.step;
    const etaSeconds = this.done || this.finished ? 0 : stats && this.progress.totalSteps > 0 ? (Math.max(0, left) * stats.medianMs) / 1000 : null;
    return { ...this.progress, etaSeconds };
  }

  /** Mean step time of a plan: measured here while it was in force, else as summary.json says (or null). */
  private measuredMs(i: number): number | null {
    const totals = this.planTotals[i];
    return totals && totals.steps > 0 ? totals.ms / totals.steps : this.plans[i].measuredMs;
  }

  /** One part of the snapshot as it stands (the participants with the slowest of them). */
  private part(part: Part): Partial<Snapshot> {
    switch (part) {
      case 'finished':
        return { finished: this.finished };
      case 'identity':
        return { identity: this.identity };
      case 'epochs':
        return { epochs: [...this.epochs] };
      case 'participants':
        return this.participantParts();
      case 'plans':
        return { plans: this.plans.map((p, i) => ({ ...p, measuredMs: this.measuredMs(i) })) };
      case 'events':
        return { events: [...this.events] };
      case 'done':
        return { done: this.done };
    }
  }

  /** Everything, for a page that opens now. */
  snapshot(): Snapshot {
    const c = this.columns;
    const stepStats = this.stepStats();
    const parts = Object.assign({}, ...PARTS.map((part) => this.part(part))) as Pick<Snapshot, Part | 'slowest'>;
    return {
      ...parts,
      progress: this.progressNow(this.done ? null : stepStats),
      steps: { step: [...c.step], loss: [...c.loss], ms: [...c.ms], samplesPerSecond: [...c.samplesPerSecond] },
      stepStats,
    };
  }

  /**
   * What changed since the last call, for the pages already open; `reset` when the curves were halved (the
   * pages then take a whole snapshot); undefined when nothing changed.
   */
  takeUpdate(): { kind: 'update'; update: Update } | { kind: 'reset'; snapshot: Snapshot } | undefined {
    if (this.halved) {
      this.discardUpdate();
      return { kind: 'reset', snapshot: this.snapshot() };
    }
    if (this.changed.size === 0 && this.fresh.step.length === 0) return undefined;
    const stepStats = this.stepStats();
    const update: Update = {};
    if (this.fresh.step.length > 0) {
      update.steps = this.fresh;
      update.stepStats = stepStats;
      this.fresh = emptyColumns();
    }
    for (const part of this.changed) {
      if (part !== 'progress' && part !== 'measured') Object.assign(update, this.part(part));
    }
    // Steps measure the plan in force: its time alone, unless the plans are sent whole anyway.
    if (this.changed.has('measured') && !this.changed.has('plans')) update.measuredMs = this.measuredMs(this.plans.length - 1) ?? undefined;
    update.progress = this.progressNow(this.done ? null : stepStats);
    this.changed.clear();
    return { kind: 'update', update };
  }

  /** Forgets what changed unsent (no page is open: one that opens takes a snapshot). */
  discardUpdate(): void {
    this.halved = false;
    this.fresh = emptyColumns();
    this.changed.clear();
  }
}
