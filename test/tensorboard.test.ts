/**
 * TensorBoard event files: the CRC-32C and the framing against known values, the protobuf encoding
 * against our own decoder, and then what matters: TensorBoard's own reader (the Python package's
 * EventAccumulator) returns the scalars of a real run with the steps and values of its metrics.jsonl,
 * per participant too, and a resumed run's files hold each step once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { train, type TrainConfig, type TrainEvent } from '../src/index.js';
import { listCheckpoints } from '../src/train/checkpoint.js';
import { readMetrics, type EpochRecord, type StepRecord } from '../src/report/metrics.js';
import { crc32c, maskedCrc32c } from '../src/report/tensorboard/crc32c.js';
import { frameRecord, readRecords, RECORD_DATA_AT, RECORD_FRAMING, sealRecord } from '../src/report/tensorboard/tfrecord.js';
import { decodeEventHeading, encodeFileVersionEvent, encodeScalarEvent, scalarEventSize, scalarPrefix, writeScalarEvent, type ScalarEvent } from '../src/report/tensorboard/event.js';
import { participantFolder, TAGS, TensorBoardLog, tensorboardDir } from '../src/report/tensorboard/run_log.js';
import type { ParticipantsRecord } from '../src/cluster/participant_stats.js';
import { runWorker } from '../src/cluster/remote/client.js';

const out = mkdtempSync(join(tmpdir(), 'dtrain-tensorboard-'));
let runs = 0;
const dir = () => join(out, String(runs++));
afterAll(() => rmSync(out, { recursive: true, force: true }));

const eventFiles = (folder: string) => readdirSync(folder).filter((name) => name.includes('tfevents'));
const readEvents = (folder: string) => eventFiles(folder).flatMap((name) => readRecords(readFileSync(join(folder, name))).map(decodeEventHeading));

describe('CRC-32C and TFRecord framing', () => {
  it('computes CRC-32C (Castagnoli), not zlib\'s CRC-32: the check value and RFC 3720\'s vectors', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(32, 0))).toBe(0x8a9136aa);
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i)))).toBe(0x46dd794e);
    expect(crc32c(Buffer.from('123456789'))).not.toBe(crc32(Buffer.from('123456789')));
    // TensorFlow's mask: rotate right by 15, add 0xa282ead8.
    const crc = 0xe3069283;
    expect(maskedCrc32c(Buffer.from('123456789'))).toBe(((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) >>> 0);
  });

  it('frames records as length, masked CRC of the length, data, masked CRC of the data; a torn tail ends the reading', () => {
    const data = Buffer.from('an event');
    const record = frameRecord(data);
    expect(record.readBigUInt64LE(0)).toBe(8n);
    expect(record.readUInt32LE(8)).toBe(maskedCrc32c(record.subarray(0, 8)));
    expect(record.subarray(12, 20).toString()).toBe('an event');
    expect(record.readUInt32LE(20)).toBe(maskedCrc32c(data));
    const two = Buffer.concat([record, frameRecord(Buffer.from('second'))]);
    expect(readRecords(two).map(String)).toEqual(['an event', 'second']);
    expect(readRecords(two.subarray(0, two.length - 1)).map(String)).toEqual(['an event']);
    const corrupt = Buffer.from(two);
    corrupt[two.length - 3] ^= 1;
    expect(readRecords(corrupt).map(String)).toEqual(['an event']);
  });

  it('encodes Event and Summary so that the step and the tags decode back, steps beyond 32 bits included', () => {
    const event = encodeScalarEvent({ wallTime: 1.5, step: 2 ** 40 + 3, scalars: [{ tag: 'train/loss', value: 0.25 }, { tag: 'ü/ms', value: 3 }] });
    expect(decodeEventHeading(event)).toEqual({ step: 2 ** 40 + 3, tags: ['train/loss', 'ü/ms'] });
    expect(decodeEventHeading(encodeFileVersionEvent(1))).toEqual({ step: 0, tags: [] });
  });

  it('writes, from tags encoded once, the very bytes of the generic encoder, framed as frameRecord frames them', () => {
    const events: ScalarEvent[] = [
      { wallTime: 1.5, step: 2 ** 40 + 3, scalars: [{ tag: 'train/loss', value: 0.25 }, { tag: 'ü/ms', value: 3 }] },
      { wallTime: 1765432100.123456, step: 0, scalars: [{ tag: TAGS.share, value: 1 / 3 }, { tag: TAGS.rows, value: 48 }, { tag: TAGS.waitMs, value: NaN }] },
      { wallTime: 2, step: 127, scalars: [{ tag: 'x'.repeat(200), value: -1e-7 }] },
      { wallTime: 3, step: 128, scalars: [] },
      { wallTime: 4, step: 2 ** 53 - 1, scalars: Array.from({ length: 30 }, (_, i) => ({ tag: `participant/t${i}`, value: i * 1e30 })) },
    ];
    for (const event of events) {
      const prefixes = event.scalars.map((s) => scalarPrefix(s.tag));
      const values = event.scalars.map((s) => s.value);
      const generic = encodeScalarEvent(event);
      expect(scalarEventSize(event.step, prefixes)).toBe(generic.length);
      const record = Buffer.alloc(generic.length + RECORD_FRAMING, 0xee);
      writeScalarEvent(record, RECORD_DATA_AT, event.wallTime, event.step, prefixes, values);
      expect(sealRecord(record).equals(frameRecord(generic))).toBe(true);
    }
  });

  it('names participant folders by their id, and never as a path that leaves the folder', () => {
    expect(participantFolder('rank-3')).toBe('rank-3');
    expect(participantFolder('gpu-box.lan')).toBe('gpu-box.lan');
    expect(participantFolder('..')).toBe('_..');
    expect(participantFolder('a/b')).toBe('a_b');
  });
});

describe('TensorBoardLog without a run', () => {
  const record = (step: number): ParticipantsRecord => ({
    step,
    epoch: 1,
    participants: [
      { id: 'local', kind: 'local', state: 'computing', rows: 16, computeMs: 4, applyMs: 1, wireMs: 0, waitMs: 6 },
      { id: 'rank-1', kind: 'remote', address: '127.0.0.1:5000', state: 'computing', rows: 48, computeMs: 10, applyMs: 2, wireMs: 3, waitMs: 0 },
      { id: 'rank-2', kind: 'remote', state: 'dropped', reason: 'no pong', rows: 0, computeMs: 0, applyMs: 0, wireMs: 0, waitMs: 0 },
    ],
  });

  it('writes nothing until flushed, then one folder per participant that is not dropped', () => {
    const runDir = dir();
    const log = new TensorBoardLog(runDir);
    for (let step = 1; step <= 3; step++) {
      log.step({ step, loss: 1 / step, ms: 10 }, 64);
      log.participants(record(step));
    }
    expect(existsSync(tensorboardDir(runDir))).toBe(false);
    log.flush();
    expect(readdirSync(join(tensorboardDir(runDir), 'participants')).sort()).toEqual(['local', 'rank-1']);
    expect(readEvents(join(tensorboardDir(runDir), 'participants', 'rank-1')).map((e) => e.step)).toEqual([0, 1, 2, 3]);
  });

  it('on resume, drops step scalars past the checkpoint and epoch scalars past its last complete epoch', () => {
    const runDir = dir();
    const first = new TensorBoardLog(runDir);
    for (let step = 1; step <= 7; step++) {
      first.step({ step, loss: 1, ms: 1 }, 1);
      first.participants(record(step));
    }
    first.epoch({ epoch: 1, steps: 4, testAccuracy: 50, testAvgLoss: 1, trainLoss: 1, seconds: 1, samplesPerSecond: 1 });
    first.epoch({ epoch: 2, steps: 7, testAccuracy: 60, testAvgLoss: 1, trainLoss: 1, seconds: 1, samplesPerSecond: 1 });
    first.flush();
    // The checkpoint at step 6 holds one epoch, which ended at step 4.
    new TensorBoardLog(runDir, { step: 6, epochStep: 4 }).flush();
    const run = readEvents(tensorboardDir(runDir));
    expect(run.filter((e) => e.tags.includes(TAGS.loss)).map((e) => e.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(run.filter((e) => e.tags.includes(TAGS.testAccuracy)).map((e) => e.step)).toEqual([4]);
    expect(readEvents(join(tensorboardDir(runDir), 'participants', 'local')).filter((e) => e.tags.length > 0).map((e) => e.step)).toEqual([1, 2, 3, 4, 5, 6]);
  });
});

/**
 * A Python with the tensorboard package: DTRAIN_TENSORBOARD_PYTHON, the venv .ci/run makes
 * (node_modules/.cache/tensorboard-venv), the system's python3, or that venv made now (pip may reach an index).
 */
