import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildProgram } from '../src/cli.js';
import { DEFAULTS, RUN_OPTIONS, WORKER_OPTIONS } from '../src/config.js';
import { embeddedMnistDir } from '../src/data/datasets.js';

const cli = new URL('../dist/src/cli.js', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'dtrain-cli-'));
const dtrain = async (...args: string[]) => dtrainWith(process.env, ...args);
const dtrainWith = async (env: NodeJS.ProcessEnv, ...args: string[]) => {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [cli, ...args], { env });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
};

describe('dtrain CLI', () => {
  it('lists every option with its default', async () => {
    const stdout = (await dtrain('coordinator', '--help')).stdout.replace(/\s+/g, ' ');
    for (const flag of ['--threads', '--micro-batch', '--hidden', '--engine', '--config', '--steps']) expect(stdout).toContain(flag);
    expect(stdout).toContain('(default: 512,256,128,64)');
    expect(stdout).toContain('(default: 0.001)');
  });

  it('prints the version of package.json with --version', async () => {
    const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
    const r = await dtrain('--version');
    expect(r).toEqual({ code: 0, stdout: `${version}\n`, stderr: '' });
  });

  it('has a flag for every TrainConfig key and every worker option', () => {
    const program = buildProgram();
    // attributeName() is the key commander hands the action (--no-export sets "export").
    const keys = (name: string) => program.commands.find((c) => c.name() === name)!.options.map((o) => o.attributeName());
    expect(keys('coordinator')).toEqual(['config', ...Object.keys(DEFAULTS)]);
    expect(keys('worker')).toEqual(WORKER_OPTIONS.map((o) => o.key));
    expect(keys('run')).toEqual(RUN_OPTIONS.map((o) => o.key));
    // dtrain run decides where rank 0 listens and how many workers it waits for, and keeps the token out of argv.
    for (const key of ['listen', 'minWorkers', 'token']) expect(keys('run')).not.toContain(key);
  });

  it('says in one line that dtrain run needs a launcher, and which variables it read', async () => {
    // Without the launchers' variables of wherever the tests run (CI may itself be a Slurm job).
    const r = await dtrainWith({ PATH: process.env.PATH }, 'run', '--epochs', '1');
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^dtrain: error: dtrain run found no launcher in its environment \(none of RANK, WORLD_SIZE, /);
  });

  it('refuses a bad worker option with one error line naming it', async () => {
    const r = await dtrain('worker', '--connect', 'ws://127.0.0.1:9', '--device', 'tpu');
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual(['dtrain: error: option "device" must be one of cpu, webgpu, cuda, gpu, got "tpu"']);
    const noConnect = await dtrain('worker', '--threads', '2');
    expect(noConnect.code).toBe(1);
    expect(noConnect.stderr.trim().split('\n')).toEqual(['dtrain: error: dtrain worker needs --connect ws://HOST:PORT (the coordinator started with --listen)']);
  });

  it('trains, prints the tutorial lines and writes summary.json', async () => {
    const out = join(dir, 'run');
    const r = await dtrain('coordinator', '--steps', '5', '--train-samples', '640', '--threads', '2', '--log-every', '2', '--out', out);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^loss: +2\.\d{6} +\[ +64\/ +640\]$/m);
    expect(r.stdout).toMatch(/^Test result: Accuracy: \d+\.\d\d%, Avg loss: \d+\.\d{6} /m);
    const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
    expect(summary.steps).toBe(5);
    expect(summary.model.sizes).toEqual([784, 512, 256, 128, 64, 10]);
    expect(summary.paramsSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(r.stdout).toContain(`paramsSha256: ${summary.paramsSha256}`);
    // The exported model evaluates to the run's own final accuracy.
    const evaluated = await dtrain('eval', '--model', join(out, 'model'), '--data', embeddedMnistDir());
    expect(evaluated.code).toBe(0);
    const last = summary.epochs[summary.epochs.length - 1];
    const accuracy = Number(/Accuracy: ([\d.]+)%/.exec(evaluated.stdout)![1]);
    expect(Math.abs(accuracy - last.testAccuracy)).toBeLessThan(0.05);
    expect(evaluated.stdout).toMatch(/confusion matrix \(rows: label, columns: predicted\):\n( +\d+){10}\n/);
    const rows = evaluated.stdout.trim().split('\n').slice(3).map((line) => line.trim().split(/ +/).slice(1).map(Number));
    expect(rows).toHaveLength(10);
    expect(rows.flat().reduce((a, b) => a + b, 0)).toBe(10000);
    expect(rows.reduce((n, row, k) => n + row[k], 0) / 100).toBeCloseTo(accuracy, 2);
  });

  it('takes options from a config file, flags overriding it', async () => {
    const config = join(dir, 'cluster.config.json');
    writeFileSync(config, JSON.stringify({ hidden: [16], threads: 3, steps: 2, trainSamples: 256, testSamples: 100 }));
    const out = join(dir, 'fromfile');
    const r = await dtrain('coordinator', '--config', config, '--threads', '1', '--out', out);
    expect(r.code).toBe(0);
    const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
    expect(summary.model.sizes).toEqual([784, 16, 10]);
    expect(summary.config.threads).toBe(1);
  });

  it('keeps the export off from a config file, and when a --no-export run is resumed (the flag sets nothing unless given)', async () => {
    const tiny = { hidden: [8], threads: 1, steps: 1, trainSamples: 128, testSamples: 10 };
    const config = join(dir, 'no-export.json');
    writeFileSync(config, JSON.stringify({ ...tiny, export: false }));
    const fromFile = join(dir, 'no-export-file');
    expect((await dtrain('coordinator', '--config', config, '--out', fromFile)).code).toBe(0);
    expect(existsSync(join(fromFile, 'model'))).toBe(false);
    const resumed = join(dir, 'no-export-resumed');
    expect((await dtrain('coordinator', '--hidden', '8', '--threads', '1', '--steps', '1', '--train-samples', '128', '--test-samples', '10', '--no-export', '--out', resumed)).code).toBe(0);
    expect((await dtrain('coordinator', '--resume', resumed, '--steps', '2')).code).toBe(0);
    expect(JSON.parse(readFileSync(join(resumed, 'summary.json'), 'utf8')).steps).toBe(2);
    expect(existsSync(join(resumed, 'model'))).toBe(false);
  });

  it('fails with one error line and exit code 1 on a bad config key', async () => {
    const config = join(dir, 'bad.json');
    writeFileSync(config, JSON.stringify({ threads: 2, epoch: 3 }));
    const r = await dtrain('coordinator', '--config', config);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^dtrain: error: .*bad\.json: unknown key "epoch" \(known keys: /)]);
  });
});

describe('dtrain coordinator and Ctrl-C', () => {
  it('stops cleanly after the current step on SIGINT, writing its summary and a checkpoint to resume from', async () => {
    const { spawn } = await import('node:child_process');
    const out = join(dir, 'interrupted');
    const child = spawn(process.execPath, [cli, 'coordinator', '--train-samples', '6400', '--test-samples', '100', '--threads', '2', '--log-every', '5', '--out', out]);
    let stdout = '';
    let interrupted = false;
    child.stdout.on('data', (d) => {
      stdout += d;
      // One Ctrl-C once a few steps have run (a second one would quit at once).
      if (!interrupted && /loss: .*\[ *(3[0-9]{2}|[4-9][0-9]{2})\//.test(stdout)) {
        interrupted = true;
        child.kill('SIGINT');
      }
    });
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(code).toBe(0);
    const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
    expect(summary.steps).toBeGreaterThan(0);
    expect(summary.steps).toBeLessThan(100 * 26);
    expect(stdout).toContain(`paramsSha256: ${summary.paramsSha256}`);
    const { listCheckpoints, readCheckpoint } = await import('../src/train/checkpoint.js');
    expect(readCheckpoint(listCheckpoints(out)[0]).header.step).toBe(summary.steps);
  });
});
