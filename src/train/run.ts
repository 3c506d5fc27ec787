/**
 * `train()`, the programmatic form of `dtrain coordinator`: open a run session, loop over epochs and
 * their steps (the cursor says where the run is, the trainer takes each step), evaluate and checkpoint
 * after each epoch, and finish the session, also when a step failed (the last good state is recorded).
 */
import { type EpochResult, type RunSummary } from '../report/summary.js';
import { paramsSha256 } from '../model/checksum.js';
import { MetricsLog, readMetrics, type StepRecord } from '../report/metrics.js';
import { TensorBoardLog } from '../report/tensorboard/run_log.js';
import type { TrainConfig } from '../config.js';
import { EpochCursor } from './cursor.js';
import type { TrainEvent, TrainOptions } from './events.js';
import { RunSession } from './session.js';
import { Trainer } from './trainer.js';

/** What the epoch loop needs at hand. */
interface Loop {
  session: RunSession;
  trainer: Trainer;
  cursor: EpochCursor;
  metrics: MetricsLog;
  tensorboard: TensorBoardLog | undefined;
  options: TrainOptions;
  emit: (e: TrainEvent) => void;
  bytesBefore: number;
}

/** Runs a whole training as configured. */
export async function train(userConfig: Partial<TrainConfig> = {}, options: TrainOptions = {}): Promise<RunSummary> {
  const emit = options.onEvent ?? (() => {});
  const session = await RunSession.open(userConfig, options);
  const { config, dataset, resumed } = session;
  const trainer = new Trainer(config, dataset, session.scheduler, session.memory, session.state, session.adam, options.signal);
  const metrics = new MetricsLog(session.outDir, resumed && { step: resumed.step, epochs: resumed.epochs.length });
  const tensorboard = config.tensorboard ? new TensorBoardLog(session.outDir, resumed && { step: resumed.step, epochStep: resumed.epochs.at(-1)?.steps ?? 0 }) : undefined;
  const cursor = new EpochCursor(dataset.train.count, config.batchSize, config.shuffle, config.seed, resumed);
  let failure: Error | undefined;
  try {
    if (session.workLeft && config.minWorkers > 0) await trainer.gather(config.minWorkers, config.joinTimeoutMs, options.expectedRanks);
    if (session.workLeft) await runEpochs({ session, trainer, cursor, metrics, tensorboard, options, emit, bytesBefore: session.scheduler.bytesMoved() });
    else emit({ type: 'finished-already', step: session.state.step, epochs: session.epochs.length });
  } catch (e) {
    // The committed generation still holds the last good state; record it before failing.
    failure = e as Error;
  } finally {
    try {
      await trainer.current();
    } catch (e) {
      failure ??= e as Error;
    }
    tensorboard?.close();
    await metrics.close();
  }
  const plotted = session.epochs.length > 0 && readMetrics(session.outDir).some((r) => r.type === 'epoch');
  return session.finish(failure, plotted);
}

async function runEpochs(loop: Loop): Promise<void> {
  const { session, trainer, cursor } = loop;
  const count = session.dataset.train.count;
  for (; cursor.epoch <= session.config.epochs; cursor.epoch++) {
    cursor.begin();
    const stopped = await runBatches(loop);
    const { samples, hashed } = await endEpoch(loop);
    // A run stopped mid-epoch was checkpointed before its evaluation, so that a resume continues the epoch.
    if (stopped && samples < count) break;
    await trainer.current();
    saveCheckpoint(loop, cursor.nextEpochStart(), hashed);
    if (stopped) break;
  }
}

