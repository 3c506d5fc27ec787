/**
 * A run session: what is set up before the first step (the configuration, merged with a checkpoint's on
 * resume; the dataset; the shared memory and the training state; the local slots, the remote hub and the
 * scheduler) and what is written after the last (checkpoints along the way; summary, plot and export).
 */
import { join } from 'node:path';
import { isLoopback, joinHostPort, resolveConfig, RESUMABLE_OPTIONS, OPTIONS_NOT_FROM_CHECKPOINT, SECRET_OPTIONS, splitHostPort, type TrainConfig } from '../config.js';
import { loadDataset, type Dataset } from '../data/datasets.js';
import { checkpointMismatch, outHoldsCheckpoints, plaintextListen, resumeConflict } from '../errors.js';
import { initParams } from '../model/init.js';
import { describeSpec, makeSpec, paramLayout, type ModelSpec } from '../model/spec.js';
import { ADAM_DEFAULTS, type AdamOptions } from '../optim/adam.js';
import { writeSummary, type EpochResult, type RunSummary } from '../report/summary.js';
import { paramsSha256 } from '../model/checksum.js';
import { chooseStepMode, Scheduler, type ClusterEvent } from '../cluster/scheduler.js';
import { createTrainingMemory, type TrainingMemory } from '../cluster/training_memory.js';
import { RowVerifier } from '../cluster/verify.js';
import { TrainingState } from '../cluster/training_state.js';
import { createTeam } from '../cluster/create_team.js';
import { prepareEngine } from '../engine/create.js';
import { exportModel } from '../report/export.js';
import { plotRun } from '../report/plot.js';
import { latestCheckpoint, listCheckpoints, stepOf, writeCheckpoint, type Checkpoint, type CheckpointHeader } from './checkpoint.js';
import type { TrainEvent, TrainOptions } from './events.js';
import type { ParticipantsRecord } from '../cluster/participant_stats.js';

/** Where a run starts: from scratch, or from a checkpoint (with the options merged from it). */
function prepareConfig(userConfig: Partial<TrainConfig>, emit: (e: TrainEvent) => void): { config: TrainConfig; checkpoint?: Checkpoint } {
  if (!userConfig.resume) {
    const config = resolveConfig(userConfig);
    // A new run would prune the other run's checkpoints as its own, and a later --resume would mix them.
    const earlier = config.out ? listCheckpoints(config.out)[0] : undefined;
    if (earlier) throw outHoldsCheckpoints(config.out!, stepOf(earlier));
    return { config };
  }
  const checkpoint = latestCheckpoint(userConfig.resume, (file, reason) => emit({ type: 'checkpoint', action: 'skipped', file, reason }));
  const saved = checkpoint.header.config as Partial<TrainConfig>;
  for (const [key, value] of Object.entries(userConfig)) {
    if (value === undefined || RESUMABLE_OPTIONS.includes(key as keyof TrainConfig)) continue;
    if (JSON.stringify(value) !== JSON.stringify(saved[key as keyof TrainConfig])) throw resumeConflict(key, value, saved[key as keyof TrainConfig]);
  }
  const out = userConfig.out ?? userConfig.resume.replace(/[/\\]checkpoints[/\\]?$/, '');
  const kept = Object.fromEntries(Object.entries(saved).filter(([key]) => !OPTIONS_NOT_FROM_CHECKPOINT.includes(key as keyof TrainConfig)));
  const config = resolveConfig({ ...kept, ...userConfig, out });
  return { config, checkpoint };
}

