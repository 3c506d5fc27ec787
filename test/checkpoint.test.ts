import { describe, expect, it } from 'vitest';
import { fork } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { train, type TrainConfig, type TrainEvent } from '../src/index.js';
import { latestCheckpoint, listCheckpoints, readCheckpoint } from '../src/train/checkpoint.js';
import { readMetrics } from '../src/report/metrics.js';
import { killAtCheckpoint, syntheticDataset } from './helpers.js';

const cli = new URL('../dist/src/cli.js', import.meta.url).pathname;
const out = mkdtempSync(join(tmpdir(), 'dtrain-ckpt-'));
let runs = 0;
const dir = () => join(out, String(runs++));
// 145 samples: 3 batches an epoch (the last one short), shuffled, so resuming must restore the order too.
const BASE: Partial<TrainConfig> = { trainSamples: 145, testSamples: 100, epochs: 3, logEvery: 1000, shuffle: true, threads: 2, checkpointEvery: 2 };

describe('checkpoints and exact resume', () => {
  it('resumes a stopped run to the same parameters and results as an uninterrupted one', async () => {
    const whole = await train({ ...BASE, out: dir() });
    const runDir = dir();
    const first = await train({ ...BASE, steps: 4, out: runDir });
    expect(first.steps).toBe(4);
    expect(readCheckpoint(listCheckpoints(runDir)[0]).header).toMatchObject({ step: 4, epoch: 2, batch: 1 });
    const events: TrainEvent[] = [];
    // --steps 0 given again: run all epochs (alone, --resume would finish the 4 steps the run was given).
    const resumed = await train({ resume: runDir, threads: 1, steps: 0 }, { onEvent: (e) => events.push(e) });
    expect(events).toContainEqual(expect.objectContaining({ type: 'checkpoint', action: 'resumed', step: 4 }));
    expect(resumed.paramsSha256).toBe(whole.paramsSha256);
    expect(resumed.epochs.map((e) => e.testAccuracy)).toEqual(whole.epochs.map((e) => e.testAccuracy));
    // Every step is logged once, the two sessions together.
    expect(readMetrics(runDir).filter((r) => r.type === 'step').map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(readMetrics(runDir).filter((r) => r.type === 'epoch').map((r) => r.epoch)).toEqual([1, 2, 3]);
  });

  it('--resume alone continues the run as configured: a --steps 7 run stopped at step 3 ends at step 7, on the uninterrupted hash', async () => {
    const whole = await train({ ...BASE, steps: 7, out: dir() });
    const runDir = dir();
    const abort = new AbortController();
    await train({ ...BASE, steps: 7, out: runDir }, { signal: abort.signal, onEvent: (e) => e.type === 'step' && e.step === 3 && abort.abort() });
    const resumed = await train({ resume: runDir });
    expect([resumed.steps, resumed.paramsSha256]).toEqual([7, whole.paramsSha256]);
    // Nothing left to do: said, and a normal end (also into another --out, which has no metrics of its own).
    for (const outDir of [runDir, dir()]) {
      const events: TrainEvent[] = [];
      const again = await train({ resume: runDir, out: outDir }, { onEvent: (e) => events.push(e) });
      expect(events).toContainEqual(expect.objectContaining({ type: 'finished-already', step: 7 }));
      expect(events.some((e) => e.type === 'step')).toBe(false);
      expect(again.paramsSha256).toBe(whole.paramsSha256);
    }
  });

  it('resumes after the coordinator was SIGKILLed between two checkpoints', async () => {
    const config = { ...BASE, trainSamples: 1000, epochs: 2, checkpointEvery: 5 };
    const whole = await train({ ...config, out: dir() });
    const runDir = dir();
    const args = ['coordinator', '--train-samples', '1000', '--test-samples', '100', '--epochs', '2', '--shuffle', '--threads', '2', '--checkpoint-every', '5', '--out', runDir];
    const child = fork(cli, args, { stdio: 'ignore' });
    const killedAt = await killAtCheckpoint(child, runDir, 10);
    expect(killedAt).toBeLessThan(32);
    const resumed = await train({ resume: runDir });
    expect(resumed.paramsSha256).toBe(whole.paramsSha256);
  });

  it('passes over a corrupt checkpoint to the previous one, and still ends the same', async () => {
    const whole = await train({ ...BASE, out: dir() });
    const runDir = dir();
    await train({ ...BASE, steps: 5, out: runDir });
    const [newest, previous] = listCheckpoints(runDir);
    truncateSync(newest, 100);
    const skipped: string[] = [];
    expect(latestCheckpoint(runDir, (file, reason) => skipped.push(`${file}: ${reason}`)).file).toBe(previous);
    expect(skipped).toEqual([`${newest}: ${newest}: checksum mismatch (truncated or corrupt)`]);
    const resumed = await train({ resume: runDir, steps: 0 });
    expect(resumed.paramsSha256).toBe(whole.paramsSha256);
    // The corrupt one was an abandoned future of the run: the first checkpoint written after the resume removed it.
    expect(listCheckpoints(runDir)).not.toContain(newest);
    await expect(train({ ...BASE, out: runDir })).rejects.toThrow(`${runDir} holds the checkpoints of an earlier run (newest at step 9)`);
  });

  it('refuses to resume with other model, data or optimizer options, naming the option', async () => {
    const runDir = dir();
    await train({ ...BASE, steps: 2, out: runDir });
    await expect(train({ resume: runDir, lr: 0.01 })).rejects.toThrow(
      '--resume: option "lr" (0.01) differs from the checkpoint\'s (0.001); a resumed run keeps the checkpoint\'s model, data and optimizer options',
    );
    await expect(train({ resume: runDir, hidden: [32] })).rejects.toThrow(/^--resume: option "hidden" \(\[32\]\) differs from the checkpoint's \(\[512, 256, 128, 64\]\)/);
    await expect(train({ resume: runDir }, { dataset: syntheticDataset(64, 16) })).rejects.toThrow(
      /step-000000002\.ckpt: the checkpoint is for model 784→512→256→128→64→10 \(sigmoid\), this run has 20→512→256→128→64→4 \(sigmoid\)$/,
    );
    await expect(train({ resume: join(out, 'nowhere') })).rejects.toThrow(/nowhere\/checkpoints: no checkpoint files \(step-\*\.ckpt\) to resume from$/);
  });
});

describe('run outputs', () => {
  it('writes metrics.jsonl and a valid SVG plot with one point per epoch', async () => {
    const runDir = dir();
    const summary = await train({ ...BASE, out: runDir });
    const metrics = readMetrics(runDir);
    expect(metrics.filter((r) => r.type === 'step')).toHaveLength(summary.steps);
    expect(metrics.find((r) => r.type === 'step')).toMatchObject({ step: 1, epoch: 1, bytes: 0 });
    const svg = readFileSync(join(runDir, 'plot.svg'), 'utf8');
    expect(svg.startsWith('<?xml')).toBe(true);
    expect(wellFormed(svg)).toBe(true);
    for (const series of ['training loss', 'test loss', 'test accuracy']) {
      expect(svg.match(new RegExp(`<circle class="point" data-series="${series}"`, 'g'))).toHaveLength(3);
    }
    expect(existsSync(join(runDir, 'summary.json'))).toBe(true);
  });
});

/** Tags open and close in order (enough for the SVG we write: no CDATA, no comments). */
function wellFormed(xml: string): boolean {
  const stack: string[] = [];
  for (const m of xml.replace(/<\?xml[^>]*\?>/, '').matchAll(/<(\/?)([a-zA-Z][\w:-]*)[^>]*?(\/?)>/g)) {
    const [, closing, name, selfClosing] = m;
    if (selfClosing) continue;
    if (!closing) stack.push(name);
    else if (stack.pop() !== name) return false;
  }
  return stack.length === 0;
}
