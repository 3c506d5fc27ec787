/**
 * The PyTorch reference of ../shared/reference (or DTRAIN_REFERENCE_DIR), run from the scripts that compare
 * against it: single-process step times, and DDP over gloo, whose ranks can each join a CPU group of an
 * emulated machine (DTRAIN_DDP_CGROUP, read by torch_ddp.py) and run in a shaped network namespace.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { embeddedMnistDir } from '../src/data/datasets.js';
import { packageRoot } from '../src/paths.js';

/** The directory of dtrain's package.json, whether this runs from scripts/ (vitest) or dist/scripts/. */
export const projectRoot = packageRoot;
/** ../shared/reference beside the checkout, or DTRAIN_REFERENCE_DIR (a git worktree sits elsewhere). */
export const referenceDir = process.env.DTRAIN_REFERENCE_DIR ?? resolve(projectRoot, '../shared/reference');

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
  /** Variables added to the environment (DTRAIN_DDP_CGROUP: each rank's CPU group). */
  env?: Record<string, string>;
}

/**
 * PyTorch DistributedDataParallel over gloo (../shared/reference/torch_ddp.py), `world` processes of one
 * thread each: ms per step timed by rank 0 from a barrier after `warmup` steps, and how many steps that is.
 */
export function torchDdpRun(r: DdpRun): Promise<{ msPerStep: number; timedSteps: number }> {
  const args = [
    join(referenceDir, 'torch_ddp.py'),
    ...['--data', embeddedMnistDir(), '--world', String(r.world), '--hidden', r.hidden.join(','), '--batch-size', String(r.batchSize)],
    // Enough epochs that --steps, not the end of the data, ends the run.
    ...['--steps', String(r.steps), '--warmup', String(r.warmup), '--epochs', String(Math.ceil((r.steps * r.batchSize) / 60000) + 1), '--port', String(r.port)],
  ];
  // nsenter, not `ip netns exec`: that mounts a /sys of the namespace's own, where the ranks would not find
  // their cgroups (DTRAIN_DDP_CGROUP); entering only the network namespace keeps the host's /sys.
  const [command, argv] = r.namespace ? ['nsenter', [`--net=/run/netns/${r.namespace}`, torchPython(), ...args]] : [torchPython(), args];
  // Gloo on loopback, as dtrain's workers: without this it picks the address the host name resolves to.
  const env = { ...process.env, GLOO_SOCKET_IFNAME: 'lo', ...r.env };
  // Not execFileSync: the caller samples the ranks' CPU groups while they run.
  return new Promise((resolve, reject) => {
    execFile(command, argv, { encoding: 'utf8', env, maxBuffer: 1 << 24 }, (error, stdout, stderr) => {
      if (error) return reject(new Error(`torch_ddp.py: ${stderr.trim().split('\n').pop() ?? error.message}`));
      const result = JSON.parse(stdout.trim().split('\n').pop()!);
      resolve({ msPerStep: result.ms_per_step, timedSteps: result.timed_steps });
    });
  });
}

export const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
