/**
 * Loads the optional native helper (native/shared_alias.c, built by `npm install`): a plain Float32Array
 * over the memory of one in a SharedArrayBuffer, which onnxruntime-node accepts as tensor data. Without it
 * the engine copies shared inputs (see Scratch in engine.ts).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { packageRoot } from '../../paths.js';

type Alias = (shared: Float32Array) => Float32Array;

let loaded: Alias | null | undefined;

export function sharedAlias(): Alias | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  if (process.env.DTRAIN_NO_NATIVE) return loaded;
  const file = join(packageRoot, 'build', 'shared_alias.node');
  try {
    if (existsSync(file)) loaded = (createRequire(import.meta.url)(file) as { alias: Alias }).alias;
  } catch {
    loaded = null;
  }
  return loaded;
}
