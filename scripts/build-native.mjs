// Builds each native/NAME.c into build/NAME.node with the C compiler and Node's own headers. All are
// optional: without shared_alias dtrain copies shared buffers for onnxruntime (and says so in --help's
// engine line); without ort_direct the onnx engine goes through onnxruntime-node's binding.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const include = join(dirname(dirname(process.execPath)), 'include', 'node');
for (const source of readdirSync(join(root, 'native')).filter((f) => f.endsWith('.c'))) {
  const out = join(root, 'build', source.replace(/\.c$/, '.node'));
  try {
    if (!existsSync(join(include, 'node_api.h'))) throw new Error(`no node_api.h in ${include}`);
    mkdirSync(dirname(out), { recursive: true });
    const args = ['-O2', '-Wall', '-shared', '-fPIC', `-I${include}`, join(root, 'native', source), '-o', out, '-ldl'];
    execFileSync(process.env.CC ?? 'cc', args, { stdio: 'inherit' });
    console.log(`built ${out}`);
  } catch (e) {
    console.warn(`dtrain: optional native helper ${source} not built (${e.message})`);
  }
}
