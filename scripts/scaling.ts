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
 *   npm run scaling -- [--hidden 512,256,128,64] [--batch-size 64] [--weak] [--threads 1,2] [--remote 1,2]
 *     [--micro-batch 16] [--plan replicated,sharded,server] [--server-threads 1] [--steps 300] [--warmup 10]
 *     [--local-data] [--torch] [--link 1gbit] [--out DIR]
 *   npm run scaling -- --combine DIR1,DIR2 --out DIR     (one plot of the rows of earlier runs)
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { train, type RunSummary, type TrainConfig } from '../src/index.js';
import { DEFAULTS as TRAIN_DEFAULTS, PLANS, type StepPlan } from '../src/config.js';
import { readMetrics } from '../src/report/metrics.js';
import { panel, svgDocument } from '../src/report/plot.js';
import { TestNetwork } from './netns.js';
import { argValue, median, projectRoot, torchAvailable, torchDdpStepMs, torchStepTimes } from './reference.js';

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
  hidden: number[];
  /** The global batch (strong scaling), or each participant's share of it (weak). */
  batchSize: number;
  weak: boolean;
  /** Each remote worker's link, as tc writes a rate (1gbit, 100mbit); null: loopback, no limit. */
  link: string | null;
  /** The coordinator's threads in server-plan runs (its weight pass and Adam); the other plans' coordinators compute nothing. */
  serverThreads: number;
}

type RunKind = 'local threads' | 'remote workers' | 'PyTorch reference' | 'PyTorch DDP (gloo)';

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
}

const DEFAULTS: ScalingOptions = {
  threads: [1, 2], remote: [1, 2], plans: ['auto'], microBatch: [16], steps: 300, warmup: 10, trainSamples: 0, out: 'scaling',
  torch: false, localData: false, hidden: TRAIN_DEFAULTS.hidden, batchSize: TRAIN_DEFAULTS.batchSize, weak: false, link: null, serverThreads: 1,
};
const TUTORIAL = '784-512-256-128-64-10';
/** Beyond loopback the coordinator requires a token; the workers read it from DTRAIN_TOKEN. */
const TOKEN = 'dtrain-scaling-link-token';
const cli = join(projectRoot, 'dist/src/cli.js');

/** Bits per second of a tc rate: 1gbit, 100mbit, 500kbit, 1000000bit. */
export function parseRate(rate: string): number {
  const m = /^(\d+(?:\.\d+)?)([kmg]?)bit$/i.exec(rate);
  if (!m) throw new Error(`--link ${rate}: expected a rate such as 1gbit or 100mbit`);
  return Number(m[1]) * { '': 1, k: 1e3, m: 1e6, g: 1e9 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
}

const modelLabel = (hidden: number[]) => ['784', ...hidden, '10'].join('-');
const globalBatch = (o: ScalingOptions, participants: number) => (o.weak ? participants : 1) * o.batchSize;
const warmupOf = (o: ScalingOptions) => Math.min(o.warmup, Math.max(0, o.steps - 1));
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/**
 * Where remote workers run: forked on loopback, or each in a namespace behind its shaped veth. Returns the
 * address to listen on, the token it needs, how to start the workers once the port is known, and clean-up.
 */
function remoteWorkers(count: number, o: ScalingOptions) {
  const args = (url: string) => [cli, 'worker', '--connect', url, '--max-retries', '2', ...(o.localData ? ['--data', 'embedded'] : [])];
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
    steps: o.steps, trainSamples: o.trainSamples, testSamples: 200, hidden: o.hidden, batchSize: batch, microBatch,
    logEvery: 1_000_000, export: false, out, keepCheckpoints: 1,
    // Step 0 waits for every worker: no step is timed with fewer participants than the row says.
    ...(remote ? { threads: plan === 'server' ? o.serverThreads : 0, plan, listen: remote.listen, token: remote.token, minWorkers: n, joinTimeoutMs: 60_000 } : { threads: n }),
  };
  try {
    const summary = await train(config, { onListening: ({ port }) => remote?.start(port) });
    const metrics = readMetrics(out);
    const steps = metrics.flatMap((r) => (r.type === 'step' ? [r] : []));
    const epochs = metrics.flatMap((r) => (r.type === 'epoch' ? [r] : []));
    const timed = steps.slice(warmupOf(o)).map((r) => r.ms);
    const seconds = epochs.reduce((s, r) => s + r.seconds, 0);
    const msPerStep = mean(timed);
    return {
      kind, participants: n, model: modelLabel(o.hidden), globalBatch: batch, link: remote ? (o.link ?? 'loopback') : '–', plan: planLabel(remote ? plan : undefined, summary.plans, o.serverThreads), planAsked: remote ? plan : '–', microBatch,
      msPerStep, medianStepMs: median(timed), samplesPerSecond: (1000 * batch) / msPerStep, efficiency: 0,
      bytesPerStep: mean(steps.slice(warmupOf(o)).map((r) => r.bytes)),
      coordinatorCpuMs: mean(steps.slice(warmupOf(o)).map((r) => r.cpuMs)),
      estimatedMs: estimateOf(summary.plan, summary.plans),
      networkWaitShare: seconds > 0 ? epochs.reduce((s, r) => s + r.networkWaitSeconds, 0) / seconds : 0,
      paramsSha256: summary.paramsSha256,
    };
  } finally {
    remote?.stop();
    // The run's checkpoint of the big model is ~70 MB; what the table needs was read above.
    rmSync(out, { recursive: true, force: true });
  }
}

