/**
 * Scaling experiment: a matrix of local thread counts, remote-worker counts and micro-batch sizes for one
 * model and batch, each run for the same steps from the same seed. Checks that every dtrain run of one
 * global batch ends with the same paramsSha256, and writes a Markdown table, the rows as JSON and an SVG
 * plot of throughput and efficiency against participants (efficiency: samples/s per participant over
 * 1 local thread's samples/s).
 *
 * Strong scaling (the default) keeps the global batch at --batch-size whatever the participants; --weak
 * keeps each participant's share: the global batch is participants × --batch-size. Timing is steady state:
 * every remote worker has joined before step 0 (--min-workers) and the first --warmup steps are left out.
 *
 * Remote workers get their samples as pixels from the coordinator, or with --local-data load their own
 * copy of the embedded MNIST (checked by SHA-256), as each process of a PyTorch DDP run does. They run on
 * loopback, or with --link RATE each in a network namespace of its own behind a veth limited to RATE each
 * way (scripts/netns.ts; the coordinator's side, the bridge, is not limited). --torch adds PyTorch rows:
 * single-process (the tutorial model at batch 64 only: that is what torch_mlp.py runs) and DDP over gloo
 * for the remote-worker counts, whose processes share one loopback limited to world × RATE under --link.
 * --plan: the remote rows once per plan (--threads 0 runs: replicated steps, sharded weight pass, or the
 * weight pass on the coordinator, the server plan, on --server-threads of its own, at least 1).
 *
 * Emulated machines (--cpus C; docs/emulation.md): the remote rows run on N machines of C cores each — every
 * dtrain process and every DDP rank in a cgroup of its own with a CFS quota of C × --period-us (default
 * 10 ms) — with the coordinator a process of its own, placed by --layout: `apart` on a machine of its own of
 * --coordinator-cpus cores (default C), or `rank0` on machine 0, which computes too (as `dtrain run` places
 * rank 0). With --link each dtrain process, the coordinator included, sits in its own namespace behind its
 * RATE link. Every emulated row carries its fidelity (each group's CPU used and time throttled a step, the
 * host's idle share), and calibration rows (one machine's step, a 12 MB each-way ws exchange, at C against
 * unconstrained) are measured before and after the runs. Quotas adding up to over 60 % of the host's cores
 * are refused unless --allow-oversubscribed (the rows are then marked). --json FILE: { rows } for programs.
 * Local-thread and single-process PyTorch rows stay unconstrained: the references.
 *
 *   npm run scaling -- [--hidden 512,256,128,64] [--batch-size 64] [--weak] [--threads 1,2] [--remote 1,2]
 *     [--micro-batch 16] [--plan replicated,sharded,server] [--server-threads 1] [--steps 300] [--warmup 10]
 *     [--local-data] [--torch] [--link 1gbit] [--out DIR] [--json FILE]
 *     [--cpus 0.25 [--coordinator-cpus 0.2] [--period-us 10000] [--layout apart,rank0] [--allow-oversubscribed]
 *      [--calibration-rounds 30]]
 *   npm run scaling -- --combine DIR1,DIR2 --out DIR     (one plot of the rows of earlier runs)
 *
 * A flag not listed here is an error (exit 2), as is a setting the emulation cannot make (one line).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { train, type RunSummary, type TrainConfig } from '../src/index.js';
import { DEFAULTS as TRAIN_DEFAULTS, PLANS, type StepPlan } from '../src/config.js';
import { readMetrics, type MetricsRecord } from '../src/report/metrics.js';
import { panel, svgDocument } from '../src/report/plot.js';
import { scriptArgs, type ScriptArgs } from './args.js';
import { calibrateCompute, calibrateExchange, type CalibrationRow } from './calibration.js';
import { CpuGroup, DEFAULT_PERIOD_US } from './emulation.js';
import { MAX_QUOTA_SHARE, quotaLoad, type Fidelity } from './fidelity.js';
import { cli, LAYOUTS, runDdpMachines, runDtrainMachines, TOKEN, type Layout, type MachineSettings } from './machines.js';
import { TestNetwork } from './netns.js';
import { parseRate } from './rates.js';
import { mean, median, referenceDir, torchAvailable, torchStepTimes } from './reference.js';

export interface ScalingOptions {
  threads: number[];
  remote: number[];
  /** The plans the remote rows run with, each a row of its own. */
  plans: StepPlan[];
  microBatch: number[];
  steps: number;
  /** Steps left out of the timing at the start of every run. */
  warmup: number;
  trainSamples: number;
  out: string;
  torch: boolean;
  /** Remote workers load their own copy of the dataset (only the embedded MNIST: trainSamples 0). */
  localData: boolean;
  /** --no-peer-links: the workers run without a peer listener (dtrain worker --peer-listen off): a sharded step's bytes go through the coordinator. */
  noPeerLinks: boolean;
  hidden: number[];
  /** The global batch (strong scaling), or each participant's share of it (weak). */
  batchSize: number;
  weak: boolean;
  /** Each remote worker's link, as tc writes a rate (1gbit, 100mbit); null: loopback, no limit. */
  link: string | null;
  /** The coordinator's threads in server-plan runs (its weight pass and Adam); the other plans' coordinators compute nothing. */
  serverThreads: number;
  /** Emulated machines: the cores of each (a CFS quota per process); null: none, every process on the host's cores. */
  cpus: number | null;
  /** The cores of the coordinator's own machine (layout apart); null: as many as a machine's. */
  coordinatorCpus: number | null;
  /** The CFS period of every group, in µs. */
  periodUs: number;
  /** Where the coordinator runs on emulated machines: a machine of its own, or machine 0 (which computes too). */
  layouts: Layout[];
  /** Run even when the quotas add up to more than MAX_QUOTA_SHARE of the host's cores (the rows are marked). */
  allowOversubscribed: boolean;
  /** Rounds of each calibration exchange (12 MB each way); 0: no calibration. */
  calibrationRounds: number;
  /** Where to write { rows } for programs to compare; null: only OUT/scaling.json. */
  json: string | null;
}

