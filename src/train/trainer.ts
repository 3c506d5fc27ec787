/**
 * The training loop: for every batch, the row pass on all workers, the loss, the weight pass (gradient
 * reduction and Adam) on all workers, then commit; after every epoch, evaluation on the test set.
 * Knows workers only through WorkerSet, and reports through events: it never prints.
 */
import { join } from 'node:path';
import { resolveConfig, type TrainConfig } from '../config.js';
import { loadDataset, type Dataset } from '../data/datasets.js';
import { nonFiniteGradient, nonFiniteLoss } from '../errors.js';
import { initParams, permutation, Rng } from '../model/init.js';
import { describeSpec, makeSpec, paramLayout, type ModelSpec } from '../model/spec.js';
import { ADAM_DEFAULTS } from '../optim/adam.js';
import type { OptimizerMemory } from '../optim/optimizer_memory.js';
import { paramsSha256, writeSummary, type EpochResult, type RunSummary } from '../report/summary.js';
import { createTrainingMemory, optimizerMemoryOf, type TrainingMemory } from '../cluster/training_memory.js';
import type { Task, WorkerInit } from '../cluster/step_worker.js';
import type { WorkerSet } from '../cluster/workers.js';
import { batchCount, batchRows, evenSplit, microShards, rowAssignment, unitAssignment, type Range } from './plan.js';

export type TrainEvent =
  | { type: 'start'; spec: string; parameters: number; dataset: string; trainSamples: number; testSamples: number; workers: string }
  | { type: 'step'; step: number; epoch: number; batch: number; batches: number; loss: number }
  | { type: 'log'; epoch: number; loss: number; current: number; size: number }
  | { type: 'epoch'; result: EpochResult }
  | { type: 'done'; summary: RunSummary };

export interface TrainOptions {
  onEvent?: (event: TrainEvent) => void;
  /** Stops cleanly after the step in flight. */
  signal?: AbortSignal;
  /** A dataset already in memory (tests); otherwise config.data or the embedded MNIST is loaded. */
  dataset?: Dataset;
  /** Called once the workers are up, with the set (tests use it to inject faults). */
  onWorkers?: (workers: WorkerSet) => void;
}

export interface EvalResult {
  accuracy: number;
  avgLoss: number;
}

export class Trainer {
  readonly spec: ModelSpec;
  readonly memory: TrainingMemory;
  readonly optimizer: OptimizerMemory;
  /** The generation (0 or 1) of the optimizer memory that holds the committed state. */
  generation = 0;
  step = 0;
  private readonly units: Range[][];

  constructor(
    readonly config: TrainConfig,
    readonly dataset: Dataset,
    readonly workers: WorkerSet,
    memory: TrainingMemory,
  ) {
    this.spec = memory.spec;
    this.memory = memory;
    this.optimizer = optimizerMemoryOf(memory);
    this.units = unitAssignment(this.spec.sizes.slice(1), workers.size);
  }

  get params(): Float32Array {
    return this.optimizer.paramsOf(this.generation);
  }

