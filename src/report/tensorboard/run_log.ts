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
import type { Scalar } from './event.js';

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

/** Written once an epoch, at its last step; a resume keeps them by the epochs it keeps, not by the step. */
const EPOCH_TAGS: ReadonlySet<string> = new Set([TAGS.testAccuracy, TAGS.testLoss, TAGS.epochTrainLoss, TAGS.epochSamplesPerSecond, TAGS.epochSeconds]);

/** A participant's folder: its id, which is made of [A-Za-z0-9._-] (anything else, or only dots, is replaced). */
export function participantFolder(id: string): string {
  const safe = id.replace(/[^A-Za-z0-9._-]/g, '_');
  return /^\.*$/.test(safe) ? `_${safe}` : safe;
}

export interface StepScalars {
  step: number;
  loss: number;
  ms: number;
  /** Rows of the batch the step trained on. */
  samples: number;
}

export class TensorBoardLog {
  readonly dir: string;
  private readonly run: EventFileWriter;
  private readonly byParticipant = new Map<string, EventFileWriter>();
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

  step({ step, loss, ms, samples }: StepScalars): void {
    this.run.add({
      wallTime: Date.now() / 1000,
      step,
      scalars: [
        { tag: TAGS.loss, value: loss },
        { tag: TAGS.stepMs, value: ms },
        { tag: TAGS.stepSamplesPerSecond, value: (1000 * samples) / ms },
      ],
    });
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
    for (const p of record.participants) {
      if (p.state === 'dropped') continue;
      const scalars: Scalar[] = [
        { tag: TAGS.share, value: rows > 0 ? p.rows / rows : 0 },
        { tag: TAGS.rows, value: p.rows },
        { tag: TAGS.computeMs, value: p.computeMs },
        { tag: TAGS.applyMs, value: p.applyMs },
        { tag: TAGS.wireMs, value: p.wireMs },
        { tag: TAGS.waitMs, value: p.waitMs },
      ];
      if (p.rows > 0 && p.computeMs > 0) scalars.push({ tag: TAGS.rowsPerSecond, value: (1000 * p.rows) / p.computeMs });
      this.writerOf(p.id).add({ wallTime, step: record.step, scalars });
    }
  }

  private writerOf(id: string): EventFileWriter {
    const folder = participantFolder(id);
    let writer = this.byParticipant.get(folder);
    if (!writer) this.byParticipant.set(folder, (writer = new EventFileWriter(join(this.dir, 'participants', folder))));
    return writer;
  }

  /**
   * Writes what is held: at the end of each epoch, before each checkpoint (so that a resume finds every step
   * it keeps), every 10 s of a long epoch, and at close.
   */
  flush(): void {
    this.lastFlush = performance.now();
    this.run.flush();
    for (const writer of this.byParticipant.values()) writer.flush();
  }
}
