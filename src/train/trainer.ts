/**
 * The training loop: for every batch, the row pass on all participants, the loss, the weight pass
 * (gradient reduction and Adam) on the local slots, then commit; after every epoch, evaluation on the test
 * set. Knows compute only through Cluster, and reports through events: it never prints.
 */
import { join } from 'node:path';
import { resolveConfig, RESUMABLE_OPTIONS, SESSION_OPTIONS, splitHostPort, type TrainConfig } from '../config.js';
import { loadDataset, type Dataset } from '../data/datasets.js';
import { checkpointMismatch, nonFiniteGradient, nonFiniteLoss, resumeConflict } from '../errors.js';
import { initParams, permutation, Rng } from '../model/init.js';
import { describeSpec, makeSpec, paramLayout, type ModelSpec } from '../model/spec.js';
import { ADAM_DEFAULTS, type AdamOptions } from '../optim/adam.js';
import type { OptimizerMemory } from '../optim/optimizer_memory.js';
import { paramsSha256, writeSummary, type EpochResult, type RunSummary } from '../report/summary.js';
import { Cluster, type ClusterEvent, type CommittedState, type WorkShares } from '../cluster/cluster.js';
import type { TaskResult } from '../cluster/step_worker.js';
import { createTrainingMemory, optimizerMemoryOf, type TrainingMemory } from '../cluster/training_memory.js';
import { createWorkers, type WorkerSet } from '../cluster/workers.js';
import { exportModel } from '../report/export.js';
import { MetricsLog } from '../report/metrics.js';
import { plotRun } from '../report/plot.js';
import { latestCheckpoint, writeCheckpoint, type Checkpoint, type CheckpointHeader } from './checkpoint.js';
import { batchCount, batchSamples, evenSplit, microShards } from './plan.js';

export type TrainEvent =
  | { type: 'start'; spec: string; parameters: number; dataset: string; trainSamples: number; testSamples: number; workers: string; listening?: string }
  | { type: 'step'; step: number; epoch: number; batch: number; batches: number; loss: number }
  | { type: 'log'; epoch: number; loss: number; current: number; size: number }
  | { type: 'epoch'; result: EpochResult; shares: WorkShares }
  | { type: 'cluster'; event: ClusterEvent | { type: 'diverged'; workers: string[] } }
  | { type: 'checkpoint'; action: 'written' | 'resumed'; file: string; step: number }
  | { type: 'checkpoint'; action: 'skipped'; file: string; reason: string }
  | { type: 'done'; summary: RunSummary };

export interface TrainOptions {
  onEvent?: (event: TrainEvent) => void;
  /** Stops cleanly after the step in flight. */
  signal?: AbortSignal;
  /** A dataset already in memory (tests); otherwise config.data or the embedded MNIST is loaded. */
  dataset?: Dataset;
  /** Called once the local workers are up, with the set (tests use it to inject faults). */
  onWorkers?: (workers: WorkerSet) => void;
  /** Called once the coordinator listens, with its address (tests connect workers to it). */
  onListening?: (address: { host: string; port: number }) => void;
  /**
   * Awaited before every step, with the step about to run (to pace or coordinate a run from outside); the
   * time it takes is not counted as training time.
   */
  beforeStep?: (step: number) => Promise<void> | void;
  /** Fault injection (tests): pool threads die in the middle of this step's weight pass, `times` times. */
  faults?: { threadExitAtStep: number; times: number };
}

/**
 * Steps a coordinator without compute threads lets its remote replicas run ahead before it takes their
 * state: bounds what it replays on its own if every replica is lost (~3 s for the tutorial MLP). Taking
 * the state (~7 MB) costs ~50 ms on loopback, so it is rarely worth doing more often than each epoch's
 * evaluation does anyway.
 */
const MAX_UNAPPLIED = 1000;

export interface EvalResult {
  accuracy: number;
  avgLoss: number;
}

export class Trainer implements CommittedState {
  readonly spec: ModelSpec;
  readonly optimizer: OptimizerMemory;
  /** The generation (0 or 1) of the optimizer memory that holds the committed state. */
  generation = 0;
  step = 0;
  /**
   * With --threads 0 and remote replicas, the batches of the steps the replicas applied and this
   * process has not (yet): its optimizer memory holds the state of step `step - unapplied.length`.
   */
  private unapplied: Int32Array[] = [];

