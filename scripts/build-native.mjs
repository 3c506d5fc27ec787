// Builds dtrain's one native addon, native/dtrain_native.c, into build/dtrain_native.node with the C
// compiler and Node's own headers. Optional: without it the onnx engine goes through onnxruntime-node's
// binding and copies shared buffers (a run's `workers: …` line then lacks "through its C API"), so a failed build
// only warns (README, Requirements).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const include = join(dirname(dirname(process.execPath)), 'include', 'node');
const source = join(root, 'native', 'dtrain_native.c');
const out = join(root, 'build', 'dtrain_native.node');
try {
  if (!existsSync(join(include, 'node_api.h'))) throw new Error(`no node_api.h in ${include}`);
  mkdirSync(dirname(out), { recursive: true });
  const args = ['-O2', '-Wall', '-shared', '-fPIC', `-I${include}`, source, '-o', out, '-ldl'];
  execFileSync(process.env.CC ?? 'cc', args, { stdio: 'inherit' });
  console.log(`built ${out}`);
} catch (e) {
  console.warn(`dtrain: optional native addon not built (${e.message})`);
}
