/**
 * The options of a training run and of a remote worker, declared once: each table row gives the key, its
 * CLI flag, its type and help, and the defaults sit beside the table. The CLI builds its flags from these
 * tables and cluster.config.json is validated against the training one, so a key means the same thing in
 * both places. Defaults are spread under user options.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { DEVICES, ENGINES, type Device, type EngineName } from './engine/engine.js';
import { ACTIVATIONS, type Activation } from './model/spec.js';

import {
  configUnreadable,
  dashboardBeyondLoopback,
  dashboardTokenReused,
  incompatibleOptions,
  invalidConfigValue,
  invalidOption,
  MIN_TOKEN_BYTES,
  tokenTooShort,
  unknownConfigKey,
  unknownOption,
  workerNeedsConnect,
} from './errors.js';

/**
 * How a run without local compute (--threads 0) distributes a step among remote workers: each applies the
 * whole step (replicated: fewest bytes, the weight pass repeated everywhere), each its share of the output
 * units with the parameters all-gathered (sharded: the weight pass divided), or the workers compute rows
 * and the coordinator reduces, applies Adam and sends the parameters back (server: a parameter server).
 * auto: the first steps replicated, then the cheapest by the cost model from the measured members
 * (cluster/replica_plan.ts).
 */
export const REMOTE_PLANS = ['replicated', 'sharded', 'server'] as const;
export type RemotePlan = (typeof REMOTE_PLANS)[number];
export const PLANS = ['auto', ...REMOTE_PLANS] as const;
export type StepPlan = (typeof PLANS)[number];

type Kind =
  | { type: 'int'; min: number }
  /** A number from min (excluded when minExcluded) up to max (included), both finite. */
  | { type: 'number'; min: number; minExcluded?: boolean; max?: number }
  | { type: 'string' }
  | { type: 'bool' }
  | { type: 'enum'; choices: readonly string[] }
  | { type: 'intList'; min: number };

/** The kinds whose parsed value has type V, so that a row cannot parse a number into a string key. */
type KindOf<V> = [V] extends [boolean]
  ? Extract<Kind, { type: 'bool' }>
  : [V] extends [number]
    ? Extract<Kind, { type: 'int' | 'number' }>
    : [V] extends [readonly number[]]
      ? Extract<Kind, { type: 'intList' }>
      : string extends V
        ? Extract<Kind, { type: 'string' }>
        : { type: 'enum'; choices: readonly V[] };

/** One row of an option table: the CLI flag, its help and the kind of value it takes. */
export interface OptionRow<V> {
  flag: string;
  description: string;
  kind: KindOf<V>;
}

/** A row for every key of C: a key added to C without its flag is a compile error (vitest's CLIOptions<Config>). */
export type OptionTable<C> = { readonly [K in keyof C]-?: OptionRow<NonNullable<C[K]>> };

/** A row with its key, as the CLI and the validators go through them. */
export interface OptionSpec<K extends string = string> {
  key: K;
  flag: string;
  description: string;
  kind: Kind;
}

/** The rows of a table in its order (object keys keep insertion order, and --help lists them so). */
function rowsOf<C>(table: OptionTable<C>): readonly OptionSpec<keyof C & string>[] {
  return Object.entries(table).map(([key, row]) => ({ key, ...(row as Omit<OptionSpec, 'key'>) })) as OptionSpec<keyof C & string>[];
}

export interface TrainConfig {
  data: string | null;
  trainSamples: number;
  testSamples: number;
  hidden: number[];
  activation: Activation;
  seed: number;
  engine: EngineName;
  device: Device;
  allowSoftwareGpu: boolean;
  allowMixedDevices: boolean;
  threads: number;
  plan: StepPlan;
  epochs: number;
  steps: number;
  batchSize: number;
  microBatch: number;
  lr: number;
  shuffle: boolean;
  logEvery: number;
  out: string | null;
  listen: string | null;
  token: string | null;
  tlsCert: string | null;
  tlsKey: string | null;
  heartbeatMs: number;
  stepTimeoutMs: number;
  minWorkers: number;
  joinTimeoutMs: number;
  verify: number;
  checkpointEvery: number;
  keepCheckpoints: number;
  resume: string | null;
  export: boolean;
  tensorboard: boolean;
  dashboard: string | null;
  dashboardToken: string | null;
}

