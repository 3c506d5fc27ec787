/**
 * Scaling experiment: a matrix of local thread counts, loopback remote-worker counts and micro-batch
 * sizes, each run for the same steps from the same seed. Checks that every run ends with the same
 * paramsSha256, and writes a Markdown table and an SVG plot of throughput and efficiency against the
 * number of workers (efficiency: samples/s per worker over 1 local thread's samples/s).
 *
 * Remote workers get their samples as pixels from the coordinator, or with --local-data load their own
 * copy of the embedded MNIST (checked by SHA-256), as each process of a PyTorch DDP run does.
 *
 *   npm run scaling -- [--threads 1,2] [--remote 1,2] [--micro-batch 16] [--steps 300] [--local-data] [--torch] [--out DIR]
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { train, type TrainConfig } from '../src/index.js';
import { readMetrics } from '../src/report/metrics.js';
import { panel, svgDocument } from '../src/report/plot.js';
import { argValue, median, projectRoot, torchAvailable, torchStepTimes } from './reference.js';

export interface ScalingOptions {
  threads: number[];
  remote: number[];
  microBatch: number[];
  steps: number;
  trainSamples: number;
  out: string;
  torch: boolean;
  /** Remote workers load their own copy of the dataset (only the embedded MNIST: trainSamples 0). */
  localData: boolean;
}

export interface ScalingRow {
  kind: 'local threads' | 'remote workers' | 'PyTorch reference';
  workers: number;
  microBatch: number;
  msPerStep: number;
  /** The median step (dtrain runs): the steady state, without start-up or the machine's stalls. */
  medianStepMs: number;
  samplesPerSecond: number;
  efficiency: number;
  /** Mean bytes on the wire per step (remote runs), and the share of step time spent waiting on them. */
  bytesPerStep: number;
  networkWaitShare: number;
  paramsSha256: string;
}

const cli = join(projectRoot, 'dist/src/cli.js');

async function runOnce(kind: 'local threads' | 'remote workers', workers: number, microBatch: number, o: ScalingOptions) {
  const out = mkdtempSync(join(o.out, 'run-'));
  const config: Partial<TrainConfig> = {
    steps: o.steps,
    trainSamples: o.trainSamples,
    testSamples: 200,
    microBatch,
    logEvery: 1_000_000,
    export: false,
    out,
    ...(kind === 'local threads' ? { threads: workers } : { threads: 0, listen: '127.0.0.1:0' }),
  };
  const children: ChildProcess[] = [];
  let joined = 0;
  let allJoined = () => {};
  const ready = new Promise<void>((resolve, reject) => {
    allJoined = resolve;
    setTimeout(() => reject(new Error(`only ${joined} of ${workers} remote workers joined within 60 s`)), 60_000).unref();
  });
  try {
    const summary = await train(config, {
      onListening: ({ port }) => {
        const data = o.localData ? ['--data', 'embedded'] : [];
        for (let i = 0; i < workers; i++) children.push(fork(cli, ['worker', '--connect', `ws://127.0.0.1:${port}`, '--max-retries', '2', ...data], { stdio: 'ignore' }));
      },
      onEvent: (e) => e.type === 'cluster' && e.event.type === 'joined' && ++joined === workers && allJoined(),
      // Time only steps that every worker can take part in.
      beforeStep: (step) => (step === 0 && kind === 'remote workers' ? ready : undefined),
    });
    const metrics = readMetrics(out);
    const steps = metrics.filter((r) => r.type === 'step');
    const epochs = metrics.filter((r) => r.type === 'epoch');
    const wait = epochs.reduce((s, r) => s + (r.type === 'epoch' ? r.networkWaitSeconds : 0), 0);
    const seconds = epochs.reduce((s, r) => s + (r.type === 'epoch' ? r.seconds : 0), 0);
    const stepMs = steps.flatMap((r) => (r.type === 'step' ? [r.ms] : []));
    return {
      msPerStep: summary.msPerStep,
      medianStepMs: median(stepMs),
      samplesPerSecond: summary.samplesPerSecond,
      bytesPerStep: steps.reduce((s, r) => s + (r.type === 'step' ? r.bytes : 0), 0) / Math.max(1, steps.length),
      networkWaitShare: seconds > 0 ? wait / seconds : 0,
      paramsSha256: summary.paramsSha256,
    };
  } finally {
    for (const c of children) c.kill('SIGKILL');
  }
}

