/** The PyTorch reference of ../shared/reference, run from the scripts that compare against it. */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { embeddedMnistDir } from '../src/data/datasets.js';
import { packageRoot } from '../src/paths.js';

/** The directory of dtrain's package.json, whether this runs from scripts/ (vitest) or dist/scripts/. */
export const projectRoot = packageRoot;
const referenceDir = resolve(projectRoot, '../shared/reference');

let python: string | undefined;

export function torchAvailable(): boolean {
  return existsSync(join(referenceDir, 'setup-torch.sh'));
}

function torchPython(): string {
  return (python ??= execFileSync('bash', [join(referenceDir, 'setup-torch.sh')], { encoding: 'utf8' }).trim());
}

/**
 * ms per step of the PyTorch reference (data preloaded, batch 64) on `threads` threads: its own mean, and
 * the median of its steps, timed by torch_step_times.py around the unchanged reference script; `steady`
 * is the mean of the steps after the first `warmup` (the reference itself prints only the whole run's).
 */
export function torchStepTimes(threads: number, steps: number, warmup = 0): { mean: number; median: number; steady: number } {
  const out = execFileSync(
    torchPython(),
    [
      join(projectRoot, 'scripts', 'torch_step_times.py'),
      join(referenceDir, 'torch_mlp.py'),
      ...['--data', embeddedMnistDir(), '--threads', String(threads), '--steps', String(steps)],
    ],
    { encoding: 'utf8' },
  );
  const result = JSON.parse(out.trim().split('\n').pop()!);
  // step_ms[i] is step i + 1 (the first step has no end before it to be timed from).
  const timed: number[] = (result.step_ms ?? []).slice(Math.max(0, warmup - 1));
  const steady = timed.length ? timed.reduce((a, b) => a + b, 0) / timed.length : result.ms_per_step;
  return { mean: result.ms_per_step, median: result.step_ms_median, steady };
}

export interface DdpRun {
  world: number;
  hidden: number[];
  batchSize: number;
  steps: number;
  warmup: number;
  port: number;
  /** Runs the processes inside this network namespace (their loopback is the shaped link). */
  namespace?: string;
}

/**
 * ms per step of PyTorch DistributedDataParallel over gloo (../shared/reference/torch_ddp.py), `world`
 * processes of one thread each, timed by rank 0 from a barrier after `warmup` steps.
 */
export function torchDdpStepMs(r: DdpRun): number {
  const args = [
    join(referenceDir, 'torch_ddp.py'),
    ...['--data', embeddedMnistDir(), '--world', String(r.world), '--hidden', r.hidden.join(','), '--batch-size', String(r.batchSize)],
    // Enough epochs that --steps, not the end of the data, ends the run.
    ...['--steps', String(r.steps), '--warmup', String(r.warmup), '--epochs', String(Math.ceil((r.steps * r.batchSize) / 60000) + 1), '--port', String(r.port)],
  ];
  const [command, argv] = r.namespace ? ['ip', ['netns', 'exec', r.namespace, torchPython(), ...args]] : [torchPython(), args];
  // Gloo on loopback, as dtrain's workers: without this it picks the address the host name resolves to.
  const out = execFileSync(command, argv, { encoding: 'utf8', env: { ...process.env, GLOO_SOCKET_IFNAME: 'lo' }, stdio: ['ignore', 'pipe', 'pipe'] });
  return JSON.parse(out.trim().split('\n').pop()!).ms_per_step;
}

export function argValue(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
