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
  /** Rows of this step's batch it computed. */
  rows: number;
  /** Its own time computing this step's rows, ms, as it measured it. */
  computeMs: number;
  /** Its own time applying the step (weight pass and Adam, or committing a slice), ms; 0 when it applies nothing. */
  applyMs: number;
  /** Coordinator's view: from sending its rows request to holding the answer, less computeMs (wire and queues), ms. */
  wireMs: number;
  /** Time it sat idle in this step waiting for the others (the slowest participant's span less its own), ms. */
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
