/**
 * Where a run is in its data: the epoch, the next batch, the epoch's sample order (drawn from the shuffle
 * RNG, whose state before the draw is kept so that a resumed run draws the same order), what the epoch
 * has accumulated so far, and the look-ahead batch (remote workers start on it early).
 */
import type { CheckpointHeader } from './checkpoint.js';
import { permutation, Rng } from '../model/init.js';
import { batchCount, batchSamples } from '../cluster/plan.js';

export type EpochProgress = CheckpointHeader['partial'];

const NOTHING_YET: EpochProgress = { seconds: 0, samples: 0, lossSum: 0, steps: 0 };

export class EpochCursor {
  readonly batches: number;
  private readonly rng: Rng;
  epoch: number;
  /** The next batch of this epoch. */
  batch = 0;
  /** The shuffle RNG's state before this epoch's order was drawn. */
  epochRngState: number[] = [];
  private order?: Uint32Array;
  private samples = 0;
  private lossSum = 0;
  private steps = 0;
  /** When the epoch started, moved forward by time that is not training (see pause). */
  private t0 = 0;
  private lookAhead?: Int32Array;

  constructor(
    private readonly count: number,
    private readonly batchSize: number,
    private readonly shuffle: boolean,
    seed: number,
    private readonly resumed?: Pick<CheckpointHeader, 'epoch' | 'batch' | 'epochRngState' | 'partial'>,
  ) {
    this.batches = batchCount(count, batchSize);
    this.rng = new Rng(seed ^ 0x5eed5eed);
    this.epoch = resumed?.epoch ?? 1;
  }

  /** Starts this.epoch: draws its order and restores what a resumed epoch had done. */
  begin(): void {
    const continuing = this.resumed && this.epoch === this.resumed.epoch;
    if (continuing) this.rng.setState(this.resumed!.epochRngState);
    this.epochRngState = this.rng.getState();
    this.order = this.shuffle ? permutation(this.count, this.rng) : undefined;
    const partial = continuing ? this.resumed!.partial : NOTHING_YET;
    ({ samples: this.samples, lossSum: this.lossSum, steps: this.steps } = partial);
    this.t0 = performance.now() - partial.seconds * 1000;
    this.batch = continuing ? this.resumed!.batch : 0;
    this.lookAhead = this.batch < this.batches ? this.samplesOf(this.batch) : undefined;
  }

  get epochDone(): boolean {
    return this.batch >= this.batches;
  }

  /** The samples of the next batch, and of the one after unless `last` (the run stops after this one). */
  take(last: boolean): { index: Int32Array; next?: Int32Array } {
    const index = this.lookAhead!;
    const final = last || this.batch + 1 === this.batches;
    this.lookAhead = final ? undefined : this.samplesOf(this.batch + 1);
    return { index, next: this.lookAhead };
  }

  /** Records a finished step of the current batch and moves on. */
  advance(samples: number, loss: number): void {
    this.samples += samples;
    this.lossSum += loss;
    this.steps++;
    this.batch++;
  }

  /** Runs `wait` without counting its time as training (a beforeStep hook). */
  async pause(wait: () => Promise<void> | void): Promise<void> {
    const paused = performance.now();
    await wait();
    this.t0 += performance.now() - paused;
  }

  /** What the epoch has done so far, as a checkpoint records it. */
  progress(): EpochProgress {
    return { seconds: this.seconds(), samples: this.samples, lossSum: this.lossSum, steps: this.steps };
  }

  seconds(): number {
    return (performance.now() - this.t0) / 1000;
  }

  /** The next epoch's start, as a checkpoint written at the end of this one records it. */
  nextEpochStart(): Pick<CheckpointHeader, 'epoch' | 'batch' | 'epochRngState' | 'partial'> {
    return { epoch: this.epoch + 1, batch: 0, epochRngState: this.rng.getState(), partial: NOTHING_YET };
  }

  /** This position (the next batch of this epoch), as a checkpoint written mid-epoch records it. */
  position(): Pick<CheckpointHeader, 'epoch' | 'batch' | 'epochRngState' | 'partial'> {
    return { epoch: this.epoch, batch: this.batch, epochRngState: this.epochRngState, partial: this.progress() };
  }

  private samplesOf(batch: number): Int32Array {
    return batchSamples(this.count, this.order, batch, this.batchSize);
  }
}