  constructor(
    readonly config: TrainConfig,
    readonly dataset: Dataset,
    readonly cluster: Cluster,
    readonly memory: TrainingMemory,
    readonly adam: AdamOptions,
  ) {
    this.spec = memory.spec;
    this.optimizer = optimizerMemoryOf(memory);
  }

  get params(): Float32Array {
    return this.optimizer.paramsOf(this.generation);
  }

  /** The committed state, as sent to a remote worker that joins (call current() first). */
  snapshot() {
    return {
      spec: this.spec,
      batchSize: this.config.batchSize,
      adam: this.adam,
      step: this.step,
      generation: this.generation,
      params: this.optimizer.paramsOf(this.generation),
      m: this.optimizer.firstMomentOf(this.generation),
      v: this.optimizer.secondMomentOf(this.generation),
    };
  }

  /**
   * One optimizer step on the given dataset rows; returns the batch-mean loss. `next`, the following
   * step's rows when known, lets remote workers start on them while this step's weight pass runs.
   */
  async trainStep(index: Int32Array, next?: Int32Array): Promise<number> {
    const rows = index.length;
    this.memory.batch.index.set(index);
    if (this.cluster.wholeSteps) {
      // A whole step writes only into the next generation, so a non-finite loss found after it loses nothing.
      const results = await this.cluster.stepPass(this.step, this.generation, rows);
      return this.commit(rows, results, true);
    }
    const replicated = await this.cluster.rowPass(this.step, this.generation, rows, this.config.microBatch, this);
    if (next) this.cluster.prefetch(this.step + 1, next, this.config.microBatch);
    if (replicated) {
      // The remote replicas apply this step; this process catches up when it needs the state.
      const loss = this.batchLoss(rows);
      this.unapplied.push(index.slice());
      this.step++;
      this.generation ^= 1;
      if (this.unapplied.length >= MAX_UNAPPLIED) await this.current();
      return loss;
    }
    const replayed = this.unapplied.length > 0 && (await this.current());
    if (replayed || this.cluster.compactRows) {
      // No replica took this step, and the catch-up replayed steps through the batch buffers, or the remote
      // rows came without their inner deltas: compute the rows here for the weight pass.
      this.memory.batch.index.set(index);
      await this.cluster.rowPass(this.step, this.generation, rows, this.config.microBatch, this, true);
    }
    return this.commit(rows);
  }

  /** The batch-mean loss of the rows in the batch buffers; throws if it is not finite. */
  private batchLoss(rows: number): number {
    let lossSum = 0;
    for (let r = 0; r < rows; r++) lossSum += this.memory.batch.rowLoss[r];
    if (!Number.isFinite(lossSum)) throw nonFiniteLoss(this.step, this.locateNonFinite([this.memory.batch.rowLoss], [1], rows));
    return lossSum / rows;
  }

  /**
   * Checks the loss, runs the weight pass on the local slots (unless a whole-step task already did:
   * `results`), checks the gradient and commits the step.
   */
  private async commit(rows: number, results?: TaskResult[], whole = false): Promise<number> {
    const { batch } = this.memory;
    const loss = this.batchLoss(rows);
    results ??= await this.cluster.weightPass(this.step, this.generation, rows);
    const bad = [...new Set(results.flatMap((r) => r.nonFiniteLayers))].sort((a, b) => a - b);
    if (bad.length > 0) {
      // A whole step keeps activations and deltas inside the engine: the row pass recomputes them to locate the culprit.
      if (whole) await this.cluster.rowPass(this.step, this.generation, rows, this.config.microBatch, this, true);
      const l = bad[0];
      const sources = [l === 0 ? batch.x : batch.hidden[l - 1], batch.deltas[l]];
      const widths = [this.spec.sizes[l], this.spec.sizes[l + 1]];
      throw nonFiniteGradient(this.step, `layer ${l} (W${l}, b${l}), ${this.locateNonFinite(sources, widths, rows)}`);
    }
    this.generation ^= 1;
    this.step++;
    return loss;
  }

