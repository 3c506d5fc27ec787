/**
 * dtrain run under the launchers users run: real ones on this machine (mpirun, torchrun, a throwaway
 * single-node Slurm), and Slurm across nodes and a Kubernetes Indexed Job through the environment they
 * give (set by hand, their host names resolved to loopback by test/fixtures/cluster-dns.mjs). Every run
 * must end with the parameters of a run on local threads. A launcher that cannot be had is skipped with
 * one line saying why, never silently.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { referenceHash } from './remote_helpers.js';
import { freePort } from './helpers.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'dist/src/cli.js');
const fixtures = join(root, 'test/fixtures');
const out = mkdtempSync(join(tmpdir(), 'dtrain-launch-'));
let runs = 0;
// The tiny run of the remote tests (remote_helpers.ts BASE): 145 samples, 2 full batches and a short one, twice.
const TRAIN = ['--train-samples', '145', '--test-samples', '100', '--epochs', '2', '--log-every', '1000', '--heartbeat-ms', '500', '--no-export'];

const reference = referenceHash({ threads: 2, export: false }, 'reference');

/** The environment of the tests without any launcher's variables (CI may itself run inside a Slurm job). */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const launcherVariable = /^(SLURM_|OMPI_|PMIX?_|MPI_LOCAL|TORCHELASTIC_|MASTER_|DTRAIN_|(LOCAL_)?RANK$|(LOCAL_)?WORLD_SIZE$|JOB_COMPLETION_INDEX$)/;
  return { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !launcherVariable.test(k))), ...extra };
}

/** `dtrain run` arguments for one run: a fresh --out directory, and the port when given. */
function runArgs(port?: number, ...more: string[]) {
  const dir = join(out, String(runs++));
  return { dir, args: ['run', ...TRAIN, '--out', dir, ...(port ? ['--port', String(port)] : []), ...more] };
}

const children: ChildProcess[] = [];
afterEach(() => {
  // A launcher's own children go with it: each was started as the leader of its process group.
  for (const c of children.splice(0)) if (c.exitCode === null && c.pid) process.kill(-c.pid, 'SIGKILL');
});

/** Runs a command to its end (or `timeoutMs`), returning its exit code and its output, both streams. */
function launch(command: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 45_000): Promise<{ code: number | null; output: string }> {
  const child = spawn(command, args, { cwd: root, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const timer = setTimeout(() => child.pid && process.kill(-child.pid, 'SIGKILL'), timeoutMs);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

/** Starts one rank by hand with `env` (a launcher's variables), as the launcher would. */
function rank(args: string[], env: NodeJS.ProcessEnv) {
  return launch(process.execPath, [cli, ...args], cleanEnv({ NODE_OPTIONS: `--import ${pathToFileURL(join(fixtures, 'cluster-dns.mjs'))}`, ...env }));
}

/** The run ended well, every rank said which launcher it found, and rank 0 wrote the reference parameters. */
async function expectReference(result: { code: number | null; output: string }, dir: string, launcher: string, ranks = 3) {
  expect(result.code, result.output).toBe(0);
  const said = result.output.split('\n').filter((l) => l.startsWith(`dtrain run: ${launcher} (`));
  expect(said, result.output).toHaveLength(ranks);
  expect(JSON.parse(readFileSync(join(dir, 'summary.json'), 'utf8')).paramsSha256).toBe(await reference());
}

function which(command: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${command}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** Skips a test whose launcher cannot be had, saying so in one line. */
function unavailable(skip: (note: string) => never, launcher: string, why: string): never {
  console.warn(`launchers: skipping the ${launcher} test: ${why}`);
  return skip(`${launcher}: ${why}`);
}

describe('dtrain run under real launchers', () => {
  it('runs under mpirun -np 3 (Open MPI): rank 0 trains, ranks 1 and 2 join it, and the run ends on the threads-only parameters', async (ctx) => {
    const mpirun = which('mpirun');
    if (!mpirun) unavailable(ctx.skip, 'mpirun', 'mpirun is not installed (Debian: apt-get install openmpi-bin; .ci/run installs it)');
    const { dir, args } = runArgs(await freePort());
    const result = await launch(mpirun!, ['-np', '3', '--oversubscribe', '--allow-run-as-root', process.execPath, cli, ...args], cleanEnv());
    await expectReference(result, dir, 'Open MPI');
  });

  it('runs under torchrun --standalone --nproc-per-node 3, listening beside its rendezvous store (MASTER_PORT + 1)', async (ctx) => {
    const setup = join(root, '../shared/reference/setup-torch.sh');
    const made = spawnSync('bash', [setup], { encoding: 'utf8', timeout: 90_000 });
    if (made.status !== 0) unavailable(ctx.skip, 'torchrun', `${setup} could not make PyTorch's venv: ${(made.stderr || String(made.error)).trim().split('\n').pop()}`);
    const torchrun = join(dirname(made.stdout.trim()), 'torchrun');
    const { dir, args } = runArgs();
    const result = await launch(torchrun, ['--standalone', '--nproc-per-node', '3', '--no-python', process.execPath, cli, ...args], cleanEnv());
    await expectReference(result, dir, 'torchrun');
    expect(result.output).toMatch(/MASTER_PORT=(\d+)\): rank 0 of 3, local rank 0 of 3: the coordinator, listening on 127\.0\.0\.1:\d+ for 2 workers/);
    const [, store, listening] = /MASTER_PORT=(\d+)\): rank 0 .* listening on 127\.0\.0\.1:(\d+)/.exec(result.output)!;
    expect(Number(listening)).toBe(Number(store) + 1);
  }, 120_000);

  describe('Slurm, a single-node cluster of its own (slurmctld, slurmd, munge)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dtrain-slurm-'));
    let conf: string | undefined;
    let why = '';
    beforeAll(async () => {
      const up = spawnSync(join(fixtures, 'slurm-cluster.sh'), ['up', dir, String(await freePort()), String(await freePort())], { encoding: 'utf8', timeout: 45_000 });
      if (up.status === 0) conf = up.stdout.trim();
      else why = (up.stderr || String(up.error)).trim().split('\n').pop() ?? 'it did not start';
    }, 60_000);
    afterAll(() => void spawnSync(join(fixtures, 'slurm-cluster.sh'), ['down', dir]));

    it('runs examples/slurm.sbatch (sbatch, then srun of 3 tasks), one node and 3 tasks instead of its 2 × 2', async (ctx) => {
      if (!conf) unavailable(ctx.skip, 'Slurm', `no Slurm cluster could be started here: ${why}`);
      // The example's options come first and ours after them, so ours win: a free port, the tiny run.
      const { dir: runDir, args } = runArgs(await freePort());
      const log = join(dir, 'job.out');
      const sbatch = ['--wait', '--time=5', '--nodes=1', '--ntasks-per-node=3', '--cpus-per-task=1', '--overcommit', `--output=${log}`];
      const result = await launch('sbatch', [...sbatch, 'examples/slurm.sbatch', ...args.slice(1)], cleanEnv({ SLURM_CONF: conf, DTRAIN_TOKEN: 'slurm job token, 16+ bytes' }));
      await expectReference({ code: result.code, output: result.output + readFileSync(log, 'utf8') }, runDir, 'Slurm');
    });
  });
});