type EmulatedKind = 'emulated machines, coordinator apart' | 'emulated machines, coordinator on machine 0';
type RunKind = 'local threads' | 'remote workers' | EmulatedKind | 'PyTorch reference' | 'PyTorch DDP (gloo)';
const EMULATED: Record<Layout, EmulatedKind> = { apart: 'emulated machines, coordinator apart', rank0: 'emulated machines, coordinator on machine 0' };

export interface ScalingRow {
  kind: RunKind;
  participants: number;
  model: string;
  globalBatch: number;
  /** The link each remote participant has: a rate, 'loopback', or '–' for one process. */
  link: string;
  /** The remote workers' plan as it ran (auto: what it chose); '–' for the other kinds. */
  plan: string;
  /** The plan asked for (--plan), which names a series of the plot; '–' for the other kinds. */
  planAsked?: string;
  /** dtrain's micro-shard rows; 0 for PyTorch. */
  microBatch: number;
  /** Mean step after the warm-up. */
  msPerStep: number;
  /** The median step after the warm-up (dtrain and single-process PyTorch; NaN where not measured). */
  medianStepMs: number;
  samplesPerSecond: number;
  efficiency: number;
  /** Mean bytes on the wire per step (remote runs), and the share of the run spent waiting on them. */
  bytesPerStep: number;
  networkWaitShare: number;
  /** Mean CPU ms of the coordinator's process per step (remote runs: what relaying the bytes costs it). */
  coordinatorCpuMs: number;
  /** The cost model's estimate of a step under the plan the run ended on (remote runs of 2+ workers that ran long enough), else NaN. */
  estimatedMs: number;
  paramsSha256: string;
  /** The cores of each emulated machine (null: not emulated), and how faithful the emulation was. */
  cpus?: number | null;
  fidelity?: Fidelity;
}

const DEFAULTS: ScalingOptions = {
  threads: [1, 2], remote: [1, 2], plans: ['auto'], microBatch: [16], steps: 300, warmup: 10, trainSamples: 0, out: 'scaling',
  torch: false, localData: false, noPeerLinks: false, hidden: TRAIN_DEFAULTS.hidden, batchSize: TRAIN_DEFAULTS.batchSize, weak: false, link: null, serverThreads: 1,
  cpus: null, coordinatorCpus: null, periodUs: DEFAULT_PERIOD_US, layouts: ['apart'], allowOversubscribed: false, calibrationRounds: 30, json: null,
};
const TUTORIAL = '784-512-256-128-64-10';
/** The test set each run evaluates at its end: small, it is not what is measured. */
const TEST_SAMPLES = 200;

const modelLabel = (hidden: number[]) => ['784', ...hidden, '10'].join('-');
const globalBatch = (o: ScalingOptions, participants: number) => (o.weak ? participants : 1) * o.batchSize;
const warmupOf = (o: ScalingOptions) => Math.min(o.warmup, Math.max(0, o.steps - 1));

/**
 * Where remote workers run: forked on loopback, or each in a namespace behind its shaped veth. Returns the
 * address to listen on, the token it needs, how to start the workers once the port is known, and clean-up.
 */
function remoteWorkers(count: number, o: ScalingOptions) {
  const args = (url: string) => [cli, 'worker', '--connect', url, '--max-retries', '2', ...workerFlags(o)];
  if (!o.link) {
    const children: ChildProcess[] = [];
    return {
      listen: '127.0.0.1:0',
      token: null,
      start: (port: number) => {
        for (let i = 0; i < count; i++) children.push(fork(cli, args(`ws://127.0.0.1:${port}`).slice(1), { stdio: 'ignore' }));
      },
      stop: () => children.forEach((c) => c.kill('SIGKILL')),
    };
  }
  const net = new TestNetwork(count);
  for (let i = 0; i < count; i++) net.shape(i, parseRate(o.link));
  return {
    listen: `${net.address}:0`,
    token: TOKEN,
    start: (port: number) => {
      const env = { ...process.env, DTRAIN_TOKEN: TOKEN };
      for (let i = 0; i < count; i++) net.spawnIn(i, process.execPath, args(`ws://${net.address}:${port}`), { stdio: 'ignore', env });
    },
    stop: () => net.remove(),
  };
}

type PlanChoices = RunSummary['plans'];