  /**
   * Makes this process's optimizer memory hold the committed state after steps that only the remote
   * replicas applied: it takes a replica's state, or, when no replica is left, replays those steps on
   * the local slots from the state it last had (the batches are known and the result is bitwise the
   * same). Returns true if it replayed (which reuses the batch buffers).
   */
  async current(): Promise<boolean> {
    if (this.unapplied.length === 0) return false;
    const state = await this.cluster.replicaState(this.step);
    if (state) {
      this.optimizer.paramsOf(this.generation).set(state.params);
      this.optimizer.firstMomentOf(this.generation).set(state.m);
      this.optimizer.secondMomentOf(this.generation).set(state.v);
      this.unapplied = [];
      return false;
    }
    const steps = this.unapplied;
    this.unapplied = [];
    this.step -= steps.length;
    this.generation ^= steps.length & 1;
    this.cluster.replaying(this.step, this.step + steps.length);
    for (const index of steps) {
      this.memory.batch.index.set(index);
      await this.cluster.rowPass(this.step, this.generation, index.length, this.config.microBatch, this, true);
      await this.commit(index.length);
    }
    return true;
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
    await this.cluster.evalPass(this.step, this.generation, evenSplit(test.count, this.cluster.local.size));
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

async function createCluster(config: TrainConfig, dataset: Dataset, memory: TrainingMemory, adam: AdamOptions, options: TrainOptions) {
  const emit = options.onEvent ?? (() => {});
  let faults: Int32Array | undefined;
  if (options.faults) {
    faults = new Int32Array(new SharedArrayBuffer(8));
    faults.set([options.faults.threadExitAtStep, options.faults.times]);
  }
  const local = await createWorkers(
    {
      memory,
      engine: { engine: config.engine, device: config.device },
      adam,
      faults,
    },
    Math.max(1, config.threads),
  );
  options.onWorkers?.(local);
  let hub;
  let listening: string | undefined;
  if (config.listen) {
    const { RemoteHub } = await import('../cluster/remote/hub.js');
    const [host, port] = splitHostPort(config.listen);
    hub = new RemoteHub(
      {
        host,
        port,
        token: config.token ?? undefined,
        tlsCert: config.tlsCert ?? undefined,
        tlsKey: config.tlsKey ?? undefined,
        engine: config.engine,
        datasetSha256: dataset.sha256,
        heartbeatMs: config.heartbeatMs,
        stepTimeoutMs: config.stepTimeoutMs,
        authTimeoutMs: 5000,
      },
      memory,
      (event) => emit({ type: 'cluster', event }),
    );
    try {
      const address = await hub.start();
      listening = `${config.tlsCert ? 'wss' : 'ws'}://${address.address.includes(':') ? `[${address.address}]` : address.address}:${address.port}`;
      options.onListening?.({ host: address.address, port: address.port });
    } catch (e) {
      await local.close();
      throw e;
    }
  }
  const compactRows = config.threads === 0 && config.engine === 'onnx';
  return { cluster: new Cluster(memory, local, config.threads > 0, hub, (event) => emit({ type: 'cluster', event }), compactRows), listening };
}


/** Where a run starts: from scratch, or from a checkpoint (with the options merged from it). */
function prepareRun(userConfig: Partial<TrainConfig>, emit: (e: TrainEvent) => void): { config: TrainConfig; checkpoint?: Checkpoint } {
  if (!userConfig.resume) return { config: resolveConfig(userConfig) };
  const checkpoint = latestCheckpoint(userConfig.resume, (file, reason) => emit({ type: 'checkpoint', action: 'skipped', file, reason }));
  const saved = checkpoint.header.config as Partial<TrainConfig>;
  for (const [key, value] of Object.entries(userConfig)) {
    if (value === undefined || RESUMABLE_OPTIONS.includes(key as keyof TrainConfig)) continue;
    if (JSON.stringify(value) !== JSON.stringify(saved[key as keyof TrainConfig])) throw resumeConflict(key, value, saved[key as keyof TrainConfig]);
  }
  const out = userConfig.out ?? userConfig.resume.replace(/[/\\]checkpoints[/\\]?$/, '');
  const kept = Object.fromEntries(Object.entries(saved).filter(([key]) => !SESSION_OPTIONS.includes(key as keyof TrainConfig)));
  const config = resolveConfig({ ...kept, ...userConfig, out });
  return { config, checkpoint };
}

/** Runs a whole training as configured; the programmatic form of `dtrain coordinator`. */
export async function train(userConfig: Partial<TrainConfig> = {}, options: TrainOptions = {}): Promise<RunSummary> {
  const emit = options.onEvent ?? (() => {});
  const { config, checkpoint } = prepareRun(userConfig, emit);
  const dataset =
    options.dataset ??
    loadDataset(config.data ?? undefined, {
      trainLimit: config.trainSamples || undefined,
      testLimit: config.testSamples || undefined,
    });
  const spec = makeSpec(dataset.features, config.hidden, dataset.classes, config.activation);
  const memory = createTrainingMemory(spec, dataset, config.batchSize, Math.max(1, config.threads));
  const optimizer = optimizerMemoryOf(memory);
  if (checkpoint) {
    const { header, file } = checkpoint;
    if (describeSpec(header.spec) !== describeSpec(spec)) throw checkpointMismatch(file, 'model', describeSpec(header.spec), describeSpec(spec));
    if (header.datasetSha256 !== dataset.sha256) throw checkpointMismatch(file, 'dataset', header.datasetSha256.slice(0, 12), dataset.sha256.slice(0, 12));
    optimizer.paramsOf(0).set(checkpoint.params);
    optimizer.firstMomentOf(0).set(checkpoint.m);
    optimizer.secondMomentOf(0).set(checkpoint.v);
  } else {
    initParams(spec, config.seed, optimizer.paramsOf(0));
  }
  const adam = { ...ADAM_DEFAULTS, lr: config.lr };
  const outDir = config.out ?? join('runs', new Date().toISOString().replace(/[:.]/g, '-'));
  const { cluster, listening } = await createCluster(config, dataset, memory, adam, options);
  const trainer = new Trainer(config, dataset, cluster, memory, adam);
  const layout = paramLayout(spec);
  emit({
    type: 'start',
    spec: describeSpec(spec),
    parameters: layout.total,
    dataset: dataset.name,
    trainSamples: dataset.train.count,
    testSamples: dataset.test.count,
    workers: cluster.description,
    listening,
  });
  const resumed = checkpoint?.header;
  if (checkpoint) emit({ type: 'checkpoint', action: 'resumed', file: checkpoint.file, step: checkpoint.header.step });
  trainer.step = resumed?.step ?? 0;
  const epochs: EpochResult[] = resumed ? [...resumed.epochs] : [];
  const batches = batchCount(dataset.train.count, config.batchSize);
  const shuffleRng = new Rng(config.seed ^ 0x5eed5eed);
  let trainSeconds = resumed?.trainSeconds ?? 0;
  let samplesSeen = resumed?.samplesSeen ?? 0;
  let failure: Error | undefined;
  const metrics = new MetricsLog(outDir, resumed && { step: resumed.step, epochs: resumed.epochs.length });
  let bytesBefore = cluster.bytesMoved();
  const save = async (epoch: number, batch: number, epochRngState: number[], partial: CheckpointHeader['partial']) => {
    await trainer.current();
    const file = writeCheckpoint(
      outDir,
      {
        step: trainer.step,
        epoch,
        batch,
        epochRngState,
        partial,
        config: { ...config, token: null, resume: null },
        spec,
        datasetSha256: dataset.sha256,
        epochs,
        trainSeconds,
        samplesSeen,
        paramsSha256: paramsSha256(trainer.params),
      },
      { params: trainer.params, m: optimizer.firstMomentOf(trainer.generation), v: optimizer.secondMomentOf(trainer.generation) },
      config.keepCheckpoints,
    );
    emit({ type: 'checkpoint', action: 'written', file, step: trainer.step });
  };
  try {
    for (let epoch = resumed?.epoch ?? 1; epoch <= config.epochs; epoch++) {
      const continuing = resumed && epoch === resumed.epoch;
      if (continuing) shuffleRng.setState(resumed.epochRngState);
      const epochRngState = shuffleRng.getState();
      const order = config.shuffle ? permutation(dataset.train.count, shuffleRng) : undefined;
      const partial = continuing ? resumed.partial : { seconds: 0, samples: 0, lossSum: 0, steps: 0 };
      // Moved forward by the time spent in beforeStep, which is not training.
      let t0 = performance.now() - partial.seconds * 1000;
      let { samples: epochSamples, lossSum, steps: stepsThisEpoch } = partial;
      let stopped = false;
      const indexOf = (b: number) => batchSamples(dataset.train.count, order, b, config.batchSize);
      const position = () => ({ seconds: (performance.now() - t0) / 1000, samples: epochSamples, lossSum, steps: stepsThisEpoch });
      const first = continuing ? resumed.batch : 0;
      let next = first < batches ? indexOf(first) : undefined;
      for (let b = first; b < batches; b++) {
        const index = next!;
        const last = b + 1 === batches || (config.steps > 0 && trainer.step + 1 >= config.steps);
        next = last ? undefined : indexOf(b + 1);
        if (options.beforeStep) {
          const paused = performance.now();
          await options.beforeStep(trainer.step);
          t0 += performance.now() - paused;
        }
        const stepStart = performance.now();
        const loss = await trainer.trainStep(index, next);
        const bytes = cluster.bytesMoved();
        metrics.write({ type: 'step', step: trainer.step, epoch, loss, ms: performance.now() - stepStart, bytes: bytes - bytesBefore });
        bytesBefore = bytes;
        epochSamples += index.length;
        lossSum += loss;
        stepsThisEpoch++;
        emit({ type: 'step', step: trainer.step, epoch, batch: b + 1, batches, loss });
        if (b % config.logEvery === 0) {
          emit({ type: 'log', epoch, loss, current: Math.min((b + 1) * config.batchSize, dataset.train.count), size: dataset.train.count });
        }
        stopped = (config.steps > 0 && trainer.step >= config.steps) || !!options.signal?.aborted;
        const due = config.checkpointEvery > 0 && trainer.step % config.checkpointEvery === 0;
        if ((stopped || due) && b + 1 < batches) {
          // A stop mid-epoch is checkpointed before its evaluation, so that a resume continues the epoch.
          await save(epoch, b + 1, epochRngState, position());
        }
        if (stopped) break;
      }
      // This epoch's time and samples include what it had done before a resume (the checkpoint's totals do not).
      const seconds = (performance.now() - t0) / 1000;
      trainSeconds += seconds;
      samplesSeen += epochSamples;
      const { accuracy, avgLoss } = await trainer.evaluate();
      const diverged = await cluster.verifyReplicas(trainer.step, paramsSha256(trainer.params));
      if (diverged.length > 0) emit({ type: 'cluster', event: { type: 'diverged', workers: diverged } });
      const result: EpochResult = {
        epoch,
        steps: trainer.step,
        testAccuracy: accuracy,
        testAvgLoss: avgLoss,
        trainLoss: lossSum / stepsThisEpoch,
        seconds,
        samplesPerSecond: epochSamples / seconds,
      };
      const shares = cluster.takeShares();
      metrics.write({ type: 'epoch', ...result, shares: shares.rows, networkWaitSeconds: shares.networkWaitSeconds });
      emit({ type: 'epoch', result, shares });
      epochs.push(result);
      if (stopped && epochSamples < dataset.train.count) break;
      await save(epoch + 1, 0, shuffleRng.getState(), { seconds: 0, samples: 0, lossSum: 0, steps: 0 });
      if (stopped) break;
    }
  } catch (e) {
    // The committed generation still holds the last good state; record it before failing.
    failure = e as Error;
  } finally {
    try {
      await trainer.current();
    } catch (e) {
      failure ??= e as Error;
    }
    await cluster.close();
    await metrics.close();
  }
  const summary: RunSummary = {
    dataset: { name: dataset.name, sha256: dataset.sha256, trainSamples: dataset.train.count, testSamples: dataset.test.count },
    model: { sizes: spec.sizes, activation: spec.activation, parameters: layout.total },
    engine: config.engine,
    workers: cluster.description,
    config: { ...config, token: config.token ? '(set)' : null },
    epochs,
    steps: trainer.step,
    samplesPerSecond: samplesSeen / trainSeconds,
    msPerStep: (1000 * trainSeconds) / Math.max(1, trainer.step),
    paramsSha256: paramsSha256(trainer.params),
    outDir,
    ...(failure ? { error: failure.message } : {}),
  };
  writeSummary(outDir, summary);
  if (epochs.length > 0) plotRun(outDir);
  if (failure) throw failure;
  if (config.export) exportModel(join(outDir, 'model'), spec, trainer.params, dataset.name);
  emit({ type: 'done', summary });
  return summary;
}