export const DEFAULTS: TrainConfig = {
  data: null,
  trainSamples: 0,
  testSamples: 0,
  hidden: [512, 256, 128, 64],
  activation: 'sigmoid',
  seed: 0,
  engine: 'onnx',
  device: 'cpu',
  allowSoftwareGpu: false,
  allowMixedDevices: false,
  threads: availableParallelism(),
  plan: 'auto',
  epochs: 26,
  steps: 0,
  batchSize: 64,
  microBatch: 16,
  lr: 0.001,
  shuffle: false,
  logEvery: 400,
  out: null,
  listen: null,
  token: null,
  tlsCert: null,
  tlsKey: null,
  heartbeatMs: 5000,
  stepTimeoutMs: 30000,
  minWorkers: 0,
  joinTimeoutMs: 600_000,
  verify: 0,
  checkpointEvery: 0,
  keepCheckpoints: 3,
  resume: null,
  export: true,
  tensorboard: true,
  dashboard: null,
  dashboardToken: null,
};

/** Defaults that depend on the machine, in words (docs/options.md must not change with the machine it is made on). */
export const MACHINE_DEPENDENT_DEFAULTS: Partial<Record<keyof TrainConfig, string>> = { threads: 'this machine\'s cores (`os.availableParallelism()`)' };

/** The device rows, the same for a run and for a worker. */
const DEVICE_ROWS: Pick<OptionTable<TrainConfig & WorkerConfig>, 'device' | 'allowSoftwareGpu'> = {
  device: {
    flag: '--device <name>',
    description: 'where the engine computes (webgpu: onnx on a GPU through Vulkan; cuda/gpu need a GPU build installed)',
    kind: { type: 'enum', choices: DEVICES },
  },
  allowSoftwareGpu: {
    flag: '--allow-software-gpu',
    description: 'with --device webgpu, accept a software adapter such as lavapipe (for tests: slower than --device cpu)',
    kind: { type: 'bool' },
  },
};