/** The PyTorch rows: single process (tutorial model, batch 64 only) per thread count, DDP per worker count. */
function torchRows(o: ScalingOptions, log: (line: string) => void): ScalingRow[] {
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
  o.remote.forEach((world, i) => {
    const ms = ddpRun(o, world, 29531 + i);
    rows.push(row('PyTorch DDP (gloo)', world, o.link ?? 'loopback', ms, NaN));
    log(`PyTorch DDP (gloo) ${world}: ${ms.toFixed(2)} ms/step`);
  });
  return rows;
}

/** DDP on loopback, or in a namespace whose loopback carries world × RATE: world links of RATE at once. */
function ddpRun(o: ScalingOptions, world: number, port: number): number {
  const run = { world, hidden: o.hidden, batchSize: globalBatch(o, world), steps: o.steps, warmup: warmupOf(o), port };
  if (!o.link) return torchDdpStepMs(run);
  const net = new TestNetwork(1);
  try {
    net.shapeLoopback(0, world * parseRate(o.link));
    return torchDdpStepMs({ ...run, namespace: net.links[0].ns });
  } finally {
    net.remove();
  }
}

export async function runScaling(options: Partial<ScalingOptions> = {}, log: (line: string) => void = () => {}) {
  const o: ScalingOptions = { ...DEFAULTS, ...options };
  if (!(Number.isInteger(o.serverThreads) && o.serverThreads >= 1)) throw new Error(`--server-threads ${o.serverThreads}: expected an integer of at least 1`);
  if (o.link) {
    parseRate(o.link);
    const why = TestNetwork.unavailable();
    if (why) throw new Error(`--link ${o.link} needs a network namespace per worker: ${why}`);
  }
  mkdirSync(o.out, { recursive: true });
  const rows: ScalingRow[] = [];
  for (const microBatch of o.microBatch) {
    const runs = [
      ...o.threads.map((n) => ['local threads', n, undefined] as const),
      ...o.remote.flatMap((n) => o.plans.map((plan) => ['remote workers', n, plan] as const)),
    ];
    for (const [kind, n, plan] of runs) {
      const r = await runDtrain(kind, n, microBatch, o, plan);
      rows.push(r);
      log(`${kind} ${n}${plan ? ` (${plan})` : ''}, batch ${r.globalBatch}, micro-batch ${microBatch}: ${r.msPerStep.toFixed(2)} ms/step`);
    }
  }
  if (o.torch && torchAvailable()) rows.push(...torchRows(o, log));
  const base = rows.find((r) => r.kind === 'local threads' && r.participants === 1) ?? rows[0];
  const baseline = base.samplesPerSecond / base.participants;
  for (const r of rows) r.efficiency = r.samplesPerSecond / (r.participants * baseline);
  const groups = hashGroups(rows);
  const table = markdown(rows, groups, o);
  const svg = plot(rows);
  writeFileSync(join(o.out, 'scaling.md'), table);
  writeFileSync(join(o.out, 'scaling.json'), JSON.stringify({ options: o, rows }, null, 1));
  writeFileSync(join(o.out, 'scaling.svg'), svg);
  return { rows, identical: [...groups.values()].every((h) => h.size === 1), table, svg };
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
  const network = (r: ScalingRow) => r.kind === 'remote workers';
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
  const name = (r: ScalingRow) => [r.kind, ...(asked(r) && asked(r) !== '–' ? [asked(r)] : []), ...(r.link === '–' ? [] : [r.link]), ...(models.size > 1 ? [r.model] : [])].join(', ');
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

function optionsFromArgs(): Partial<ScalingOptions> {
  // Every fallback is DEFAULTS' own value, so that the two cannot drift apart.
  const list = (name: string, fallback: number[]) => argValue(name, fallback.join(',')).split(',').map(Number);
  return {
    threads: list('threads', DEFAULTS.threads),
    remote: list('remote', DEFAULTS.remote),
    plans: plansOf(argValue('plan', DEFAULTS.plans.join(','))),
    microBatch: list('micro-batch', DEFAULTS.microBatch),
    hidden: list('hidden', DEFAULTS.hidden),
    batchSize: Number(argValue('batch-size', String(DEFAULTS.batchSize))),
    weak: process.argv.includes('--weak'),
    link: argValue('link', '') || null,
    serverThreads: Number(argValue('server-threads', String(DEFAULTS.serverThreads))),
    steps: Number(argValue('steps', String(DEFAULTS.steps))),
    warmup: Number(argValue('warmup', String(DEFAULTS.warmup))),
    out: argValue('out', mkdtempSync(join(tmpdir(), 'dtrain-scaling-'))),
    torch: process.argv.includes('--torch'),
    localData: process.argv.includes('--local-data'),
  };
}

async function main(): Promise<void> {
  if (process.argv.includes('--combine')) {
    combine(argValue('combine', '').split(','), argValue('out', '.'));
    console.log(`plot: ${argValue('out', '.')}/scaling.svg`);
    return;
  }
  const result = await runScaling(optionsFromArgs(), (line) => process.stderr.write(`${line}\n`));
  console.log(result.table);
  console.log(`table, rows and plot: ${argValue('out', '(temporary directory)')}/scaling.{md,json,svg}`);
  if (!result.identical) process.exitCode = 1;
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*[/\\]/, '/'))) {
  await main().catch((e: Error) => {
    // One line, e.g. that namespaces cannot be made here for --link.
    console.error(`scaling: ${e.message.split('\n')[0]}`);
    process.exitCode = 2;
  });
}