/** Whether the run's last word on it put every row of a step on one worker (summary.json plans). */
function rowsOnOne(chosen: PlanChoices): boolean {
  return [...chosen].reverse().find((c) => c.rowsOnOne !== undefined)?.rowsOnOne ?? false;
}

/** The cost model's last estimate of `plan`'s step in a run (summary.json plans), or NaN (none, or rows ran on one worker: not modelled). */
function estimateOf(plan: string, chosen: PlanChoices): number {
  if (rowsOnOne(chosen)) return NaN;
  const last = [...chosen].reverse().find((c) => c.estimates.length > 0);
  return last?.estimates.find((e) => e.plan === plan)?.ms ?? NaN;
}

/** A row's plan: as asked, and for auto the plans it ran, in order (e.g. "auto: replicated → sharded"). */
function planLabel(asked: StepPlan | undefined, chosen: PlanChoices, serverThreads: number): string {
  if (!asked) return '–';
  if (asked === 'server') return `server (${serverThreads} coordinator thread${serverThreads === 1 ? '' : 's'})`;
  if (asked !== 'auto') return asked;
  const ran = chosen.map((c) => c.plan).filter((p, i, all) => i === 0 || p !== all[i - 1]);
  return `auto: ${ran.join(' → ') || 'replicated'}${rowsOnOne(chosen) ? ', rows on one worker' : ''}`;
}

/** One dtrain run; its times are metrics.jsonl's per-step ms after the warm-up. */
async function runDtrain(kind: 'local threads' | 'remote workers', n: number, microBatch: number, o: ScalingOptions, plan: StepPlan = 'auto'): Promise<ScalingRow> {
  const out = mkdtempSync(join(o.out, 'run-'));
  const batch = globalBatch(o, n);
  const remote = kind === 'remote workers' ? remoteWorkers(n, o) : undefined;
  const config: Partial<TrainConfig> = {
    steps: o.steps, trainSamples: o.trainSamples, testSamples: TEST_SAMPLES, hidden: o.hidden, batchSize: batch, microBatch,
    logEvery: 1_000_000, export: false, out, keepCheckpoints: 1,
    // Step 0 waits for every worker: no step is timed with fewer participants than the row says.
    ...(remote ? { threads: plan === 'server' ? o.serverThreads : 0, plan, listen: remote.listen, token: remote.token, minWorkers: n, joinTimeoutMs: 60_000 } : { threads: n }),
  };
  try {
    const summary = await train(config, { onListening: ({ port }) => remote?.start(port) });
    return rowOf(kind, n, microBatch, o, remote ? plan : undefined, summary, readMetrics(out));
  } finally {
    remote?.stop();
    // The run's checkpoint of the big model is ~70 MB; what the table needs was read above.
    rmSync(out, { recursive: true, force: true });
  }
}

/** A dtrain row from its run's summary and metrics.jsonl's records: times are the per-step ms after the warm-up. */
function rowOf(kind: RunKind, n: number, microBatch: number, o: ScalingOptions, plan: StepPlan | undefined, summary: RunSummary, metrics: MetricsRecord[]): ScalingRow {
  const batch = globalBatch(o, n);
  const timedSteps = metrics.flatMap((r) => (r.type === 'step' ? [r] : [])).slice(warmupOf(o));
  const epochs = metrics.flatMap((r) => (r.type === 'epoch' ? [r] : []));
  const timed = timedSteps.map((r) => r.ms);
  const seconds = epochs.reduce((s, r) => s + r.seconds, 0);
  const msPerStep = mean(timed);
  return {
    kind, participants: n, model: modelLabel(o.hidden), globalBatch: batch, link: plan ? (o.link ?? 'loopback') : '–', plan: planLabel(plan, summary.plans, o.serverThreads), planAsked: plan ?? '–', microBatch,
    msPerStep, medianStepMs: median(timed), samplesPerSecond: (1000 * batch) / msPerStep, efficiency: 0,
    bytesPerStep: mean(timedSteps.map((r) => r.bytes)),
    coordinatorCpuMs: mean(timedSteps.map((r) => r.cpuMs)),
    estimatedMs: estimateOf(summary.plan, summary.plans),
    networkWaitShare: seconds > 0 ? epochs.reduce((s, r) => s + r.networkWaitSeconds, 0) / seconds : 0,
    paramsSha256: summary.paramsSha256,
  };
}

/** The emulated machines' settings of these options (with --cpus). */
function machineSettings(o: ScalingOptions & { cpus: number }): MachineSettings & { cpus: number } {
  return { cpus: o.cpus, coordinatorCpus: o.coordinatorCpus ?? o.cpus, periodUs: o.periodUs, link: o.link };
}

/** The coordinator's flags of a dtrain run at global batch `batch` (but for --threads and those of its placement). */
function coordinatorFlags(o: ScalingOptions, batch: number, microBatch: number, plan: StepPlan): string[] {
  return [
    ...['--train-samples', String(o.trainSamples), '--test-samples', String(TEST_SAMPLES), '--hidden', o.hidden.join(',')],
    ...['--batch-size', String(batch), '--micro-batch', String(microBatch), '--plan', plan, '--log-every', '1000000', '--no-export', '--keep-checkpoints', '1'],
  ];
}