describe('dtrain run in a launcher\'s environment, set by hand', () => {
  it('Slurm on several nodes: rank 0 is the first host of the compressed SLURM_JOB_NODELIST, and the token comes from DTRAIN_TOKEN', async () => {
    const port = await freePort();
    const { dir, args } = runArgs(port, '--host', '127.0.0.1');
    const job = { SLURM_JOB_ID: '42', SLURM_STEP_ID: '0', SLURM_NTASKS: '3', SLURM_JOB_NODELIST: 'gpu[07-09]', SLURM_NNODES: '3', DTRAIN_TOKEN: 'slurm secret, 16+ bytes', DTRAIN_TEST_HOSTS: 'gpu07' };
    const results = await Promise.all([0, 1, 2].map((r) => rank(args, { ...job, SLURM_PROCID: String(r), SLURM_LOCALID: '0' })));
    const output = results.map((r) => r.output).join('');
    expect(output).toContain(`rank 2 of 3, local rank 0: a worker of the coordinator at ws://gpu07:${port}`);
    await expectReference({ code: Math.max(...results.map((r) => r.code ?? 1)), output }, dir, 'Slurm');
  });

  it('a Kubernetes Indexed Job: rank 0 is <job>-0.<service>, the token a mounted Secret (--token-file)', async () => {
    const secret = join(out, 'token');
    writeFileSync(secret, 'k8s secret, 16+ bytes\n');
    const port = await freePort();
    const { dir, args } = runArgs(port, '--host', '127.0.0.1', '--service', 'dtrain-ranks', '--token-file', secret);
    const pod = (index: number) => ({ JOB_COMPLETION_INDEX: String(index), HOSTNAME: `dtrain-mnist-${index}`, DTRAIN_WORLD_SIZE: '3', DTRAIN_TEST_HOSTS: 'dtrain-mnist-0.dtrain-ranks' });
    const results = await Promise.all([0, 1, 2].map((i) => rank(args, pod(i))));
    const output = results.map((r) => r.output).join('');
    expect(output).toContain(`rank 1 of 3: a worker of the coordinator at ws://dtrain-mnist-0.dtrain-ranks:${port}`);
    await expectReference({ code: Math.max(...results.map((r) => r.code ?? 1)), output }, dir, 'Kubernetes Indexed Job');
  });

  it('fails when ranks are missing at --join-timeout-ms, naming them, and the ranks that came end with it', async () => {
    // Long enough for rank 1 to start and join on a loaded machine; ranks 2 and 3 are never started.
    const { args } = runArgs(await freePort(), '--join-timeout-ms', '4000');
    const world = { OMPI_COMM_WORLD_SIZE: '4', OMPI_COMM_WORLD_LOCAL_SIZE: '4' };
    const [zero, one] = await Promise.all([0, 1].map((r) => rank(args, { ...world, OMPI_COMM_WORLD_RANK: String(r) })));
    expect(zero.code).toBe(1);
    expect(zero.output).toContain('dtrain: error: 2 of 3 remote workers missing after 4000 ms (--min-workers 3): ranks 2, 3 have not joined; see their output, or raise --join-timeout-ms');
    expect(one.code, one.output).toBe(0);
  });
});