export const TRAIN_OPTION_TABLE: OptionTable<TrainConfig> = {
  data: { flag: '--data <dir>', description: 'IDX dataset directory (MNIST file names, plain or .gz); default: the embedded MNIST', kind: { type: 'string' } },
  trainSamples: { flag: '--train-samples <n>', description: 'use only the first n training samples (0 = all)', kind: { type: 'int', min: 0 } },
  testSamples: { flag: '--test-samples <n>', description: 'use only the first n test samples (0 = all)', kind: { type: 'int', min: 0 } },
  hidden: { flag: '--hidden <sizes>', description: 'hidden layer widths, comma-separated', kind: { type: 'intList', min: 1 } },
  activation: { flag: '--activation <name>', description: 'activation after each hidden layer', kind: { type: 'enum', choices: ACTIVATIONS } },
  seed: { flag: '--seed <n>', description: 'seed of the initialisation (and of --shuffle)', kind: { type: 'int', min: 0 } },
  engine: { flag: '--engine <name>', description: 'compute engine of every participant: the local threads and remote workers', kind: { type: 'enum', choices: ENGINES } },
  ...DEVICE_ROWS,
  allowMixedDevices: {
    flag: '--allow-mixed-devices',
    description: 'accept remote workers on another engine or device than this run\'s (results then depend on who computed what; recorded in summary.json)',
    kind: { type: 'bool' },
  },
  threads: { flag: '--threads <n>', description: 'local compute threads, this one included (0: remote workers compute everything, their replicas hold the state)', kind: { type: 'int', min: 0 } },
  plan: {
    flag: '--plan <name>',
    description: 'how remote workers share a step, with --threads 0: replicated (every replica applies the whole step), sharded (each its share of the output units, parameters all-gathered), or server, also with --threads N (workers compute rows; the coordinator reduces, applies Adam on its threads and sends the parameters back); auto: the cheapest by a cost model from the measured workers, planned again when they change',
    kind: { type: 'enum', choices: PLANS },
  },
  epochs: { flag: '--epochs <n>', description: 'passes over the training set', kind: { type: 'int', min: 1 } },
  steps: { flag: '--steps <n>', description: 'stop after n optimizer steps (0 = run all epochs)', kind: { type: 'int', min: 0 } },
  batchSize: { flag: '--batch-size <n>', description: 'samples per optimizer step', kind: { type: 'int', min: 1 } },
  microBatch: { flag: '--micro-batch <n>', description: 'rows per micro-shard, the unit of work a thread or remote worker gets', kind: { type: 'int', min: 1 } },
  lr: { flag: '--lr <rate>', description: 'Adam learning rate', kind: { type: 'number', min: 0, minExcluded: true } },
  shuffle: { flag: '--shuffle', description: 'visit the training set in a seeded random order each epoch', kind: { type: 'bool' } },
  logEvery: { flag: '--log-every <n>', description: 'print the training loss every n batches', kind: { type: 'int', min: 1 } },
  out: { flag: '--out <dir>', description: 'where summary.json goes (default runs/<timestamp>)', kind: { type: 'string' } },
  listen: { flag: '--listen <host:port>', description: 'accept remote workers (dtrain worker --connect) on this address', kind: { type: 'string' } },
  token: { flag: '--token <secret>', description: 'shared secret remote workers must prove they know (or env DTRAIN_TOKEN); required beyond loopback', kind: { type: 'string' } },
  tlsCert: { flag: '--tls-cert <file>', description: 'PEM certificate: serve wss:// instead of ws://', kind: { type: 'string' } },
  tlsKey: { flag: '--tls-key <file>', description: 'PEM private key of --tls-cert', kind: { type: 'string' } },
  heartbeatMs: { flag: '--heartbeat-ms <ms>', description: 'ping remote workers this often; one that misses a pong is dropped', kind: { type: 'int', min: 100 } },
  stepTimeoutMs: { flag: '--step-timeout-ms <ms>', description: 'a remote worker that has not answered a step by then is dropped and its rows redone; also bounds the wait for its state or checksum', kind: { type: 'int', min: 100 } },
  minWorkers: { flag: '--min-workers <n>', description: 'step 0 waits until n remote workers have joined (what torchrun\'s --nnodes gives)', kind: { type: 'int', min: 0 } },
  joinTimeoutMs: { flag: '--join-timeout-ms <ms>', description: 'how long step 0 waits for --min-workers before the run fails, naming how many are missing', kind: { type: 'int', min: 100 } },
  verify: {
    flag: '--verify <rate>',
    description: 'recompute this seeded random share of each remote worker\'s micro-shards here and compare bit for bit; a mismatch drops the worker and its rows are redone',
    kind: { type: 'number', min: 0, max: 1 },
  },
  checkpointEvery: { flag: '--checkpoint-every <steps>', description: 'write a checkpoint every n steps (0: only at the end of each epoch and when stopped)', kind: { type: 'int', min: 0 } },
  keepCheckpoints: { flag: '--keep-checkpoints <n>', description: 'how many of the newest checkpoints to keep', kind: { type: 'int', min: 1 } },
  resume: { flag: '--resume <dir>', description: 'continue the run whose --out directory (or checkpoints/) this is, from its newest valid checkpoint', kind: { type: 'string' } },
  export: { flag: '--no-export', description: 'do not write the trained model (model/: TensorFlow.js LayersModel and ONNX)', kind: { type: 'bool' } },
  tensorboard: { flag: '--no-tensorboard', description: 'do not write TensorBoard event files (tensorboard/ in the run directory)', kind: { type: 'bool' } },
  dashboard: {
    flag: '--dashboard <[host:]port>',
    description: 'serve a read-only live dashboard of the run (a web page) on this port, on 127.0.0.1 unless a host is given; beyond loopback only with --tls-cert, --tls-key and --dashboard-token',
    kind: { type: 'string' },
  },
  dashboardToken: {
    flag: '--dashboard-token <secret>',
    description: 'the viewers\' secret of a --dashboard beyond loopback (or env DTRAIN_DASHBOARD_TOKEN); never the workers\' --token',
    kind: { type: 'string' },
  },
};

export const TRAIN_OPTIONS = rowsOf(TRAIN_OPTION_TABLE);

/**
 * Options that belong to one session of a run and are never taken from a checkpoint. Everything else,
 * --steps and --epochs included, is: `--resume DIR` alone continues the run as it was configured.
 */
export const OPTIONS_NOT_FROM_CHECKPOINT: readonly (keyof TrainConfig)[] = [
  'resume', 'listen', 'token', 'tlsCert', 'tlsKey', 'minWorkers', 'joinTimeoutMs', 'plan', 'dashboard', 'dashboardToken',
];

