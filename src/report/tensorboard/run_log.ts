/**
 * A run's TensorBoard logs, RUN/tensorboard/: the run's scalars in the folder itself, and each
 * participant's in participants/<id>/ (one TensorBoard run each, so that their curves overlay under the
 * same tags). Point TensorBoard at RUN/tensorboard, or at runs/ to compare runs.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { ParticipantsRecord } from '../../cluster/participant_stats.js';
import type { EpochResult } from '../summary.js';
import { EventFileWriter, filterEventFiles } from './event_file.js';
import { scalarPrefix } from './event.js';

/** A TensorBoard watching a long epoch sees its steps this often (one write a folder each time). */
const FLUSH_INTERVAL_MS = 10_000;

export const tensorboardDir = (runDir: string) => join(runDir, 'tensorboard');

/** The tags, grouped by TensorBoard on what precedes the slash. */
export const TAGS = {
  loss: 'train/loss',
  stepMs: 'train/step_ms',
  stepSamplesPerSecond: 'train/samples_per_second',
  testAccuracy: 'test/accuracy',
  testLoss: 'test/loss',
  epochTrainLoss: 'epoch/train_loss',
  epochSamplesPerSecond: 'epoch/samples_per_second',
  epochSeconds: 'epoch/seconds',
  share: 'participant/share',
  rows: 'participant/rows',
  rowsPerSecond: 'participant/rows_per_second',
  computeMs: 'participant/compute_ms',
  applyMs: 'participant/apply_ms',
  wireMs: 'participant/wire_ms',
  waitMs: 'participant/wait_ms',
} as const;

/** The tags of every step, encoded once: a step's events are written straight into their record (EventFileWriter.addScalars). */
const STEP_TAGS = [TAGS.loss, TAGS.stepMs, TAGS.stepSamplesPerSecond].map(scalarPrefix);
/** A participant's, in this order; the rate last, only for one that computed rows. */
const PARTICIPANT_TAGS = [TAGS.share, TAGS.rows, TAGS.computeMs, TAGS.applyMs, TAGS.wireMs, TAGS.waitMs, TAGS.rowsPerSecond].map(scalarPrefix);
const PARTICIPANT_TAGS_NO_RATE = PARTICIPANT_TAGS.slice(0, -1);

/** Written once an epoch, at its last step; a resume keeps them by the epochs it keeps, not by the step. */
const EPOCH_TAGS: ReadonlySet<string> = new Set([TAGS.testAccuracy, TAGS.testLoss, TAGS.epochTrainLoss, TAGS.epochSamplesPerSecond, TAGS.epochSeconds]);

/** A participant's folder: its id, which is made of [A-Za-z0-9._-] (anything else, or only dots, is replaced). */
export function participantFolder(id: string): string {
  const safe = id.replace(/[^A-Za-z0-9._-]/g, '_');
  return /^\.*$/.test(safe) ? `_${safe}` : safe;
}

/** What a step's record says of it (metrics.jsonl's step record has these: the same object is passed). */
export interface StepScalars {
  step: number;
  loss: number;
  ms: number;
}

export class TensorBoardLog {
  readonly dir: string;
  private readonly run: EventFileWriter;
  /** Each participant's writer by its id, and by its folder (two ids could share one: participantFolder). */
  private readonly byParticipant = new Map<string, EventFileWriter>();
  private readonly byFolder = new Map<string, EventFileWriter>();
  /** A step's values, in the order of the tags (reused: nothing allocated a scalar). */
  private readonly values = new Float64Array(PARTICIPANT_TAGS.length);
  private lastFlush = performance.now();

  /**
   * On resume, `keepThrough` drops what a killed run logged after its checkpoint, as metrics.jsonl does:
   * step scalars past its step, epoch scalars past its last complete epoch's step (`epochStep`).
   */
  constructor(runDir: string, keepThrough?: { step: number; epochStep: number }) {
    this.dir = tensorboardDir(runDir);
    if (keepThrough && existsSync(this.dir)) {
      filterEventFiles(this.dir, ({ step, tags }) => step <= (tags.some((tag) => EPOCH_TAGS.has(tag)) ? keepThrough.epochStep : keepThrough.step));
    }
    this.run = new EventFileWriter(this.dir);
  }

  /** A step's scalars; `samples`: the rows of the batch it trained on. */
  step({ step, loss, ms }: StepScalars, samples: number): void {
    const values = this.values;
    values[0] = loss;
    values[1] = ms;
    values[2] = (1000 * samples) / ms;
    this.run.addScalars(Date.now() / 1000, step, STEP_TAGS, values);
    if (performance.now() - this.lastFlush >= FLUSH_INTERVAL_MS) this.flush();
  }

  epoch(result: EpochResult): void {
    this.run.add({
      wallTime: Date.now() / 1000,
      step: result.steps,
      scalars: [
        { tag: TAGS.testAccuracy, value: result.testAccuracy },
        { tag: TAGS.testLoss, value: result.testAvgLoss },
        { tag: TAGS.epochTrainLoss, value: result.trainLoss },
        { tag: TAGS.epochSamplesPerSecond, value: result.samplesPerSecond },
        { tag: TAGS.epochSeconds, value: result.seconds },
      ],
    });
  }

  /** One step's participants, each into its own folder; a dropped participant has nothing to show for the step. */
  participants(record: ParticipantsRecord): void {
    const wallTime = Date.now() / 1000;
    const rows = record.participants.reduce((sum, p) => sum + p.rows, 0);
    const values = this.values;
    for (const p of record.participants) {
      if (p.state === 'dropped') continue;
      values[0] = rows > 0 ? p.rows / rows : 0;
      values[1] = p.rows;
      values[2] = p.computeMs;
      values[3] = p.applyMs;
      values[4] = p.wireMs;
      values[5] = p.waitMs;
      const rated = p.rows > 0 && p.computeMs > 0;
      if (rated) values[6] = (1000 * p.rows) / p.computeMs;
      this.writerOf(p.id).addScalars(wallTime, record.step, rated ? PARTICIPANT_TAGS : PARTICIPANT_TAGS_NO_RATE, values);
    }
  }

  private writerOf(id: string): EventFileWriter {
    let writer = this.byParticipant.get(id);
    if (writer) return writer;
    const folder = participantFolder(id);
    writer = this.byFolder.get(folder);
    if (!writer) this.byFolder.set(folder, (writer = new EventFileWriter(join(this.dir, 'participants', folder))));
    this.byParticipant.set(id, writer);
    return writer;
  }

  /**
   * Writes what is held: before each checkpoint (so that a resume finds every step it keeps; an epoch's end
   * writes one, or the run ends there), every 10 s of a long epoch, and at close.
   */
  flush(): void {
    this.lastFlush = performance.now();
    this.run.flush();
    for (const writer of this.byFolder.values()) writer.flush();
  }

  /** Flushes and closes every file (the run's end). */
  close(): void {
    this.lastFlush = performance.now();
    this.run.close();
    for (const writer of this.byFolder.values()) writer.close();
  }
}