/** The local slots, the remote hub when the coordinator listens, and the scheduler over both. */
async function createScheduler(config: TrainConfig, dataset: Dataset, memory: TrainingMemory, adam: AdamOptions, options: TrainOptions) {
  const onEvent = (event: ClusterEvent) => options.onEvent?.({ type: 'cluster', event });
  let faults: Int32Array | undefined;
  if (options.faults) {
    const { threadExitAtStep = -1, times = 0, threadStallAtStep = -1, stallMs = 0 } = options.faults;
    faults = new Int32Array(new SharedArrayBuffer(16));
    faults.set([threadExitAtStep, times, threadStallAtStep, stallMs]);
  }
  // Once in this thread: the GPU adapter is found (and named in the workers' line) before any slot opens.
  const engine = await prepareEngine({ engine: config.engine, device: config.device, allowSoftwareGpu: config.allowSoftwareGpu });
  const local = await createTeam({ memory, engine, adam, faults }, Math.max(1, config.threads));
  options.onTeam?.(local);
  if (!config.listen) return { scheduler: new Scheduler(memory, local, chooseStepMode(config.threads, false), undefined, onEvent) };
  const { RemoteHub } = await import('../cluster/remote/hub.js');
  const [host, port] = splitHostPort(config.listen);
  const hub = new RemoteHub(
    {
      host,
      port,
      token: config.token ?? undefined,
      tlsCert: config.tlsCert ?? undefined,
      tlsKey: config.tlsKey ?? undefined,
      engine: config.engine,
      device: config.device,
      allowMixedDevices: config.allowMixedDevices,
      datasetSha256: dataset.sha256,
      heartbeatMs: config.heartbeatMs,
      stepTimeoutMs: config.stepTimeoutMs,
      authTimeoutMs: 5000,
      // Verified rows reach the other replicas only in the step's update, after the check.
      forwardRows: config.verify === 0,
    },
    memory,
    onEvent,
  );
  try {
    const address = await hub.start();
    options.onListening?.({ host: address.address, port: address.port, connections: hub.connections });
    const listening = `${config.tlsCert ? 'wss' : 'ws'}://${joinHostPort(address.address, address.port)}`;
    return { scheduler: new Scheduler(memory, local, chooseStepMode(config.threads, true, config.plan), hub, onEvent, new RowVerifier(config.verify, config.seed), config.plan), listening };
  } catch (e) {
    await local.close();
    throw e;
  }
}

export class RunSession {
  readonly layout;
  readonly outDir: string;
  readonly epochs: EpochResult[];
  trainSeconds: number;
  samplesSeen: number;
  /** Step times under each plan chosen (the scheduler's planChoices, by index): what summary.json measures them by. */
  private readonly planSteps: { ms: number; steps: number }[] = [];

  private constructor(
    readonly config: TrainConfig,
    readonly dataset: Dataset,
    readonly spec: ModelSpec,
    readonly memory: TrainingMemory,
    readonly state: TrainingState,
    readonly scheduler: Scheduler,
    readonly resumed: CheckpointHeader | undefined,
    private readonly emit: (e: TrainEvent) => void,
    readonly adam: AdamOptions,
  ) {
    this.layout = paramLayout(spec);
    this.outDir = config.out ?? join('runs', new Date().toISOString().replace(/[:.]/g, '-'));
    this.epochs = resumed ? [...resumed.epochs] : [];
    this.trainSeconds = resumed?.trainSeconds ?? 0;
    this.samplesSeen = resumed?.samplesSeen ?? 0;
  }

  /** Prepares a run: configuration, data, memory, the state (initial or from the checkpoint), compute. */
  static async open(userConfig: Partial<TrainConfig>, options: TrainOptions): Promise<RunSession> {
    const emit = options.onEvent ?? (() => {});
    const { config, checkpoint } = prepareConfig(userConfig, emit);
    const dataset =
      options.dataset ??
      loadDataset(config.data ?? undefined, { trainLimit: config.trainSamples || undefined, testLimit: config.testSamples || undefined });
    const spec = makeSpec(dataset.features, config.hidden, dataset.classes, config.activation);
    const memory = createTrainingMemory(spec, dataset, config.batchSize, Math.max(1, config.threads));
    const state = new TrainingState(memory);
    if (checkpoint) {
      const { header, file } = checkpoint;
      if (describeSpec(header.spec) !== describeSpec(spec)) throw checkpointMismatch(file, 'model', describeSpec(header.spec), describeSpec(spec));
      if (header.datasetSha256 !== dataset.sha256) throw checkpointMismatch(file, 'dataset', header.datasetSha256.slice(0, 12), dataset.sha256.slice(0, 12));
      state.load(checkpoint, header.step, 0);
    } else {
      initParams(spec, config.seed, state.params);
    }
    const adam: AdamOptions = { ...ADAM_DEFAULTS, lr: config.lr };
    const { scheduler, listening } = await createScheduler(config, dataset, memory, adam, options);
    scheduler.describeLocal({ engine: config.engine, device: config.device });
    const session = new RunSession(config, dataset, spec, memory, state, scheduler, checkpoint?.header, emit, adam);
    emit({
      type: 'start',
      spec: describeSpec(spec),
      parameters: session.layout.total,
      dataset: dataset.name,
      trainSamples: dataset.train.count,
      testSamples: dataset.test.count,
      workers: scheduler.description,
      listening,
      datasetSha256: dataset.sha256,
      outDir: session.outDir,
      config: session.shownConfig(),
    });
    if (config.listen && !config.tlsCert && !isLoopback(config.listen)) emit({ type: 'warning', message: plaintextListen(config.listen) });
    if (checkpoint) emit({ type: 'checkpoint', action: 'resumed', file: checkpoint.file, step: checkpoint.header.step });
    return session;
  }