/**
 * Options a resumed run may change: how and where it runs, not what it computes — the session's own among
 * them, which no checkpoint holds. The rest must match the checkpoint (or be left out, and are then taken from it).
 */
export const RESUMABLE_OPTIONS: readonly (keyof TrainConfig)[] = [
  ...OPTIONS_NOT_FROM_CHECKPOINT,
  'threads', 'epochs', 'steps', 'microBatch', 'logEvery', 'out', 'heartbeatMs', 'stepTimeoutMs', 'verify', 'checkpointEvery', 'keepCheckpoints',
  'export', 'tensorboard', 'device', 'allowSoftwareGpu', 'allowMixedDevices',
];

/** Secrets: never written to a checkpoint or summary.json, shown only as whether they are set. */
export const SECRET_OPTIONS = ['token', 'dashboardToken'] as const satisfies readonly (keyof TrainConfig)[];

/**
 * A worker's name (dtrain worker --name, hello.name): the coordinator shows it and its records use it as a
 * folder name (a TensorBoard run), so only these characters.
 */
export const WORKER_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/** Throws unless `name` is absent or a valid worker name (both dtrain worker and runWorker() check). */
export function checkWorkerName(name: string | undefined): void {
  if (name !== undefined && !WORKER_NAME.test(name)) throw invalidOption('name', '1 to 64 of the characters A-Z a-z 0-9 . _ -', name);
}

/** What `dtrain worker` takes: runWorker()'s options that a user chooses. */
export interface WorkerConfig {
  connect: string;
  /** How the coordinator names this worker (its records, the dashboard); default from the hostname. A rank names it instead. */
  name?: string;
  token?: string;
  ca?: string;
  threads: number;
  engine: EngineName;
  device: Device;
  allowSoftwareGpu: boolean;
  /** A local copy of the dataset ("embedded": the built-in MNIST), used only if its checksum matches. */
  data?: string;
  maxRetries: number;
  /**
   * Largest frame taken from the coordinator; absent: the size its welcome says the run needs (its model's
   * state snapshot, 12 bytes a parameter, and its batch's rows). Given: a run needing more is refused.
   */
  maxFrameBytes?: number;
  /**
   * [HOST:]PORT of the listener the other members of a sharded run link to (default: an ephemeral port on the
   * address this worker reaches the coordinator from); "off": none, its steps go through the coordinator.
   */
  peerListen?: string;
  /** HOST[:PORT] the other members should dial, when the listening address is not reachable as it is (NAT, a container). */
  advertise?: string;
}

/** Defaults of dtrain worker and of runWorker(). */
export const WORKER_DEFAULTS: Pick<WorkerConfig, 'threads' | 'engine' | 'device' | 'allowSoftwareGpu' | 'maxRetries'> = {
  threads: 1,
  engine: 'onnx',
  device: 'cpu',
  allowSoftwareGpu: false,
  maxRetries: 0,
};

export const WORKER_OPTION_TABLE: OptionTable<WorkerConfig> = {
  connect: { flag: '--connect <url>', description: 'the coordinator, ws://HOST:PORT or wss://HOST:PORT', kind: { type: 'string' } },
  name: {
    flag: '--name <name>',
    description: 'how the coordinator names this worker in its records, the same across reconnections (A-Z a-z 0-9 . _ -; default: the hostname)',
    kind: { type: 'string' },
  },
  token: { flag: '--token <secret>', description: 'the shared secret of the run (or env DTRAIN_TOKEN)', kind: { type: 'string' } },
  ca: { flag: '--ca <file>', description: 'PEM certificate of a private CA that signed the coordinator\'s TLS certificate', kind: { type: 'string' } },
  threads: { flag: '--threads <n>', description: 'compute threads on this machine', kind: { type: 'int', min: 1 } },
  engine: { flag: '--engine <name>', description: 'compute engine (must match the coordinator\'s)', kind: { type: 'enum', choices: ENGINES } },
  ...DEVICE_ROWS,
  data: {
    flag: '--data <dir>',
    description: 'a local copy of the dataset ("embedded" for the built-in MNIST); used only if its checksum matches the coordinator\'s',
    kind: { type: 'string' },
  },
  maxRetries: { flag: '--max-retries <n>', description: 'give up after n failed connection attempts in a row (0 = keep trying)', kind: { type: 'int', min: 0 } },
  maxFrameBytes: {
    flag: '--max-frame-bytes <n>',
    description: 'largest frame taken from the coordinator (default: what its welcome says the run needs; its state snapshot is 12 bytes a parameter); a run needing more is refused',
    kind: { type: 'int', min: 1 << 20 },
  },
  peerListen: {
    flag: '--peer-listen <[host:]port>',
    description: 'where the other workers of a sharded run link to this one directly ("off": none; their bytes then go through the coordinator; default: an ephemeral port on the address the coordinator is reached from)',
    kind: { type: 'string' },
  },
  advertise: {
    flag: '--advertise <host[:port]>',
    description: 'the address the other workers should dial for --peer-listen (default: the listening address)',
    kind: { type: 'string' },
  },
};