const VENV = new URL('../node_modules/.cache/tensorboard-venv', import.meta.url).pathname;
function findTensorBoardPython(): { python?: string; why?: string } {
  const reads = (python: string) => spawnSync(python, ['-c', 'import tensorboard.backend.event_processing.event_accumulator'], { stdio: 'ignore' }).status === 0;
  const candidates = [process.env.DTRAIN_TENSORBOARD_PYTHON, join(VENV, 'bin', 'python'), 'python3'].filter((p): p is string => !!p);
  for (const python of candidates) if (reads(python)) return { python };
  if (spawnSync('python3', ['-m', 'venv', VENV], { stdio: 'ignore' }).status !== 0) return { why: 'python3 -m venv failed (no python3, or no venv module)' };
  const pip = spawnSync(join(VENV, 'bin', 'pip'), ['install', '--quiet', '--retries', '0', '--timeout', '20', 'tensorboard'], { encoding: 'utf8', timeout: 170_000 });
  if (reads(join(VENV, 'bin', 'python'))) return { python: join(VENV, 'bin', 'python') };
  return { why: `pip install tensorboard failed: ${(pip.stderr ?? pip.error?.message ?? '').trim().split('\n').at(-1)}` };
}

type Scalars = Record<string, [number, number][]>;
let python: string | undefined;
function tensorboardScalars(...folders: string[]): Scalars[] {
  const json = execFileSync(python!, [new URL('./fixtures/tensorboard_scalars.py', import.meta.url).pathname, ...folders], { encoding: 'utf8' });
  const all = JSON.parse(json) as Record<string, Scalars>;
  return folders.map((f) => all[f]);
}

