import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Env } from '../src/launch/environment.js';
import { planLaunch, readTokenFile } from '../src/launch/run.js';

const TORCHRUN = (rank: number): Env => ({ RANK: String(rank), WORLD_SIZE: '3', MASTER_ADDR: 'localhost', MASTER_PORT: '29500', LOCAL_RANK: String(rank), LOCAL_WORLD_SIZE: '3', TORCHELASTIC_RUN_ID: 'x' });
const SLURM = (rank: number): Env => ({ SLURM_JOB_ID: '7', SLURM_STEP_ID: '0', SLURM_PROCID: String(rank), SLURM_NTASKS: '4', SLURM_JOB_NODELIST: 'cn[07-08]', SLURM_STEP_NUM_NODES: '2' });
const K8S = (rank: number): Env => ({ JOB_COMPLETION_INDEX: String(rank), HOSTNAME: `mnist-${rank}` });
const noToken = () => {
  throw new Error('no token file was given');
};

describe('dtrain run: what each rank does', () => {
  it('makes rank 0 the coordinator: it listens beside torchrun\'s store and waits for the other ranks', () => {
    const plan = planLaunch({ epochs: 2 }, TORCHRUN(0), noToken);
    expect(plan).toMatchObject({
      role: 'coordinator',
      train: { threads: 1, epochs: 2, listen: '127.0.0.1:29501', token: null, minWorkers: 2 },
      expectedRanks: [1, 2],
      summary:
        'dtrain run: torchrun (RANK=0, WORLD_SIZE=3, MASTER_ADDR=localhost, MASTER_PORT=29500): rank 0 of 3, local rank 0 of 3: the coordinator, listening on 127.0.0.1:29501 for 2 workers',
    });
  });

  it('makes every other rank a worker of rank 0 that keeps trying as long as rank 0 waits for it', () => {
    const plan = planLaunch({ threads: 2, data: '/data/mnist', joinTimeoutMs: 5000 }, TORCHRUN(2), noToken);
    expect(plan).toEqual({
      role: 'worker',
      launch: expect.objectContaining({ rank: 2 }),
      summary: 'dtrain run: torchrun (RANK=2, WORLD_SIZE=3, MASTER_ADDR=localhost, MASTER_PORT=29500): rank 2 of 3, local rank 2 of 3: a worker of the coordinator at ws://127.0.0.1:29501',
      worker: { connect: 'ws://127.0.0.1:29501', token: undefined, threads: 2, engine: 'onnx', device: 'cpu', allowSoftwareGpu: false, data: '/data/mnist', rank: 2, retryForMs: 5000, maxRetries: 0 },
    });
    expect(planLaunch({}, TORCHRUN(1), noToken)).toMatchObject({ worker: { data: 'embedded', threads: 1, retryForMs: 600_000 } });
  });

  it('listens on every interface when the ranks span hosts, which needs a token (DTRAIN_TOKEN or --token-file)', () => {
    expect(() => planLaunch({}, SLURM(0), noToken)).toThrow(
      'dtrain run: rank 0 listens on [::]:29501, beyond loopback, so the ranks need a shared token: set DTRAIN_TOKEN or give --token-file FILE',
    );
    expect(() => planLaunch({}, SLURM(3), noToken)).toThrow(/so the ranks need a shared token/);
    expect(planLaunch({}, { ...SLURM(0), DTRAIN_TOKEN: 'from env, 16+ bytes' }, noToken)).toMatchObject({ train: { listen: '[::]:29501', token: 'from env, 16+ bytes', minWorkers: 3 } });
    const worker = planLaunch({ tokenFile: '/run/secrets/dtrain/token' }, { ...SLURM(3), DTRAIN_TOKEN: 'not this one' }, (file) => `secret of ${file}`);
    expect(worker).toMatchObject({ worker: { connect: 'ws://cn07:29501', token: 'secret of /run/secrets/dtrain/token', rank: 3 } });
  });

  it('takes --port, --host, --coordinator, --service and --world-size over what the environment says', () => {
    expect(planLaunch({ port: 4000, host: '10.1.2.3' }, { ...SLURM(0), DTRAIN_TOKEN: 'a token of 16+ bytes' }, noToken)).toMatchObject({ train: { listen: '10.1.2.3:4000' } });
    expect(planLaunch({ coordinator: 'localhost' }, { OMPI_COMM_WORLD_RANK: '1', OMPI_COMM_WORLD_SIZE: '2' }, noToken)).toMatchObject({ worker: { connect: 'ws://127.0.0.1:29501' } });
    expect(planLaunch({ coordinator: 'fd00::1' }, { ...SLURM(1), DTRAIN_TOKEN: 'a token of 16+ bytes' }, noToken)).toMatchObject({ worker: { connect: 'ws://[fd00::1]:29501' } });
    // One host, rank 0 told where to listen: the other ranks dial that address, not 127.0.0.1.
    expect(planLaunch({ host: '10.0.0.5' }, { ...TORCHRUN(1), DTRAIN_TOKEN: 'a token of 16+ bytes' }, noToken)).toMatchObject({ worker: { connect: 'ws://10.0.0.5:29501' } });
    const pod = planLaunch({ service: 'ranks', worldSize: 4 }, { ...K8S(1), DTRAIN_SERVICE: 'other', DTRAIN_TOKEN: 'a token of 16+ bytes' }, noToken);
    expect(pod).toMatchObject({ worker: { connect: 'ws://mnist-0.ranks:29501', rank: 1 } });
    expect(pod.summary).toBe(
      'dtrain run: Kubernetes Indexed Job (JOB_COMPLETION_INDEX=1, DTRAIN_WORLD_SIZE=4, DTRAIN_SERVICE=ranks, HOSTNAME=mnist-1): rank 1 of 4: a worker of the coordinator at ws://mnist-0.ranks:29501',
    );
  });

  it('checks the shared options on every rank, so that workers fail with rank 0 instead of waiting for it', () => {
    expect(() => planLaunch({ microBatch: 128 }, TORCHRUN(1), noToken)).toThrow('option "microBatch" (128) must not exceed "batchSize" (64)');
    expect(() => planLaunch({ threads: 0 }, TORCHRUN(1), noToken)).toThrow('option "threads" must be an integer of at least 1, got 0');
    expect(() => planLaunch({ listen: '0.0.0.0:1' } as never, TORCHRUN(0), noToken)).toThrow(/^unknown option "listen" \(known options: data, /);
    // A resumed run's options are in rank 0's checkpoint: the other ranks cannot check them.
    expect(planLaunch({ resume: '/runs/a', microBatch: 128 }, TORCHRUN(1), noToken).role).toBe('worker');
  });

  it('gives rank 0 the --dashboard; beyond loopback only with TLS and a viewer token, checked on every rank', () => {
    const plan = planLaunch({ dashboard: '8080' }, TORCHRUN(0), noToken);
    expect(plan.role === 'coordinator' && plan.train.dashboard).toBe('8080');
    const beyond = /^option "dashboard" \(0\.0\.0\.0:8080\) reaches beyond loopback, so it needs TLS: give --tls-cert and --tls-key/;
    expect(() => planLaunch({ dashboard: '0.0.0.0:8080' }, TORCHRUN(1), noToken)).toThrow(beyond);
    // Resumed, the other options are rank 0's to check; the dashboard's are this session's, so every rank checks them.
    expect(() => planLaunch({ resume: '/runs/a', dashboard: '0.0.0.0:8080' }, TORCHRUN(1), noToken)).toThrow(beyond);
    const tls = { tlsCert: '/tls/cert.pem', tlsKey: '/tls/key.pem' };
    expect(() => planLaunch({ dashboard: '0.0.0.0:8080', ...tls }, TORCHRUN(1), noToken)).toThrow(/so it needs a viewer token: give --dashboard-token/);
    const served = planLaunch({ dashboard: '0.0.0.0:8080', dashboardToken: 'viewers, 16+ bytes', ...tls }, TORCHRUN(0), noToken);
    expect(served).toMatchObject({ role: 'coordinator', train: { dashboard: '0.0.0.0:8080', dashboardToken: 'viewers, 16+ bytes', ...tls } });
    expect(planLaunch({ resume: '/runs/a', dashboard: '0.0.0.0:8080', dashboardToken: 'viewers, 16+ bytes', ...tls }, TORCHRUN(2), noToken).role).toBe('worker');
  });

  it('passes on only the options given, so that a resumed run sees no defaults as choices', () => {
    const plan = planLaunch({ resume: '/runs/a' }, TORCHRUN(0), noToken);
    expect(plan.role === 'coordinator' && Object.keys(plan.train).sort()).toEqual(['listen', 'minWorkers', 'resume', 'threads', 'token']);
  });
});

describe('--token-file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'dtrain-token-'));
  const file = (name: string, text: string) => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };

  it('reads the token without the newline an editor or echo leaves', () => {
    expect(readTokenFile(file('secret', 's3cret\n'))).toBe('s3cret');
    expect(readTokenFile(file('mounted', 'kube secret'))).toBe('kube secret');
  });

  it('refuses an empty, a multi-line or a missing file, naming it', () => {
    expect(() => readTokenFile(file('empty', '\n'))).toThrow(`--token-file ${join(dir, 'empty')}: the file is empty`);
    expect(() => readTokenFile(file('two', 'a\nb\n'))).toThrow(`--token-file ${join(dir, 'two')}: expected the token alone on one line`);
    expect(() => readTokenFile(join(dir, 'nope'))).toThrow(new RegExp(`^--token-file ${join(dir, 'nope')}: ENOENT`));
  });
});