export async function runScaling(options: Partial<ScalingOptions> = {}, log: (line: string) => void = () => {}) {
  const o: ScalingOptions = { threads: [1, 2], remote: [1, 2], microBatch: [16], steps: 300, trainSamples: 0, out: 'scaling', torch: false, localData: false, ...options };
  mkdirSync(o.out, { recursive: true });
  const rows: ScalingRow[] = [];
  let baseline = 0;
  for (const microBatch of o.microBatch) {
    for (const [kind, counts] of [['local threads', o.threads], ['remote workers', o.remote]] as const) {
      for (const workers of counts) {
        const r = await runOnce(kind, workers, microBatch, o);
        if (kind === 'local threads' && workers === 1 && !baseline) baseline = r.samplesPerSecond;
        rows.push({ kind, workers, microBatch, ...r, efficiency: 0 });
        log(`${kind} ${workers}, micro-batch ${microBatch}: ${r.msPerStep.toFixed(2)} ms/step`);
      }
    }
  }
  if (o.torch && torchAvailable()) {
    for (const threads of o.threads) {
      const { mean, median: medianStepMs } = torchStepTimes(threads, o.steps);
      rows.push({ kind: 'PyTorch reference', workers: threads, microBatch: 64, msPerStep: mean, medianStepMs, samplesPerSecond: 64000 / mean, efficiency: 0, bytesPerStep: 0, networkWaitShare: 0, paramsSha256: '' });
    }
  }
  baseline ||= rows[0].samplesPerSecond;
  for (const r of rows) r.efficiency = r.samplesPerSecond / (r.workers * baseline);
  const hashes = new Set(rows.filter((r) => r.paramsSha256).map((r) => r.paramsSha256));
  const table = markdown(rows, hashes, o);
  const svg = plot(rows);
  writeFileSync(join(o.out, 'scaling.md'), table);
  writeFileSync(join(o.out, 'scaling.svg'), svg);
  return { rows, identical: hashes.size === 1, table, svg };
}

function markdown(rows: ScalingRow[], hashes: Set<string>, o: ScalingOptions): string {
  const lines = [
    `${o.steps} steps of batch 64 from seed 0 per run${o.localData ? ', remote workers with their own copy of the data' : ''}; ` +
      'ms/step is the mean over the run (start-up and stalls included), s/epoch its 938 steps; ' +
      'efficiency = samples/s ÷ (workers × samples/s of 1 local thread).',
    '',
    '| run | workers | micro-batch | ms/step | median step (ms) | s/epoch | samples/s | efficiency | wire bytes/step | waiting on the wire |',
    '|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${r.kind} | ${r.workers} | ${r.microBatch} | ${r.msPerStep.toFixed(2)} | ${r.medianStepMs.toFixed(2)} | ${((r.msPerStep * 938) / 1000).toFixed(2)} | ` +
        `${Math.round(r.samplesPerSecond)} | ${r.efficiency.toFixed(2)} | ` +
        `${r.bytesPerStep ? `${(r.bytesPerStep / 1e6).toFixed(2)} MB` : '–'} | ${r.kind === 'remote workers' ? `${(100 * r.networkWaitShare).toFixed(0)}%` : '–'} |`,
    ),
    '',
    hashes.size === 1 ? `Every dtrain run ended with paramsSha256 ${[...hashes][0]}.` : `MISMATCH: the runs ended with ${hashes.size} different paramsSha256.`,
    '',
  ];
  return lines.join('\n');
}

function plot(rows: ScalingRow[]): string {
  const series = (kind: ScalingRow['kind'], value: (r: ScalingRow) => number, color: string) => {
    const microBatch = rows.find((r) => r.kind === kind)?.microBatch;
    return { name: kind, color, points: rows.filter((r) => r.kind === kind && r.microBatch === microBatch).map((r) => [r.workers, value(r)] as [number, number]) };
  };
  const kinds = [
    ['local threads', '#1f77b4'],
    ['remote workers', '#ff7f0e'],
    ['PyTorch reference', '#7f7f7f'],
  ] as const;
  const present = kinds.filter(([k]) => rows.some((r) => r.kind === k));
  return svgDocument(
    [
      panel('Throughput (samples/s)', 'workers', present.map(([k, c]) => series(k, (r) => Math.round(r.samplesPerSecond), c)), 0),
      panel('Efficiency', 'workers', present.map(([k, c]) => series(k, (r) => Number(r.efficiency.toFixed(3)), c)), 420),
    ],
    'dtrain scaling',
  );
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*[/\\]/, '/'))) {
  const list = (name: string, fallback: string) => argValue(name, fallback).split(',').map(Number);
  const result = await runScaling(
    {
      threads: list('threads', '1,2'),
      remote: list('remote', '1,2'),
      microBatch: list('micro-batch', '16'),
      steps: Number(argValue('steps', '300')),
      out: argValue('out', mkdtempSync(join(tmpdir(), 'dtrain-scaling-'))),
      torch: process.argv.includes('--torch'),
      localData: process.argv.includes('--local-data'),
    },
    (line) => process.stderr.write(`${line}\n`),
  );
  console.log(result.table);
  console.log(`table and plot: ${argValue('out', '(temporary directory)')}/scaling.{md,svg}`);
  if (!result.identical) process.exitCode = 1;
}
