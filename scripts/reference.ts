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

/**
 * ms per step of the PyTorch reference (data preloaded, batch 64) on `threads` threads: its own mean, and
 * the median of its steps, timed by torch_step_times.py around the unchanged reference script.
 */
export function torchStepTimes(threads: number, steps: number): { mean: number; median: number } {
  python ??= execFileSync('bash', [join(referenceDir, 'setup-torch.sh')], { encoding: 'utf8' }).trim();
  const out = execFileSync(
    python,
    [
      join(projectRoot, 'scripts', 'torch_step_times.py'),
      join(referenceDir, 'torch_mlp.py'),
      ...['--data', embeddedMnistDir(), '--threads', String(threads), '--steps', String(steps)],
    ],
    { encoding: 'utf8' },
  );
  const result = JSON.parse(out.trim().split('\n').pop()!);
  return { mean: result.ms_per_step, median: result.step_ms_median };
}

export function argValue(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