export const WORKER_OPTIONS = rowsOf(WORKER_OPTION_TABLE);

/** What `dtrain run` takes besides the training options: where the launched ranks meet. */
export interface LaunchConfig {
  port: number;
  host: string;
  coordinator: string;
  service: string;
  worldSize: number;
  tokenFile: string;
  /** TLS (docs/security-launched.md): rank 0 serves wss:// with this certificate and key; every rank is given the same files. */
  tlsCert: string;
  tlsKey: string;
  /** The CA the other ranks verify rank 0's certificate by (default: --tls-cert itself, a self-signed one). */
  ca: string;
}

/**
 * `dtrain run`: the training options every rank is given alike, less those the launch decides (listen,
 * minWorkers) or takes from elsewhere (the token: DTRAIN_TOKEN or --token-file, out of the process list),
 * and the launch's own (TLS among them: the same files for every rank, docs/security-launched.md).
 */
export type RunConfig = Omit<TrainConfig, 'listen' | 'minWorkers' | 'token' | 'tlsCert' | 'tlsKey'> & Partial<LaunchConfig>;

const { listen: _listen, minWorkers: _minWorkers, token: _token, tlsCert: _tlsCert, tlsKey: _tlsKey, ...SHARED_TRAIN_ROWS } = TRAIN_OPTION_TABLE;
const { listen: _l, minWorkers: _m, token: _t, tlsCert: _c, tlsKey: _k, ...SHARED_TRAIN_DEFAULTS } = DEFAULTS;

/** One launched process per slot is the launchers' convention, so each rank computes with one thread unless told. */
export const RUN_DEFAULTS: RunConfig = { ...SHARED_TRAIN_DEFAULTS, threads: 1 };

export const RUN_OPTION_TABLE: OptionTable<RunConfig> = {
  ...SHARED_TRAIN_ROWS,
  threads: { flag: '--threads <n>', description: 'compute threads of each rank (each rank joins as its own participant)', kind: { type: 'int', min: 1 } },
  joinTimeoutMs: {
    flag: '--join-timeout-ms <ms>',
    description: 'how long step 0 waits for every rank (and a worker for a connection) before failing, naming the missing ranks',
    kind: { type: 'int', min: 100 },
  },
  port: { flag: '--port <n>', description: 'the port rank 0 listens on (default: torchrun\'s MASTER_PORT + 1, else 29501)', kind: { type: 'int', min: 1 } },
  host: {
    flag: '--host <address>',
    description: 'the address rank 0 listens on (default: 127.0.0.1 when every rank runs on one host, else :: — IPv6 and IPv4)',
    kind: { type: 'string' },
  },
  coordinator: {
    flag: '--coordinator <host>',
    description: 'rank 0\'s host as the other ranks reach it, where the launcher does not say (or env DTRAIN_COORDINATOR)',
    kind: { type: 'string' },
  },
  service: { flag: '--service <name>', description: 'Kubernetes: the headless Service that is the Indexed Job\'s pods\' subdomain (or env DTRAIN_SERVICE)', kind: { type: 'string' } },
  worldSize: { flag: '--world-size <n>', description: 'Kubernetes: the number of ranks, the Job\'s completions (or env DTRAIN_WORLD_SIZE)', kind: { type: 'int', min: 1 } },
  tokenFile: { flag: '--token-file <file>', description: 'read the run\'s shared secret from this file, such as a mounted Kubernetes Secret (default: env DTRAIN_TOKEN)', kind: { type: 'string' } },
  tlsCert: {
    flag: '--tls-cert <file>',
    description: 'PEM certificate naming rank 0\'s host, given to every rank: rank 0 serves wss://, the others verify it (docs/security-launched.md)',
    kind: { type: 'string' },
  },
  tlsKey: { flag: '--tls-key <file>', description: 'PEM private key of --tls-cert (read by rank 0 only)', kind: { type: 'string' } },
  ca: { flag: '--ca <file>', description: 'PEM certificate of the CA that signed --tls-cert (default: --tls-cert itself, a self-signed one)', kind: { type: 'string' } },
};