/** One dtrain run on n emulated machines, the coordinator a process of its own placed by `layout`. */
async function runEmulated(layout: Layout, n: number, microBatch: number, o: ScalingOptions & { cpus: number }, plan: StepPlan): Promise<ScalingRow> {
  const out = mkdtempSync(join(o.out, 'run-'));
  try {
    // Apart, the coordinator computes only under the server plan; on machine 0 it is one of the machines (1 thread).
    const threads = layout === 'rank0' ? 1 : plan === 'server' ? o.serverThreads : 0;
    const flags = [...coordinatorFlags(o, globalBatch(o, n), microBatch, plan), '--threads', String(threads)];
    const run = await runDtrainMachines(n, layout, machineSettings(o), { coordinatorArgs: flags, workerArgs: workerFlags(o), out, steps: o.steps, warmup: warmupOf(o) });
    const row = rowOf(EMULATED[layout], n, microBatch, o, plan, run.summary, run.metrics);
    return { ...row, cpus: o.cpus, fidelity: run.fidelity };
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

/** The calibration rows of these options: compute on the run's model and batch, and the 12 MB exchange. */
async function calibrate(o: ScalingOptions & { cpus: number }, log: (line: string) => void): Promise<CalibrationRow[]> {
  const flags = [...coordinatorFlags(o, globalBatch(o, 1), o.microBatch[0], 'auto'), '--threads', '1'];
  const rows = [await calibrateCompute(machineSettings(o), flags, o.out, o.steps, warmupOf(o)), await calibrateExchange(o.cpus, o.periodUs, o.calibrationRounds)];
  for (const r of rows) log(calibrationLine(r));
  return rows;
}

/** Each calibration's slowdowns over its repeats, as a range against the ideal. */
function calibrationRanges(calibration: CalibrationRow[]): string[] {
  return (['calibration: compute', 'calibration: exchange'] as const).flatMap((run) => {
    const slowdowns = calibration.filter((c) => c.run === run).map((c) => c.slowdown);
    if (slowdowns.length === 0) return [];
    return [`${run}: ${Math.min(...slowdowns).toFixed(2)}–${Math.max(...slowdowns).toFixed(2)}× slower over ${slowdowns.length} measurements, ideal ${calibration[0].ideal.toFixed(2)}×.`];
  });
}

function calibrationLine(r: CalibrationRow): string {
  const what = r.run === 'calibration: compute' ? 'one machine\'s step (mean)' : 'a 12 MB each-way ws exchange (median round)';
  return (
    `${r.run}: ${what} ${r.emulatedMs.toFixed(2)} ms at ${r.cpus} core (${r.periodUs / 1000} ms period) against ${r.unconstrainedMs.toFixed(2)} ms unconstrained: ` +
    `${r.slowdown.toFixed(2)}× slower, ideal ${r.ideal.toFixed(2)}× (${((100 * r.slowdown) / r.ideal).toFixed(0)} % of ideal)` +
    `${r.rangeMs ? `; rounds ${r.rangeMs[0].toFixed(1)}–${r.rangeMs[1].toFixed(1)} ms` : ''}`
  );
}

/** The PyTorch rows: single process (tutorial model, batch 64 only) per thread count, DDP per worker count. */
async function torchRows(o: ScalingOptions, log: (line: string) => void): Promise<ScalingRow[]> {
  const rows: ScalingRow[] = [];
  const model = modelLabel(o.hidden);
  const row = (kind: RunKind, participants: number, link: string, msPerStep: number, medianStepMs: number): ScalingRow => ({
    kind, participants, model, globalBatch: globalBatch(o, participants), link, plan: '–', microBatch: 0, msPerStep, medianStepMs,
    samplesPerSecond: (1000 * globalBatch(o, participants)) / msPerStep, efficiency: 0, bytesPerStep: 0, networkWaitShare: 0, coordinatorCpuMs: NaN, estimatedMs: NaN, paramsSha256: '',
  });
  for (const threads of o.threads) {
    if (model !== TUTORIAL || globalBatch(o, threads) !== 64) {
      log(`PyTorch reference ${threads}: skipped, torch_mlp.py runs only the tutorial model at batch 64`);
      continue;
    }
    const t = torchStepTimes(threads, o.steps, warmupOf(o));
    rows.push(row('PyTorch reference', threads, '–', t.steady, t.median));
    log(`PyTorch reference ${threads}: ${t.steady.toFixed(2)} ms/step`);
  }
  for (const [i, world] of o.remote.entries()) {
    // On loopback, or in a namespace whose loopback carries world × RATE (world links of RATE at once); each rank in its group with --cpus.
    const run = { world, hidden: o.hidden, batchSize: globalBatch(o, world), steps: o.steps, warmup: warmupOf(o), port: 29531 + i };
    const ddp = await runDdpMachines(run, { cpus: o.cpus, coordinatorCpus: 0, periodUs: o.periodUs, link: o.link });
    rows.push({ ...row('PyTorch DDP (gloo)', world, o.link ?? 'loopback', ddp.msPerStep, NaN), cpus: o.cpus, fidelity: ddp.fidelity });
    log(`PyTorch DDP (gloo) ${world}: ${ddp.msPerStep.toFixed(2)} ms/step`);
  }
  return rows;
}

/**
 * With --cpus: groups can be made here, and no run's quotas add up to more than MAX_QUOTA_SHARE of the
 * host's cores unless allowed (then its rows are marked). Throws one line otherwise.
 */
function checkEmulation(o: ScalingOptions): void {
  if (o.cpus === null) {
    if (o.coordinatorCpus !== null) throw new Error('--coordinator-cpus needs --cpus (the machines\' cores)');
    return;
  }
  if (!(o.cpus > 0)) throw new Error(`--cpus ${o.cpus}: expected a positive number of cores, e.g. 0.25`);
  if (o.coordinatorCpus !== null && !(o.coordinatorCpus > 0)) throw new Error(`--coordinator-cpus ${o.coordinatorCpus}: expected a positive number of cores`);
  if (!(Number.isInteger(o.periodUs) && o.periodUs >= 1000 && o.periodUs <= 1_000_000)) throw new Error(`--period-us ${o.periodUs}: expected an integer from 1000 to 1000000`);
  if (Math.round(Math.min(o.cpus, o.coordinatorCpus ?? o.cpus) * o.periodUs) < 1000) throw new Error(`--cpus ${o.cpus} of a ${o.periodUs} µs period is a quota under the kernel's 1 ms: give a longer --period-us`);
  const largest = Math.max(...o.remote);
  const loads = [
    ...o.layouts.map((l) => [`${largest} machines, coordinator ${l}`, quotaLoad([...Array(largest).fill(o.cpus), ...(l === 'apart' ? [o.coordinatorCpus ?? o.cpus] : [])])] as const),
    ...(o.torch ? [[`DDP's ${largest} ranks`, quotaLoad(Array(largest).fill(o.cpus))] as const] : []),
  ];
  const over = loads.find(([, load]) => load.oversubscribed);
  if (over && !o.allowOversubscribed) {
    throw new Error(`${over[0]}: the quotas add up to ${over[1].quotaCores.toFixed(2)} cores, over ${100 * MAX_QUOTA_SHARE} % of this host's ${availableParallelism()}: the host would be measured, not the machines (--allow-oversubscribed runs it and marks the rows)`);
  }
  const why = CpuGroup.unavailable();
  if (why) throw new Error(`--cpus ${o.cpus} needs a cgroup per machine: ${why}`);
}

export async function runScaling(options: Partial<ScalingOptions> = {}, log: (line: string) => void = () => {}) {
  const o: ScalingOptions = { ...DEFAULTS, ...options };
  if (!(Number.isInteger(o.serverThreads) && o.serverThreads >= 1)) throw new Error(`--server-threads ${o.serverThreads}: expected an integer of at least 1`);
  const unknownLayout = o.layouts.find((l) => !LAYOUTS.includes(l));
  if (unknownLayout !== undefined) throw new Error(`--layout ${o.layouts.join(',')}: expected a comma-separated list of ${LAYOUTS.join(' | ')}, got ${unknownLayout}`);
  if (o.link) {
    parseRate(o.link);
    const why = TestNetwork.unavailable();
    if (why) throw new Error(`--link ${o.link} needs a network namespace per worker: ${why}`);
  }
  checkEmulation(o);
  const emulated = o.cpus === null ? undefined : (o as ScalingOptions & { cpus: number });
  mkdirSync(o.out, { recursive: true });
  const rows: ScalingRow[] = [];
  // Calibrated before and after the runs: two measurements at different times give a range.
  const calibration: CalibrationRow[] = emulated && o.calibrationRounds > 0 ? await calibrate(emulated, log) : [];
  for (const microBatch of o.microBatch) {
    const runs = [
      ...o.threads.map((n) => ['local threads', n, undefined] as const),
      ...(emulated
        ? o.layouts.flatMap((layout) => o.remote.flatMap((n) => plansOn(layout, o.plans, log).map((plan) => [layout, n, plan] as const)))
        : o.remote.flatMap((n) => o.plans.map((plan) => ['remote workers', n, plan] as const))),
    ];
    for (const [kind, n, plan] of runs) {
      const r = emulated && (kind === 'apart' || kind === 'rank0') ? await runEmulated(kind, n, microBatch, emulated, plan!) : await runDtrain(kind as 'local threads' | 'remote workers', n, microBatch, o, plan);
      rows.push(r);
      log(`${r.kind} ${n}${plan ? ` (${plan})` : ''}, batch ${r.globalBatch}, micro-batch ${microBatch}: ${r.msPerStep.toFixed(2)} ms/step${r.fidelity ? `; ${fidelityLine(r.fidelity)}` : ''}`);
    }
  }
  if (o.torch && torchAvailable()) rows.push(...(await torchRows(o, log)));
  else if (o.torch) log(`--torch: no PyTorch rows, ${referenceDir}/setup-torch.sh is not there (DTRAIN_REFERENCE_DIR names another folder)`);
  if (emulated && o.calibrationRounds > 0) calibration.push(...(await calibrate(emulated, log)));
  const base = rows.find((r) => r.kind === 'local threads' && r.participants === 1) ?? rows[0];
  const baseline = base.samplesPerSecond / base.participants;
  for (const r of rows) r.efficiency = r.samplesPerSecond / (r.participants * baseline);
  const groups = hashGroups(rows);
  const table = markdown(rows, groups, o) + (emulated ? emulationMarkdown(rows, calibration, emulated) : '');
  const svg = plot(rows);
  writeFileSync(join(o.out, 'scaling.md'), table);
  writeFileSync(join(o.out, 'scaling.json'), JSON.stringify({ options: o, rows, calibration }, null, 1));
  writeFileSync(join(o.out, 'scaling.svg'), svg);
  if (o.json) writeFileSync(o.json, `${JSON.stringify({ rows: comparableRows(rows, calibration) }, null, 1)}\n`);
  return { rows, calibration, identical: [...groups.values()].every((h) => h.size === 1), table, svg };
}

/** The plans a layout can run: on machine 0 the coordinator computes, which replicated and sharded do not allow (--threads 0 only). */
function plansOn(layout: Layout, plans: StepPlan[], log: (line: string) => void): StepPlan[] {
  if (layout === 'apart') return plans;
  const computing = (p: StepPlan) => p === 'auto' || p === 'server';
  for (const p of plans.filter((p) => !computing(p))) log(`coordinator on machine 0: --plan ${p} skipped, it needs a coordinator that computes nothing`);
  return plans.filter(computing);
}

/** Rows for programs (--json): a row per run with the names the issue's comparisons use, then the calibration rows. */
function comparableRows(rows: ScalingRow[], calibration: CalibrationRow[]): Record<string, unknown>[] {
  return [
    // The names first, in the order a reader compares them by; the rest of the row after.
    ...rows.map(({ kind, medianStepMs, fidelity, participants, plan, cpus, link, msPerStep, paramsSha256, ...rest }) => ({
      run: kind, participants, plan, cpus: cpus ?? null, link, msPerStep, medianMs: medianStepMs, paramsSha256, ...(fidelity ?? {}), ...rest,
    })),
    ...calibration.map((c) => ({ ...c, msPerStep: c.run === 'calibration: compute' ? c.emulatedMs : NaN, medianMs: c.run === 'calibration: exchange' ? c.emulatedMs : NaN })),
  ];
}

/** One line of a run's fidelity: each group's CPU and throttled time a step, and the host's idle share. */
function fidelityLine(f: Fidelity): string {
  const groups = f.groups.map((g) => `${g.group} ${g.cpuMsPerStep.toFixed(1)} ms CPU, ${g.throttledMsPerStep.toFixed(1)} ms throttled`).join('; ');
  return `a step: ${groups}; host idle ${Number.isFinite(f.hostIdleShare) ? `${Math.round(100 * f.hostIdleShare)} %` : '–'}${f.oversubscribed ? ` (OVERSUBSCRIBED: ${f.quotaCores.toFixed(2)} cores of quota)` : ''}`;
}

/**
 * The emulated machines' section: each run's speed-up over one machine of its kind and plan, its step against
 * DDP's at as many machines, what each group used and was throttled a step, and the calibration.
 */
function emulationMarkdown(rows: ScalingRow[], calibration: CalibrationRow[], o: ScalingOptions & { cpus: number }): string {
  const emulatedRows = rows.filter((r) => r.fidelity);
  const cell = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '–');
  const ratio = (x: number | undefined) => (x !== undefined && Number.isFinite(x) ? `${x.toFixed(2)}×` : '–');
  const oneMachine = (r: ScalingRow) => emulatedRows.find((q) => q.kind === r.kind && q.planAsked === r.planAsked && q.microBatch === r.microBatch && q.participants === 1);
  const ddp = (r: ScalingRow) => emulatedRows.find((q) => q.kind === 'PyTorch DDP (gloo)' && q.participants === r.participants && q.globalBatch === r.globalBatch);
  return [
    '',
    `Emulated machines: ${o.cpus} core each (CFS quota, ${o.periodUs / 1000} ms period)${o.layouts.includes('apart') ? `, the coordinator apart on ${o.coordinatorCpus ?? o.cpus}` : ''}` +
      `${o.link ? `; each dtrain process behind its own ${o.link} link, DDP's ranks sharing one loopback of world × ${o.link}` : '; loopback links'}. ` +
      'Fidelity over the timed steps: each group\'s CPU used and time throttled a step, the host\'s idle share (an emulation whose host has no idle time measures the host).',
    '',
    '| run | plan | participants | ms/step | × 1 machine (samples/s) | step ÷ DDP\'s | quota (cores) | host idle | group: CPU ms/step, throttled ms/step |',
    '|---|---|---|---|---|---|---|---|---|',
    ...emulatedRows.map((r) => {
      const f = r.fidelity!;
      const groups = f.groups.map((g) => `${g.group} (${g.cores}): ${cell(g.cpuMsPerStep)}, ${cell(g.throttledMsPerStep)}`).join('; ');
      const idle = Number.isFinite(f.hostIdleShare) ? `${Math.round(100 * f.hostIdleShare)} %` : '–';
      const speedUp = ratio(r.samplesPerSecond / (oneMachine(r)?.samplesPerSecond ?? NaN));
      const againstDdp = r.kind === 'PyTorch DDP (gloo)' ? '–' : ratio(r.msPerStep / (ddp(r)?.msPerStep ?? NaN));
      return `| ${r.kind} | ${r.plan} | ${r.participants} | ${r.msPerStep.toFixed(2)} | ${speedUp} | ${againstDdp} | ${f.quotaCores.toFixed(2)}${f.oversubscribed ? ' OVERSUBSCRIBED' : ''} | ${idle} | ${groups} |`;
    }),
    '',
    ...(calibration.length
      ? ['Calibration (ideal: 1/C times slower; measured before and after the runs):', '', ...calibration.map((c) => `- ${calibrationLine(c)}`), '', ...calibrationRanges(calibration), '']
      : ['No calibration (--calibration-rounds 0).', '']),
  ].join('\n');
}

/** paramsSha256 of the dtrain runs per global batch: one configuration, one hash, whoever computed it. */
function hashGroups(rows: ScalingRow[]): Map<number, Set<string>> {
  const groups = new Map<number, Set<string>>();
  for (const r of rows.filter((r) => r.paramsSha256)) {
    if (!groups.has(r.globalBatch)) groups.set(r.globalBatch, new Set());
    groups.get(r.globalBatch)!.add(r.paramsSha256);
  }
  return groups;
}

function markdown(rows: ScalingRow[], groups: Map<number, Set<string>>, o: ScalingOptions): string {
  const ms = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '–');
  const network = (r: ScalingRow) => r.kind === 'remote workers' || r.kind.startsWith('emulated machines');
  const lines = [
    `${o.weak ? 'Weak' : 'Strong'} scaling: ${o.steps} steps from seed 0 per run, global batch ${o.weak ? `participants × ${o.batchSize}` : o.batchSize}; ` +
      `ms/step and the median are over the steps after the first ${warmupOf(o)}${o.localData ? '; remote workers with their own copy of the data' : ''}` +
      `${o.link ? `; each remote worker behind a ${o.link} link (tc tbf, each way), DDP's processes sharing world × ${o.link}` : ''}. ` +
      'efficiency = samples/s ÷ (participants × samples/s of 1 local thread); coordinator CPU: its process\'s CPU time a step (remote runs: relaying the bytes).',
    '',
    '| run | plan | model | global batch | link | participants | micro-batch | ms/step | median step (ms) | s/epoch | samples/s | efficiency | wire bytes/step | waiting on the wire | coordinator CPU (ms/step) | cost model (ms/step) |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${r.kind} | ${r.plan ?? '–'} | ${r.model} | ${r.globalBatch} | ${r.link} | ${r.participants} | ${r.microBatch || '–'} | ${ms(r.msPerStep)} | ${ms(r.medianStepMs)} | ` +
        `${((r.msPerStep * Math.ceil(60000 / r.globalBatch)) / 1000).toFixed(2)} | ${Math.round(r.samplesPerSecond)} | ${r.efficiency.toFixed(2)} | ` +
        `${network(r) ? `${(r.bytesPerStep / 1e6).toFixed(2)} MB` : '–'} | ${network(r) ? `${(100 * r.networkWaitShare).toFixed(0)}%` : '–'} | ${network(r) ? ms(r.coordinatorCpuMs) : '–'} | ${ms(r.estimatedMs ?? NaN)} |`,
    ),
    '',
    ...[...groups].map(([batch, hashes]) =>
      hashes.size === 1
        ? `Every dtrain run at global batch ${batch} ended with paramsSha256 ${[...hashes][0]}.`
        : `MISMATCH: the dtrain runs at global batch ${batch} ended with ${hashes.size} different paramsSha256.`,
    ),
    '',
  ];
  return lines.join('\n');
}

