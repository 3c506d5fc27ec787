// Builds native/shared_alias.c into build/shared_alias.node with the C compiler and Node's own headers.
// Optional: if it cannot be built, dtrain copies shared buffers instead (and says so in --help's engine line).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const include = join(dirname(dirname(process.execPath)), 'include', 'node');
const out = join(root, 'build', 'shared_alias.node');
try {
  if (!existsSync(join(include, 'node_api.h'))) throw new Error(`no node_api.h in ${include}`);
  mkdirSync(dirname(out), { recursive: true });
  execFileSync(process.env.CC ?? 'cc', ['-O2', '-shared', '-fPIC', `-I${include}`, join(root, 'native', 'shared_alias.c'), '-o', out], { stdio: 'inherit' });
  console.log(`built ${out}`);
} catch (e) {
  console.warn(`dtrain: optional native helper not built (${e.message}); threads will copy shared buffers instead`);
}
