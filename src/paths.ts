/**
 * Where dtrain's own files are, whether the code runs compiled (dist/src/…) or as TypeScript under
 * vitest (src/…): the package root, and the compiled file that worker threads must load.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The directory of dtrain's package.json. */
export const packageRoot = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
})();

/** A file of the compiled build, e.g. compiled('cluster/team_thread.js') → ROOT/dist/src/cluster/team_thread.js. */
export function compiled(pathUnderSrc: string): string {
  return join(packageRoot, 'dist', 'src', pathUnderSrc);
}