  /** Whether the configured run has steps left (a resumed run may have finished already). */
  get workLeft(): boolean {
    const { steps, epochs } = this.config;
    if (steps > 0 && this.state.step >= steps) return false;
    return (this.resumed?.epoch ?? 1) <= epochs;
  }

  /**
   * Writes a checkpoint of the committed state at a position (the state must be current). `hashed`: the
   * parameters' SHA-256 when already computed (the epoch's end), taken if it is of the state's step.
   */
  saveCheckpoint(position: Pick<CheckpointHeader, 'epoch' | 'batch' | 'epochRngState' | 'partial'>, hashed?: { step: number; sha256: string }): void {
    const { config, state } = this;
    const file = writeCheckpoint(
      this.outDir,
      {
        step: state.step,
        ...position,
        config: { ...config, ...Object.fromEntries(SECRET_OPTIONS.map((k) => [k, null])), resume: null },
        spec: this.spec,
        datasetSha256: this.dataset.sha256,
        epochs: this.epochs,
        trainSeconds: this.trainSeconds,
        samplesSeen: this.samplesSeen,
        paramsSha256: hashed?.step === state.step ? hashed.sha256 : paramsSha256(state.params),
      },
      state.arrays(),
      config.keepCheckpoints,
    );
    this.emit({ type: 'checkpoint', action: 'written', file, step: state.step });
  }

  /** A step took `ms` under the plan chosen last. */
  stepTimed(ms: number): void {
    const i = this.scheduler.planChoices.length - 1;
    if (i < 0) return;
    this.planSteps[i] ??= { ms: 0, steps: 0 };
    this.planSteps[i].ms += ms;
    this.planSteps[i].steps++;
  }

  /** Every participant's rows and times in the step just taken (the local slots with this run's engine and device). */
  takeParticipants(epoch: number): ParticipantsRecord {
    return { step: this.state.step, epoch, participants: this.scheduler.takeParticipants() };
  }

  /** The summary of the run as it stands (failure: the error that stopped it). */
  summary(failure?: Error): RunSummary {
    const { config, dataset, state, spec } = this;
    return {
      dataset: { name: dataset.name, sha256: dataset.sha256, trainSamples: dataset.train.count, testSamples: dataset.test.count },
      model: { sizes: spec.sizes, activation: spec.activation, parameters: this.layout.total },
      engine: config.engine,
      workers: this.scheduler.description,
      plan: this.scheduler.planName,
      plans: this.scheduler.planChoices.map((c, i) => ({ ...c, measuredMs: this.planSteps[i] ? this.planSteps[i].ms / this.planSteps[i].steps : null })),
      ...this.devices(),
      config: this.shownConfig(),
      epochs: this.epochs,
      steps: state.step,
      samplesPerSecond: this.samplesSeen / this.trainSeconds,
      msPerStep: (1000 * this.trainSeconds) / Math.max(1, state.step),
      paramsSha256: paramsSha256(state.params),
      outDir: this.outDir,
      ...(failure ? { error: failure.message } : {}),
    };
  }

  /** The configuration as summary.json and the dashboard show it: whether a secret is set, never the secret. */
  shownConfig(): Record<string, unknown> {
    const { config } = this;
    return { ...config, ...Object.fromEntries(SECRET_OPTIONS.map((k) => [k, config[k] ? '(set)' : null])) };
  }

  /** Every engine/device that computed in the run: more than one only with --allow-mixed-devices. */
  private devices(): Pick<RunSummary, 'devices' | 'mixedDevices'> {
    const devices = [...new Set([`${this.config.engine}/${this.config.device}`, ...this.scheduler.remoteKinds])];
    return { devices, mixedDevices: devices.length > 1 };
  }

  /**
   * Closes the compute and writes what a run leaves: summary.json always, the plot when this session
   * logged epochs, the model unless the run failed or export is off.
   */
  async finish(failure: Error | undefined, plotted: boolean): Promise<RunSummary> {
    await this.scheduler.close();
    const summary = this.summary(failure);
    writeSummary(this.outDir, summary);
    if (plotted) plotRun(this.outDir);
    if (failure) throw failure;
    if (this.config.export) exportModel(join(this.outDir, 'model'), this.spec, this.state.params, this.dataset.name);
    this.emit({ type: 'done', summary });
    return summary;
  }
}