beforeAll(() => {
  const found = findTensorBoardPython();
  python = found.python;
  if (!python) console.warn(`SKIPPED: TensorBoard's reader tests: ${found.why}`);
}, 180_000);

/**
 * Checks each participant's folder against the participants events of the run, as TensorBoard reads it:
 * its rows, share, compute and wire times at each step it was not dropped. Returns the folders.
 */
function participantsInTensorBoard(runDir: string, events: TrainEvent[]): string[] {
  const records = events.flatMap((e) => (e.type === 'participants' ? [e.record] : []));
  expect(records.map((r) => r.step)).toEqual(steps(runDir).map((r) => r.step));
  const ids = [...new Set(records.flatMap((r) => r.participants.map((p) => p.id)))];
  const folders = readdirSync(join(tensorboardDir(runDir), 'participants')).sort();
  expect(folders).toEqual(ids.map(participantFolder).sort());
  tensorboardScalars(...ids.map((id) => join(tensorboardDir(runDir), 'participants', participantFolder(id)))).forEach((scalars, i) => {
    const mine = records.flatMap((r) => {
      const rows = r.participants.reduce((sum, p) => sum + p.rows, 0);
      return r.participants.filter((p) => p.id === ids[i] && p.state !== 'dropped').map((p) => ({ step: r.step, rows, p }));
    });
    expect(mine.length).toBeGreaterThan(0);
    expect(scalars[TAGS.rows]).toEqual(mine.map(({ step, p }) => [step, p.rows]));
    expect(scalars[TAGS.share]).toEqual(mine.map(({ step, rows, p }) => [step, f32(p.rows / rows)]));
    expect(scalars[TAGS.computeMs]).toEqual(mine.map(({ step, p }) => [step, f32(p.computeMs)]));
    expect(scalars[TAGS.wireMs]).toEqual(mine.map(({ step, p }) => [step, f32(p.wireMs)]));
  });
  return folders;
}

/** float32 as TensorBoard stores simple_value. */
const f32 = (x: number) => Math.fround(x);
const steps = (runDir: string) => readMetrics(runDir).filter((r): r is StepRecord => r.type === 'step');
const epochs = (runDir: string) => readMetrics(runDir).filter((r): r is EpochRecord => r.type === 'epoch');
// 320 samples of 64: five steps an epoch.
const BASE: Partial<TrainConfig> = { trainSamples: 320, testSamples: 100, hidden: [32], epochs: 2, logEvery: 1000, threads: 2, export: false };