const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#7f7f7f', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22'];

/**
 * Throughput and efficiency against participants, one series per run kind and configuration (the link
 * for the networked kinds, the model where the rows hold more than one), first micro-batch of each only.
 */
function plot(rows: ScalingRow[]): string {
  const models = new Set(rows.map((r) => r.model));
  const asked = (r: ScalingRow) => r.planAsked ?? r.plan;
  const name = (r: ScalingRow) =>
    [r.kind, ...(asked(r) && asked(r) !== '–' ? [asked(r)] : []), ...(r.link === '–' ? [] : [r.link]), ...(r.cpus ? [`${r.cpus} core`] : []), ...(models.size > 1 ? [r.model] : [])].join(', ');
  const firstMicro = new Map<string, number>();
  for (const r of rows) if (!firstMicro.has(name(r))) firstMicro.set(name(r), r.microBatch);
  const names = [...firstMicro.keys()];
  const series = (value: (r: ScalingRow) => number) =>
    names.map((n, i) => ({
      name: n,
      color: COLORS[i % COLORS.length],
      // Combined runs repeat the rows the link does not change (local threads): the first of each is drawn.
      points: rows
        .filter((r, j) => name(r) === n && r.microBatch === firstMicro.get(n) && rows.findIndex((q) => name(q) === n && q.microBatch === r.microBatch && q.participants === r.participants) === j)
        .map((r) => [r.participants, value(r)] as [number, number]),
    }));
  // The cost model's estimate beside each measured series that has one (remote runs of 2+ workers).
  const estimated = series((r) => Math.round((1000 * r.globalBatch) / r.estimatedMs))
    .map((s, i) => ({ ...s, name: `${s.name} (cost model)`, color: COLORS[(names.length + i) % COLORS.length], points: s.points.filter(([, y]) => Number.isFinite(y)) }))
    .filter((s) => s.points.length > 0);
  const title = models.size === 1 ? `dtrain scaling: ${[...models][0]}` : 'dtrain scaling';
  return svgDocument(
    [
      panel('Throughput (samples/s)', 'participants', [...series((r) => Math.round(r.samplesPerSecond)), ...estimated], 0),
      panel('Efficiency', 'participants', series((r) => Number(r.efficiency.toFixed(3))), 420),
    ],
    title,
  );
}

