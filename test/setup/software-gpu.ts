/**
 * vitest globalSetup: gives the test processes a WebGPU device on a machine without a GPU (CI), so that
 * `npm test` alone sets everything up. It runs scripts/software-gpu.sh (lavapipe, fetched once into .gpu/)
 * and puts its environment into this process before vitest forks its workers, which inherit it: the
 * dynamic loader reads LD_LIBRARY_PATH when a process starts, so setting it inside a test would be too late.
 * When the device cannot be had, DTRAIN_SOFTWARE_GPU_UNAVAILABLE says why, and test/webgpu.test.ts skips
 * its tests with that reason in their title. A machine whose Vulkan is already configured
 * (VK_ICD_FILENAMES set) or DTRAIN_NO_SOFTWARE_GPU=1 skips the script.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(fileURLToPath(import.meta.url), '..', '..', '..');

export default function setup(): void {
  if (process.env.VK_ICD_FILENAMES || process.env.DTRAIN_NO_SOFTWARE_GPU) return;
  // eval'd by bash as a user would, then printed NUL-separated: no quoting to undo here.
  const script = 'out=$(bash scripts/software-gpu.sh) || exit $?; eval "$out"; printf "%s\\0%s" "$VK_ICD_FILENAMES" "$LD_LIBRARY_PATH"';
  const result = spawnSync('bash', ['-c', script], { cwd: root, encoding: 'utf8', timeout: 300_000 });
  if (result.status === 0) {
    const [icd, libraries] = result.stdout.split('\0');
    process.env.VK_ICD_FILENAMES = icd;
    process.env.LD_LIBRARY_PATH = libraries;
  } else {
    const said = `${result.stderr ?? ''}`.trim().split('\n').pop() || result.error?.message || `exit status ${result.status}`;
    process.env.DTRAIN_SOFTWARE_GPU_UNAVAILABLE = said;
  }
}
