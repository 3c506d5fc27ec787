/**
 * Step-time benchmark: dtrain's engines and thread counts side by side with the PyTorch reference
 * (../shared/reference), in interleaved rounds so that the machine's drift hits every row alike.
 * Prints a Markdown table of ms/step (the median over rounds of each run's mean, and of each run's
 * per-step median) and s/epoch, and ratios of both against PyTorch on 1 thread.
 *
 *   npm run bench -- [--steps 300] [--rounds 3] [--configs onnx:1,onnx:2,tfjs:1,torch:1,torch:2] [--baseline DIR]
 *     [--device webgpu]
 *
 * --device webgpu: dtrain's runs on the WebGPU device (a software one allowed: eval scripts/software-gpu.sh
 * first on a machine without a GPU); the PyTorch rows stay on the CPU.
 * --baseline DIR: another built checkout of dtrain (e.g. a git worktree of an older commit, after its own
 * npm ci); every dtrain config then runs with it too, interleaved, as "baseline:<engine>:<threads>".
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readMetrics } from '../src/report/metrics.js';
import { scriptArgs } from './args.js';
import { median, projectRoot, torchStepTimes } from './reference.js';

const cli = join(projectRoot, 'dist/src/cli.js');
const STEPS_PER_EPOCH = 938;

const args = (() => {
  try {
    return scriptArgs({ steps: 'value', rounds: 'value', baseline: 'value', device: 'value', configs: 'value' });
  } catch (e) {
    console.error(`bench: ${(e as Error).message}`);
    process.exit(2);
  }
})();
const steps = Number(args.value('steps', '300'));
const rounds = Number(args.value('rounds', '3'));
const baseline = args.value('baseline', '');
const device = args.value('device', 'cpu');
if (device !== 'cpu' && device !== 'webgpu') throw new Error(`--device ${device}: expected cpu or webgpu`);
const onDevice = device === 'webgpu' ? ['--device', 'webgpu', '--allow-software-gpu'] : [];
const configs = args.value('configs', 'torch:1,onnx:1,torch:2,onnx:2,tfjs:1')
  .split(',')
  .flatMap((c) => (baseline && !c.startsWith('torch') ? [c, `baseline:${c}`] : [c]));

/**
 * One run: its mean ms per optimizer step (training only: no start-up, no evaluation) and the median of
 * its steps (dtrain's from metrics.jsonl, PyTorch's from torch_step_times.py).
 */
function measure(config: string): { mean: number; median: number } {
  const [engine, threads] = config.replace(/^baseline:/, '').split(':');
  if (engine === 'torch') return torchStepTimes(Number(threads), steps);
  const outDir = mkdtempSync(join(tmpdir(), 'dtrain-bench-'));
  execFileSync(
    process.execPath,
    [config.startsWith('baseline:') ? join(baseline, 'dist/src/cli.js') : cli, 'coordinator', '--engine', engine, '--threads', threads, '--steps', String(steps), '--test-samples', '1000', '--no-export', '--out', outDir, ...onDevice],
    { encoding: 'utf8' },
  );
  const stepMs = readMetrics(outDir).flatMap((r) => (r.type === 'step' ? [r.ms] : []));
  const mean = JSON.parse(readFileSync(join(outDir, 'summary.json'), 'utf8')).msPerStep as number;
  // Each run leaves a checkpoint (~7 MB for the tutorial MLP): not kept once read.
  rmSync(outDir, { recursive: true, force: true });
  return { mean, median: median(stepMs) };
}

const samples = new Map<string, number[]>(configs.map((c) => [c, []]));
const stepMedians = new Map<string, number[]>(configs.map((c) => [c, []]));
for (let r = 0; r < rounds; r++) {
  for (const config of configs) {
    const { mean, median: stepMedian } = measure(config);
    samples.get(config)!.push(mean);
    stepMedians.get(config)!.push(stepMedian);
    process.stderr.write(`round ${r + 1}/${rounds} ${config}: ${mean.toFixed(3)} ms/step\n`);
  }
}
const base = samples.has('torch:1') ? median(samples.get('torch:1')!) : undefined;
const baseStep = stepMedians.has('torch:1') ? median(stepMedians.get('torch:1')!) : undefined;
const names: Record<string, string> = { torch: 'PyTorch reference', onnx: 'dtrain onnx', tfjs: 'dtrain tfjs' };
console.log(`\n${steps} steps of batch 64 per run${device === 'cpu' ? '' : `, dtrain on ${device}`}, median of ${rounds} interleaved rounds\n`);
console.log('| run | threads | ms/step (mean) | median step (ms) | s/epoch (938 steps) | × PyTorch 1 thread (means) | × PyTorch 1 thread (median steps) |');
console.log('|---|---|---|---|---|---|---|');
for (const [config, xs] of samples) {
  const [engine, threads] = config.replace(/^baseline:/, '').split(':');
  const name = `${names[engine] ?? engine}${config.startsWith('baseline:') ? ' (baseline)' : ''}`;
  const ms = median(xs);
  const step = median(stepMedians.get(config)!);
  const ratio = base ? (ms / base).toFixed(2) : '–';
  const stepRatio = baseStep ? (step / baseStep).toFixed(2) : '–';
  console.log(`| ${name} | ${threads} | ${ms.toFixed(2)} | ${step.toFixed(2)} | ${((ms * STEPS_PER_EPOCH) / 1000).toFixed(2)} | ${ratio} | ${stepRatio} |`);
}