/** One plot of the rows of earlier runs (their scaling.json), e.g. with and without a link limit. */
function combine(dirs: string[], out: string): string {
  const rows = dirs.flatMap((d) => (JSON.parse(readFileSync(join(d, 'scaling.json'), 'utf8')) as { rows: ScalingRow[] }).rows);
  mkdirSync(out, { recursive: true });
  const svg = plot(rows);
  writeFileSync(join(out, 'scaling.svg'), svg);
  return svg;
}

function plansOf(text: string): StepPlan[] {
  const plans = text.split(',');
  const wrong = plans.find((p) => !(PLANS as readonly string[]).includes(p));
  if (wrong !== undefined) throw new Error(`--plan ${text}: expected a comma-separated list of ${PLANS.join(' | ')}, got ${wrong}`);
  return plans as StepPlan[];
}

/** What every remote worker is started with besides --connect. */
function workerFlags(o: ScalingOptions): string[] {
  return [...(o.localData ? ['--data', 'embedded'] : []), ...(o.noPeerLinks ? ['--peer-listen', 'off'] : [])];
}

/** The flags of `npm run scaling`: anything else is an error. */
const FLAGS = {
  threads: 'value', remote: 'value', plan: 'value', 'micro-batch': 'value', hidden: 'value', 'batch-size': 'value', weak: 'switch', link: 'value',
  'server-threads': 'value', steps: 'value', warmup: 'value', out: 'value', torch: 'switch', 'local-data': 'switch', 'no-peer-links': 'switch', combine: 'value',
  cpus: 'value', 'coordinator-cpus': 'value', 'period-us': 'value', layout: 'value', 'allow-oversubscribed': 'switch', 'calibration-rounds': 'value', json: 'value',
} as const;