export const RUN_OPTIONS = rowsOf(RUN_OPTION_TABLE);

/** A command's options and their defaults (shown by --help, never set: the resolvers spread them). */
export interface CommandTable {
  options: readonly OptionSpec[];
  defaults: object;
}

/** The commands whose options are a table here: the CLI's flags and docs/options.md are built from these. */
export const COMMAND_TABLES = {
  coordinator: { options: TRAIN_OPTIONS, defaults: DEFAULTS },
  worker: { options: WORKER_OPTIONS, defaults: WORKER_DEFAULTS },
  run: { options: RUN_OPTIONS, defaults: RUN_DEFAULTS },
} as const satisfies Record<string, CommandTable>;

const OPTION_BY_KEY = new Map<string, OptionSpec>(TRAIN_OPTIONS.map((o) => [o.key, o]));
const WORKER_OPTION_BY_KEY = new Map<string, OptionSpec>(WORKER_OPTIONS.map((o) => [o.key, o]));
const RUN_OPTION_BY_KEY = new Map<string, OptionSpec>(RUN_OPTIONS.map((o) => [o.key, o]));

/** What a kind of option accepts, as the one-line errors and docs/options.md say it. */
export function describeKind(kind: Kind): string {
  switch (kind.type) {
    case 'int':
      return kind.min === 0 ? 'a non-negative integer' : `an integer of at least ${kind.min}`;
    case 'number':
      return expectedNumber(kind);
    case 'string':
      return 'a string';
    case 'bool':
      return 'true or false';
    case 'enum':
      return `one of ${kind.choices.join(', ')}`;
    case 'intList':
      return kind.min === 1 ? 'a list of positive integers' : `a list of integers of at least ${kind.min}`;
  }
}

/** What a number kind accepts, in the words of its bounds: "a positive number", "a number from 0 to 1", … */
function expectedNumber(kind: Extract<Kind, { type: 'number' }>): string {
  const { min, minExcluded, max } = kind;
  if (max === undefined) {
    if (min === 0) return minExcluded ? 'a positive number' : 'a non-negative number';
    return minExcluded ? `a number above ${min}` : `a number of at least ${min}`;
  }
  return minExcluded ? `a number above ${min} and at most ${max}` : `a number from ${min} to ${max}`;
}

/** Checks an already-typed value (from JSON or code); returns it or undefined if it does not fit. */
function check(kind: Kind, value: unknown): unknown {
  switch (kind.type) {
    case 'int':
      return Number.isInteger(value) && (value as number) >= kind.min ? value : undefined;
    case 'number': {
      if (typeof value !== 'number' || !Number.isFinite(value)) return undefined;
      const aboveMin = kind.minExcluded ? value > kind.min : value >= kind.min;
      return aboveMin && (kind.max === undefined || value <= kind.max) ? value : undefined;
    }
    case 'string':
      return typeof value === 'string' && value.length > 0 ? value : undefined;
    case 'bool':
      return typeof value === 'boolean' ? value : undefined;
    case 'enum':
      return typeof value === 'string' && kind.choices.includes(value) ? value : undefined;
    case 'intList':
      return Array.isArray(value) && value.every((v) => Number.isInteger(v) && v >= kind.min) ? value : undefined;
  }
}

/** Parses a CLI string for an option (commander hands flags over as strings). */
export function parseOptionValue(option: OptionSpec, raw: string): unknown {
  const kind = option.kind;
  let value: unknown = raw;
  if (kind.type === 'int' || kind.type === 'number') value = raw.trim() === '' ? NaN : Number(raw);
  if (kind.type === 'intList') value = raw.split(',').map((s) => (s.trim() === '' ? NaN : Number(s)));
  const ok = check(kind, value);
  if (ok === undefined) throw invalidOption(option.key, describeKind(kind), raw);
  return ok;
}

