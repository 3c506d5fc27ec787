/**
 * One participant's part in a step and where its time went: what the live dashboard, metrics.jsonl's
 * participant records and TensorBoard's per-participant scalars show (issue 21). The scheduler fills it;
 * report/ and train/ read it.
 */

/** joining: admitted, being sent the state; computing: shares rows; standby: parked by `auto`; dropped: gone. */
export type ParticipantState = 'joining' | 'computing' | 'standby' | 'dropped';

export interface ParticipantStep {
  /**
   * Stable across reconnections, usable as a folder name: `local` for the coordinator's own threads, else the
   * worker's name (`rank-N` under a launcher). Only [A-Za-z0-9._-].
   */
  id: string;
  kind: 'local' | 'remote';
  /** host:port the coordinator sees (remote only). */
  address?: string;
  state: ParticipantState;
  /** Why it was dropped, one line (state 'dropped'). */
  reason?: string;
  /** e.g. onnx / tfjs. */
  engine?: string;
  /** e.g. cpu / webgpu. */
  device?: string;
  /** Rows of this step's batch it computed (a pass redone after a boundary counts what both computed). */
  rows: number;
  /** Its own time computing this step's rows, ms, as it measured it. */
  computeMs: number;
  /**
   * Its own time applying steps (weight pass and Adam, or committing a slice), ms; 0 when it applies nothing.
   * `local`: the coordinator's weight pass of this step. A worker's comes with its rows (RowsDone.applyMs):
   * what it applied since its previous rows, which is the step before this one (and taking in the others' rows).
   */
  applyMs: number;
  /**
   * Coordinator's view: from sending its rows request to holding the answer, less computeMs and the time the
   * request waited at the worker behind earlier messages (RowsDone.queuedMs): the wire and the coordinator's
   * own queues, ms; 0 for `local`.
   */
  wireMs: number;
  /**
   * Time it sat idle waiting for the others, ms. `local`: after its own rows, for the workers' answers. A
   * worker's, as it reports it with its rows (RowsDone.waitMs): idle since its previous rows answer, for the
   * others' rows, the update and this request.
   */
  waitMs: number;
}

/** Every participant of one step (metrics.jsonl writes it as `{"type":"participants", ...}`). */
export interface ParticipantsRecord {
  step: number;
  epoch: number;
  participants: ParticipantStep[];
}

/** The slowest participant by its rate (rows per second of compute): shares follow speed, so step times even out. */
export function slowestParticipant(record: ParticipantsRecord): string | undefined {
  let slowest: { id: string; rate: number } | undefined;
  for (const p of record.participants) {
    if (p.state !== 'computing' || p.rows === 0 || p.computeMs <= 0) continue;
    const rate = p.rows / p.computeMs;
    if (!slowest || rate < slowest.rate) slowest = { id: p.id, rate };
  }
  return slowest?.id;
}

/** A participant's rows and times in one step, summed over the rounds of its row pass. */
export type StepShare = Pick<ParticipantStep, 'rows' | 'computeMs' | 'applyMs' | 'wireMs' | 'waitMs'>;

/**
 * What the scheduler gathers of each participant during a step (`K`: the local slots' id or a remote peer),
 * which becomes the step's record: one small object a participant, summed as the rounds of a pass come.
 */
export class ParticipantTally<K> {
  private readonly shares = new Map<K, StepShare>();

  add(who: K, share: Partial<StepShare>): void {
    let into = this.shares.get(who);
    if (!into) this.shares.set(who, (into = { rows: 0, computeMs: 0, applyMs: 0, wireMs: 0, waitMs: 0 }));
    into.rows += share.rows ?? 0;
    into.computeMs += share.computeMs ?? 0;
    into.applyMs += share.applyMs ?? 0;
    into.wireMs += share.wireMs ?? 0;
    into.waitMs += share.waitMs ?? 0;
  }

  has(who: K): boolean {
    return this.shares.has(who);
  }

  /** Everyone with a share in the step so far (those that left since included). */
  who(): K[] {
    return [...this.shares.keys()];
  }

  /**
   * `who`'s share of the step (nothing done when it has none), its times to 10 µs: the record is a line of
   * metrics.jsonl a step, and a float's 17 digits would triple it and say nothing more.
   */
  shareOf(who: K): StepShare {
    const share = this.shares.get(who);
    if (!share) return { rows: 0, computeMs: 0, applyMs: 0, wireMs: 0, waitMs: 0 };
    const round = (ms: number) => Math.round(ms * 100) / 100;
    return { rows: share.rows, computeMs: round(share.computeMs), applyMs: round(share.applyMs), wireMs: round(share.wireMs), waitMs: round(share.waitMs) };
  }

  /** The step is recorded: the next starts from nothing. */
  clear(): void {
    this.shares.clear();
  }
}