describe('TensorBoard reads what a run writes', () => {
  it('EventAccumulator refuses records framed with zlib\'s CRC-32: it checks the checksum we compute', (ctx) => {
    if (!python) return ctx.skip();
    const folder = dir();
    mkdirSync(folder);
    const zlibMasked = (b: Uint8Array) => {
      const c = crc32(b);
      return ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0;
    };
    const frame = (data: Buffer) => {
      const r = Buffer.alloc(16 + data.length);
      r.writeBigUInt64LE(BigInt(data.length));
      r.writeUInt32LE(zlibMasked(r.subarray(0, 8)), 8);
      data.copy(r, 12);
      r.writeUInt32LE(zlibMasked(data), 12 + data.length);
      return r;
    };
    const events = [encodeFileVersionEvent(1), encodeScalarEvent({ wallTime: 1, step: 1, scalars: [{ tag: 'x', value: 1 }] })];
    writeFileSync(join(folder, 'events.out.tfevents.1.zlib'), Buffer.concat(events.map(frame)));
    const right = join(folder, 'right');
    mkdirSync(right);
    writeFileSync(join(right, 'events.out.tfevents.1.crc32c'), Buffer.concat(events.map(frameRecord)));
    const [wrong, good] = tensorboardScalars(folder, right);
    expect(wrong).toEqual({});
    expect(good).toEqual({ x: [[1, 1]] });
  });

  it('a real run: loss, step time and throughput per step, test accuracy and loss per epoch, as metrics.jsonl has them', async (ctx) => {
    if (!python) return ctx.skip();
    const runDir = dir();
    const events: TrainEvent[] = [];
    await train({ ...BASE, out: runDir }, { onEvent: (e) => events.push(e) });
    const [run] = tensorboardScalars(tensorboardDir(runDir));
    const logged = steps(runDir);
    expect(logged.map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(run[TAGS.loss]).toEqual(logged.map((r) => [r.step, f32(r.loss)]));
    expect(run[TAGS.stepMs]).toEqual(logged.map((r) => [r.step, f32(r.ms)]));
    expect(run[TAGS.stepSamplesPerSecond]).toEqual(logged.map((r) => [r.step, f32((64 * 1000) / r.ms)]));
    expect(run[TAGS.testAccuracy]).toEqual(epochs(runDir).map((r) => [r.steps, f32(r.testAccuracy)]));
    expect(run[TAGS.testLoss]).toEqual(epochs(runDir).map((r) => [r.steps, f32(r.testAvgLoss)]));
    expect(run[TAGS.epochSamplesPerSecond]).toEqual(epochs(runDir).map((r) => [r.steps, f32(r.samplesPerSecond)]));

    expect(participantsInTensorBoard(runDir, events)).toEqual(['local']);
  });

  it('a run with two remote workers beside its thread: one folder a participant, named as the workers are, under the same tags', async (ctx) => {
    if (!python) return ctx.skip();
    const runDir = dir();
    const events: TrainEvent[] = [];
    const abort = new AbortController();
    await train(
      { ...BASE, epochs: 1, threads: 1, listen: '127.0.0.1:0', minWorkers: 2, heartbeatMs: 500, out: runDir },
      {
        onEvent: (e) => events.push(e),
        onListening: ({ port }) => {
          for (const name of ['fast', 'slow']) void runWorker({ connect: `ws://127.0.0.1:${port}`, name, rowDelayMs: name === 'slow' ? 5 : 0, signal: abort.signal });
        },
      },
    );
    abort.abort();
    expect(participantsInTensorBoard(runDir, events)).toEqual(['fast', 'local', 'slow']);
  });

  it('--resume drops the events a killed run wrote past its checkpoint: each step once, epochs as metrics.jsonl has them', async (ctx) => {
    if (!python) return ctx.skip();
    const runDir = dir();
    // Checkpoints at steps 3, 5 (epoch 1's end) and 6; the stop at step 7 writes one more and evaluates the partial epoch 2.
    await train({ ...BASE, steps: 7, checkpointEvery: 3, out: runDir });
    // As if killed just before step 7's checkpoint: its step and its partial epoch are logged, the checkpoint is not.
    rmSync(listCheckpoints(runDir)[0]);
    expect(listCheckpoints(runDir)[0]).toMatch(/step-0*6\.ckpt$/);
    const before = readEvents(tensorboardDir(runDir));
    expect(before.filter((e) => e.tags.includes(TAGS.loss)).map((e) => e.step)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(before.filter((e) => e.tags.includes(TAGS.testAccuracy)).map((e) => e.step)).toEqual([5, 7]);

    await train({ resume: runDir, steps: 0 });
    const [run, local] = tensorboardScalars(tensorboardDir(runDir), join(tensorboardDir(runDir), 'participants', 'local'));
    const logged = steps(runDir);
    expect(logged.map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(run[TAGS.loss]).toEqual(logged.map((r) => [r.step, f32(r.loss)]));
    expect(local[TAGS.rows].map(([step]) => step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(run[TAGS.testAccuracy]).toEqual(epochs(runDir).map((r) => [r.steps, f32(r.testAccuracy)]));
    expect(epochs(runDir).map((r) => r.steps)).toEqual([5, 10]);
  });

  it('--no-tensorboard writes no event files', async () => {
    const runDir = dir();
    await train({ ...BASE, steps: 2, tensorboard: false, out: runDir });
    expect(existsSync(tensorboardDir(runDir))).toBe(false);
    expect(existsSync(join(runDir, 'metrics.jsonl'))).toBe(true);
  });
});