/** Unknown keys and ill-typed values throw; undefined, and null for a string, mean "not given". */
function validate(user: object, options: ReadonlyMap<string, OptionSpec>): void {
  for (const [key, value] of Object.entries(user)) {
    if (value === undefined) continue;
    const option = options.get(key);
    if (!option) throw unknownOption(key, [...options.keys()]);
    if (value === null && option.kind.type === 'string') continue;
    if (check(option.kind, value) === undefined) throw invalidOption(key, describeKind(option.kind), value);
  }
}

/** Validates options given in code (the programmatic API): unknown keys and ill-typed values throw. */
export function resolveConfig(user: Partial<TrainConfig> = {}): TrainConfig {
  validate(user, OPTION_BY_KEY);
  const config = { ...DEFAULTS, ...stripUndefined(user) };
  if (config.microBatch > config.batchSize) {
    throw incompatibleOptions('microBatch', config as unknown as Record<string, unknown>);
  }
  if (config.listen) splitHostPort(config.listen);
  if (config.threads === 0 && !config.listen) {
    throw incompatibleOptions('threads0');
  }
  if ((config.plan === 'replicated' || config.plan === 'sharded') && config.threads > 0) {
    throw incompatibleOptions('plan', config as unknown as Record<string, unknown>);
  }
  if (config.plan === 'server' && !config.listen) {
    throw incompatibleOptions('server');
  }
  if (config.minWorkers > 0 && !config.listen) {
    throw incompatibleOptions('minWorkers');
  }
  if ((config.tlsCert === null) !== (config.tlsKey === null)) {
    throw incompatibleOptions('tls');
  }
  if (config.listen && !config.token && !isLoopback(config.listen)) {
    throw incompatibleOptions('token', { listen: config.listen });
  }
  checkToken(config.token);
  if (config.dashboard) dashboardSettings(config);
  return config;
}

/** Where and how the dashboard serves: its address, TLS files and viewer token. */
export interface DashboardSettings {
  host: string;
  port: number;
  tls?: { cert: string; key: string };
  token?: string;
}

/**
 * --dashboard: on loopback as it is; beyond it only over TLS and behind a viewer token of its own, so that
 * the workers' token (whose proofs alone cross the wire) is never sent by a browser. Reads only the session
 * options it names, so it can be checked before a resumed run's configuration is merged.
 */
export function dashboardSettings(config: Pick<Partial<TrainConfig>, 'dashboard' | 'dashboardToken' | 'token' | 'tlsCert' | 'tlsKey'>): DashboardSettings {
  const [host, port] = splitHostPort(config.dashboard ?? '', 'dashboard');
  const address = joinHostPort(host, port);
  const token = config.dashboardToken ?? undefined;
  if (token !== undefined) checkToken(token, 'dashboardToken');
  const tls = config.tlsCert && config.tlsKey ? { cert: config.tlsCert, key: config.tlsKey } : undefined;
  if (!isLoopback(address)) {
    if (!tls) throw dashboardBeyondLoopback(address, 'tls');
    if (token === undefined) throw dashboardBeyondLoopback(address, 'token');
  }
  if (token !== undefined && token === config.token) throw dashboardTokenReused();
  return { host, port, tls, token };
}

/** Validates dtrain worker's options (parsed flags, or code) and spreads the defaults under them. */
export function resolveWorkerConfig(user: Partial<WorkerConfig> = {}): WorkerConfig {
  validate(user, WORKER_OPTION_BY_KEY);
  const given = Object.fromEntries(Object.entries(user).filter(([, v]) => v !== undefined && v !== null)) as Partial<WorkerConfig>;
  if (given.connect === undefined) throw workerNeedsConnect();
  // Checked here, a mistyped URL is named as the option it is, before the worker loads an engine.
  if (!/^wss?:\/\/[^/]/.test(given.connect)) throw invalidOption('connect', 'a ws://HOST:PORT or wss://HOST:PORT URL', given.connect);
  checkWorkerName(given.name);
  checkToken(given.token);
  if (given.peerListen !== undefined && given.peerListen !== 'off' && !(new RegExp(`^((${HOST}):)?\\d{1,5}$`).test(given.peerListen) && portOf(given.peerListen) <= 65535)) {
    throw invalidOption('peerListen', '[HOST:]PORT, or off', given.peerListen);
  }
  if (given.advertise !== undefined && !(new RegExp(`^(${HOST})(:\\d{1,5})?$`).test(given.advertise) && portOf(given.advertise) <= 65535)) {
    throw invalidOption('advertise', 'HOST or HOST:PORT', given.advertise);
  }
  return { ...WORKER_DEFAULTS, ...given, connect: given.connect };
}