  /** One optimizer step on the given dataset rows; returns the batch-mean loss. */
  async trainStep(index: Int32Array): Promise<number> {
    const rows = index.length;
    const { batch } = this.memory;
    batch.index.set(index);
    const base = { step: this.step, generation: this.generation, batch: rows };
    const rowRanges = rowAssignment(rows, this.config.microBatch, this.workers.size);
    await this.workers.runPass(rowRanges.map((range) => ({ kind: 'rows', ...base, range }) as Task));
    let lossSum = 0;
    for (let r = 0; r < rows; r++) lossSum += batch.rowLoss[r];
    if (!Number.isFinite(lossSum)) throw nonFiniteLoss(this.step, this.locateNonFinite([batch.rowLoss], [1], rows));
    const results = await this.workers.runPass(this.units.map((units) => ({ kind: 'weights', ...base, units }) as Task));
    const bad = [...new Set(results.flatMap((r) => r.nonFiniteLayers))].sort((a, b) => a - b);
    if (bad.length > 0) {
      const l = bad[0];
      const sources = [l === 0 ? batch.x : batch.hidden[l - 1], batch.deltas[l]];
      const widths = [this.spec.sizes[l], this.spec.sizes[l + 1]];
      throw nonFiniteGradient(this.step, `layer ${l} (W${l}, b${l}), ${this.locateNonFinite(sources, widths, rows)}`);
    }
    this.generation ^= 1;
    this.step++;
    return lossSum / rows;
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
    const { test, evalLoss, evalPredicted } = this.memory;
    const ranges = evenSplit(test.count, this.workers.size);
    await this.workers.runPass(ranges.map((range) => ({ kind: 'eval', step: this.step, generation: this.generation, range }) as Task));
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

export async function createWorkers(init: WorkerInit, threads: number): Promise<WorkerSet> {
  if (threads <= 1) {
    const { InProcessWorkers } = await import('../cluster/workers.js');
    return InProcessWorkers.create(init);
  }
  const { ThreadWorkers } = await import('../cluster/threads.js');
  return ThreadWorkers.create(init, { threads });
}

/** Runs a whole training as configured; the programmatic form of `dtrain coordinator`. */
export async function train(userConfig: Partial<TrainConfig> = {}, options: TrainOptions = {}): Promise<RunSummary> {
  const config = resolveConfig(userConfig);
  const emit = options.onEvent ?? (() => {});
  const dataset =
    options.dataset ??
    loadDataset(config.data ?? undefined, {
      trainLimit: config.trainSamples || undefined,
      testLimit: config.testSamples || undefined,
    });
  const spec = makeSpec(dataset.features, config.hidden, dataset.classes, config.activation);
  const memory = createTrainingMemory(spec, dataset, config.batchSize);
  const optimizer = optimizerMemoryOf(memory);
  initParams(spec, config.seed, optimizer.paramsOf(0));
  const workers = await createWorkers(
    { memory, engine: { engine: config.engine, device: config.device }, adam: { ...ADAM_DEFAULTS, lr: config.lr } },
    config.threads,
  );
  options.onWorkers?.(workers);
  const trainer = new Trainer(config, dataset, workers, memory);
  const layout = paramLayout(spec);
  emit({
    type: 'start',
    spec: describeSpec(spec),
    parameters: layout.total,
    dataset: dataset.name,
    trainSamples: dataset.train.count,
    testSamples: dataset.test.count,
    workers: workers.description,
  });
  const epochs: EpochResult[] = [];
  const batches = batchCount(dataset.train.count, config.batchSize);
  const shuffleRng = new Rng(config.seed ^ 0x5eed5eed);
  let trainSeconds = 0;
  let samplesSeen = 0;
  let failure: Error | undefined;
  try {
    for (let epoch = 1; epoch <= config.epochs; epoch++) {
      const order = config.shuffle ? permutation(dataset.train.count, shuffleRng) : undefined;
      const t0 = performance.now();
      let epochSamples = 0;
      let lossSum = 0;
      let stepsThisEpoch = 0;
      let stopped = false;
      for (let b = 0; b < batches; b++) {
        const rows = batchRows(dataset.train.count, config.batchSize, b);
        const index = new Int32Array(rows);
        for (let r = 0; r < rows; r++) index[r] = order ? order[b * config.batchSize + r] : b * config.batchSize + r;
        const loss = await trainer.trainStep(index);
        epochSamples += rows;
        lossSum += loss;
        stepsThisEpoch++;
        emit({ type: 'step', step: trainer.step, epoch, batch: b + 1, batches, loss });
        if (b % config.logEvery === 0) {
          emit({ type: 'log', epoch, loss, current: Math.min((b + 1) * config.batchSize, dataset.train.count), size: dataset.train.count });
        }
        if ((config.steps > 0 && trainer.step >= config.steps) || options.signal?.aborted) {
          stopped = true;
          break;
        }
      }
      const seconds = (performance.now() - t0) / 1000;
      trainSeconds += seconds;
      samplesSeen += epochSamples;
      const { accuracy, avgLoss } = await trainer.evaluate();
      const result: EpochResult = {
        epoch,
        steps: trainer.step,
        testAccuracy: accuracy,
        testAvgLoss: avgLoss,
        trainLoss: lossSum / stepsThisEpoch,
        seconds,
        samplesPerSecond: epochSamples / seconds,
      };
      epochs.push(result);
      emit({ type: 'epoch', result });
      if (stopped) break;
    }
  } catch (e) {
    // The committed generation still holds the last good state; record it before failing.
    failure = e as Error;
  } finally {
    await workers.close();
  }
  const outDir = config.out ?? join('runs', new Date().toISOString().replace(/[:.]/g, '-'));
  const summary: RunSummary = {
    dataset: { name: dataset.name, sha256: dataset.sha256, trainSamples: dataset.train.count, testSamples: dataset.test.count },
    model: { sizes: spec.sizes, activation: spec.activation, parameters: layout.total },
    engine: config.engine,
    workers: workers.description,
    config: { ...config },
    epochs,
    steps: trainer.step,
    samplesPerSecond: samplesSeen / trainSeconds,
    msPerStep: (1000 * trainSeconds) / Math.max(1, trainer.step),
    paramsSha256: paramsSha256(trainer.params),
    outDir,
    ...(failure ? { error: failure.message } : {}),
  };
  writeSummary(outDir, summary);
  if (failure) throw failure;
  emit({ type: 'done', summary });
  return summary;
}