export function optionsFromArgs(args: ScriptArgs): Partial<ScalingOptions> {
  // Every fallback is DEFAULTS' own value, so that the two cannot drift apart.
  // An empty list (--threads '') runs none of that kind.
  const list = (name: string, fallback: number[]) => args.value(name, fallback.join(',')).split(',').filter(Boolean).map(Number);
  const cores = (name: string) => (args.has(name) ? Number(args.value(name, '')) : null);
  return {
    threads: list('threads', DEFAULTS.threads),
    remote: list('remote', DEFAULTS.remote),
    plans: plansOf(args.value('plan', DEFAULTS.plans.join(','))),
    microBatch: list('micro-batch', DEFAULTS.microBatch),
    hidden: list('hidden', DEFAULTS.hidden),
    batchSize: Number(args.value('batch-size', String(DEFAULTS.batchSize))),
    weak: args.has('weak'),
    link: args.value('link', '') || null,
    serverThreads: Number(args.value('server-threads', String(DEFAULTS.serverThreads))),
    steps: Number(args.value('steps', String(DEFAULTS.steps))),
    warmup: Number(args.value('warmup', String(DEFAULTS.warmup))),
    // Made only when not given (a fallback argument would make a folder on every run).
    out: args.has('out') ? args.value('out', '') : mkdtempSync(join(tmpdir(), 'dtrain-scaling-')),
    torch: args.has('torch'),
    localData: args.has('local-data'),
    noPeerLinks: args.has('no-peer-links'),
    cpus: cores('cpus'),
    coordinatorCpus: cores('coordinator-cpus'),
    periodUs: Number(args.value('period-us', String(DEFAULTS.periodUs))),
    layouts: args.value('layout', DEFAULTS.layouts.join(',')).split(',') as Layout[],
    allowOversubscribed: args.has('allow-oversubscribed'),
    calibrationRounds: Number(args.value('calibration-rounds', String(DEFAULTS.calibrationRounds))),
    json: args.value('json', '') || null,
  };
}

async function main(): Promise<void> {
  const args = scriptArgs(FLAGS);
  if (args.has('combine')) {
    combine(args.value('combine', '').split(','), args.value('out', '.'));
    console.log(`plot: ${args.value('out', '.')}/scaling.svg`);
    return;
  }
  const result = await runScaling(optionsFromArgs(args), (line) => process.stderr.write(`${line}\n`));
  console.log(result.table);
  console.log(`table, rows and plot: ${args.value('out', '(temporary directory)')}/scaling.{md,json,svg}`);
  if (!result.identical) process.exitCode = 1;
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*[/\\]/, '/'))) {
  await main().catch((e: Error) => {
    // One line, e.g. that namespaces cannot be made here for --link.
    console.error(`scaling: ${e.message.split('\n')[0]}`);
    process.exitCode = 2;
  });
}