/** The steps of the current epoch; returns true when the run is to stop (--steps reached, or aborted). */
async function runBatches(loop: Loop): Promise<boolean> {
  const { session, trainer, cursor, metrics, tensorboard, options, emit } = loop;
  const { config, state, scheduler, dataset } = session;
  while (!cursor.epochDone) {
    const { index, next } = cursor.take(config.steps > 0 && state.step + 1 >= config.steps);
    if (options.beforeStep) await cursor.pause(() => options.beforeStep!(state.step));
    const stepStart = performance.now();
    const cpuStart = process.cpuUsage();
    const loss = await trainer.trainStep(index, next);
    const bytes = scheduler.bytesMoved();
    const cpu = process.cpuUsage(cpuStart);
    const cpuMs = (cpu.user + cpu.system) / 1000;
    const ms = performance.now() - stepStart;
    session.stepTimed(ms);
    const record: StepRecord = { type: 'step', step: state.step, epoch: cursor.epoch, loss, ms, bytes: bytes - loop.bytesBefore, cpuMs, plan: scheduler.planName };
    metrics.write(record);
    tensorboard?.step(record, index.length);
    const participants = session.takeParticipants(cursor.epoch);
    metrics.write({ type: 'participants', ...participants });
    tensorboard?.participants(participants);
    loop.bytesBefore = bytes;
    const b = cursor.batch;
    cursor.advance(index.length, loss);
    emit({ type: 'step', step: state.step, epoch: cursor.epoch, batch: b + 1, batches: cursor.batches, loss, samples: index.length, ms });
    emit({ type: 'participants', record: participants });
    if (b % config.logEvery === 0) {
      emit({ type: 'log', epoch: cursor.epoch, loss, current: Math.min((b + 1) * config.batchSize, dataset.train.count), size: dataset.train.count });
    }
    const stopped = (config.steps > 0 && state.step >= config.steps) || !!options.signal?.aborted;
    const due = config.checkpointEvery > 0 && state.step % config.checkpointEvery === 0;
    if ((stopped || due) && !cursor.epochDone) {
      await trainer.current();
      saveCheckpoint(loop, cursor.position());
    }
    if (stopped) return true;
  }
  return false;
}

/** Every step up to the checkpoint's is in the TensorBoard files before the checkpoint is: a resume from it keeps them all. */
function saveCheckpoint(loop: Loop, ...args: Parameters<RunSession['saveCheckpoint']>): void {
  loop.tensorboard?.flush();
  loop.session.saveCheckpoint(...args);
}

/**
 * Evaluates, checks the replicas and records the epoch; returns the samples it trained on, and the SHA-256
 * of the parameters at their step (hashed once: the replicas are checked against it, the checkpoint holds it).
 */
async function endEpoch(loop: Loop): Promise<{ samples: number; hashed: { step: number; sha256: string } }> {
  const { session, trainer, cursor, metrics, tensorboard, emit } = loop;
  const { samples, lossSum, steps } = cursor.progress();
  // This epoch's time and samples include what it had done before a resume (the checkpoint's totals do not).
  const seconds = cursor.seconds();
  session.trainSeconds += seconds;
  session.samplesSeen += samples;
  const started = performance.now();
  await trainer.current();
  const current = performance.now();
  const { accuracy, avgLoss } = await trainer.evaluate();
  const evaluated = performance.now();
  const hashed = { step: session.state.step, sha256: paramsSha256(session.state.params) };
  const diverged = await session.scheduler.verifyReplicas(hashed.step, hashed.sha256);
  const endSeconds = { state: (current - started) / 1000, evaluate: (evaluated - current) / 1000, verify: (performance.now() - evaluated) / 1000 };
  if (diverged.length > 0) emit({ type: 'cluster', event: { type: 'diverged', workers: diverged } });
  const result: EpochResult = {
    epoch: cursor.epoch,
    steps: session.state.step,
    testAccuracy: accuracy,
    testAvgLoss: avgLoss,
    trainLoss: lossSum / steps,
    seconds,
    samplesPerSecond: samples / seconds,
  };
  const shares = session.scheduler.takeShares();
  metrics.write({ type: 'epoch', ...result, shares: shares.rows, networkWaitSeconds: shares.networkWaitSeconds, endSeconds });
  // Its events reach the files with the checkpoint that follows (saveCheckpoint), or at train's end.
  tensorboard?.epoch(result);
  emit({ type: 'epoch', result, shares });
  session.epochs.push(result);
  return { samples, hashed };
}
