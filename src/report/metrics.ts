/**
 * metrics.jsonl: one JSON object per line — per step {type:"step", step, epoch, loss, ms, bytes, cpuMs} and
 * {type:"participants", step, epoch, participants: [...]} (every participant's rows and times:
 * cluster/participant_stats.ts), and per epoch {type:"epoch", epoch, steps, testAccuracy, testAvgLoss,
 * trainLoss, seconds, samplesPerSecond, shares, networkWaitSeconds, endSeconds}. Appended as the run goes, through one
 * write stream.
 */
import { createWriteStream, existsSync, mkdirSync, readFileSync, writeFileSync, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import type { ParticipantsRecord } from '../cluster/participant_stats.js';
import type { EpochResult } from './summary.js';

export interface StepRecord {
  type: 'step';
  step: number;
  epoch: number;
  loss: number;
  ms: number;
  bytes: number;
  /**
   * CPU time the coordinator's process spent in the step (all its threads): with --threads 0, what
   * relaying the workers' bytes costs it.
   */
  cpuMs: number;
  /** How the step was distributed (whole, split, replicated, sharded). */
  plan: string;
}

export interface EpochRecord extends EpochResult {
  type: 'epoch';
  /** Rows each participant computed this epoch. */
  shares: Record<string, number>;
  networkWaitSeconds: number;
  /**
   * The waits at the epoch's end, outside its steps and its `seconds`: bringing the state here (from a
   * GPU, a remote replica's state or a replay), evaluating, and comparing the remote replicas' checksums.
   */
  endSeconds: { state: number; evaluate: number; verify: number };
}

/** Every participant of a step: who computed which rows, and where its time went. */
export interface ParticipantsMetrics extends ParticipantsRecord {
  type: 'participants';
}

export type MetricsRecord = StepRecord | ParticipantsMetrics | EpochRecord;

export const metricsFile = (runDir: string) => join(runDir, 'metrics.jsonl');

export class MetricsLog {
  private readonly stream: WriteStream;

  /**
   * Opens the run's log. On resume, `keepThrough` drops what a killed run logged after its checkpoint
   * (those steps are computed again), so every step appears once.
   */
  constructor(runDir: string, keepThrough?: { step: number; epochs: number }) {
    mkdirSync(runDir, { recursive: true });
    const file = metricsFile(runDir);
    if (keepThrough && existsSync(file)) {
      const kept = readMetrics(runDir).filter((r) => (r.type === 'epoch' ? r.epoch <= keepThrough.epochs : r.step <= keepThrough.step));
      writeFileSync(file, kept.map((r) => `${JSON.stringify(r)}\n`).join(''));
    }
    this.stream = createWriteStream(file, { flags: keepThrough ? 'a' : 'w' });
  }

  write(record: MetricsRecord): void {
    this.stream.write(`${JSON.stringify(record)}\n`);
  }

  close(): Promise<void> {
    return new Promise((resolve, reject) => this.stream.end((e?: Error | null) => (e ? reject(e) : resolve())));
  }
}

export function readMetrics(runDir: string): MetricsRecord[] {
  return readFileSync(metricsFile(runDir), 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as MetricsRecord);
}