/**
 * Validates dtrain run's options (parsed flags, or code) and returns those given, without defaults: they
 * are handed on to train(), and a resumed run must see only what the user gave.
 */
export function validateRunConfig(user: Partial<RunConfig> = {}): Partial<RunConfig> {
  validate(user, RUN_OPTION_BY_KEY);
  return stripUndefined(user);
}

/** HOST:PORT, with an IPv6 address in brackets: the inverse of splitHostPort. */
export function joinHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * A host a peer is told to dial (--peer-listen, --advertise): a name or IPv4 address, or an IPv6 address in
 * brackets. A regular expression's source, to be placed in a group.
 */
/** The port at the end of [HOST:]PORT or HOST[:PORT] (0 when there is none). */
const portOf = (v: string): number => Number(/:(\d+)$/.exec(v)?.[1] ?? (/^\d+$/.test(v) ? v : 0));

export const HOST = String.raw`\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+`;

/** [HOST:]PORT, the host a name or address (an IPv6 one in brackets), the port a number. */
const HOST_PORT = /^(?:(?:\[([^\]]+)\]|([^:]+)):)?(\d+)$/;

/**
 * HOST:PORT (or [IPv6]:PORT) of --listen, or [HOST:]PORT of --dashboard (a port alone: 127.0.0.1; port 0: any
 * free port). Anything else, or a port above 65535, is a one-line error naming `option`.
 */
export function splitHostPort(address: string, option: 'listen' | 'dashboard' = 'listen'): [string, number] {
  // Workers must reach --listen, so its host is said; the dashboard is loopback's unless told.
  const hostOptional = option === 'dashboard';
  const match = HOST_PORT.exec(hostOptional ? address.trim() : address);
  const host = match?.[1] ?? match?.[2] ?? (match && hostOptional ? '127.0.0.1' : undefined);
  const port = Number(match?.[3]);
  if (host === undefined || !(port <= 65535)) throw invalidOption(option, hostOptional ? '[HOST:]PORT with a port from 0 to 65535' : 'HOST:PORT', address);
  return [host, port];
}

/**
 * A token must be long enough that guessing it is hopeless: its HMAC proofs cross the wire, and anyone who
 * records one can try candidate tokens offline as fast as they can hash. Both sides check, with one rule.
 */
function checkToken(token: string | null | undefined, option = 'token'): void {
  if (token !== null && token !== undefined && Buffer.byteLength(token) < MIN_TOKEN_BYTES) throw tokenTooShort(Buffer.byteLength(token), option);
}

/**
 * Whether an address's host (HOST, HOST:PORT or [IPv6]:PORT: --listen, --dashboard, a Host header) is this
 * machine only (then no token is required, and TLS adds nothing). Host names are case-insensitive.
 */
export function isLoopback(address: string): boolean {
  const host = address.replace(/:\d+$/, '').replace(/^\[|\]$/g, '').toLowerCase();
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** Reads cluster.config.json (or another file): a flat object of the same keys as the options. */
export function readConfigFile(file: string): Partial<TrainConfig> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw configUnreadable(file, (e as Error).message);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw configUnreadable(file, 'expected a JSON object of option keys');
  }
  const known = [...OPTION_BY_KEY.keys()];
  for (const [key, value] of Object.entries(parsed)) {
    if (key === '$comment') continue;
    const option = OPTION_BY_KEY.get(key as keyof TrainConfig);
    if (!option) throw unknownConfigKey(file, key, known);
    if (value !== null && check(option.kind, value) === undefined) throw invalidConfigValue(file, key, describeKind(option.kind), value);
  }
  const { $comment: _, ...rest } = parsed as Record<string, unknown>;
  return rest as Partial<TrainConfig>;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
