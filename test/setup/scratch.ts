/**
 * vitest globalSetup: one scratch directory for the whole run, given to every test process as TMPDIR (so
 * os.tmpdir() and mkdtemp land there) and removed when the run ends. Runs write checkpoints, metrics and
 * exported models: left in /tmp they took ~0.6 GB a run, and filled a machine's disk after enough runs.
 * DTRAIN_KEEP_TEST_FILES=1 keeps them (their place is printed).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default function setup(): () => void {
  const scratch = mkdtempSync(join(tmpdir(), 'dtrain-tests-'));
  process.env.TMPDIR = scratch;
  return () => {
    if (process.env.DTRAIN_KEEP_TEST_FILES) console.log(`test files kept in ${scratch}`);
    else rmSync(scratch, { recursive: true, force: true });
  };
}
