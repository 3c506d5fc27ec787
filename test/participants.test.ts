/**
 * The participants' records (issue 21): every step names each participant (the local threads as `local`,
 * a remote worker by its name or rank) with its rows, compute, apply, wire and wait times and its state,
 * in the `participants` event and in metrics.jsonl; the slowest one by its rate is found; a worker that
 * dies is recorded dropped with the reason. Every run still ends on the threads-only parameters.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { train, type TrainEvent } from '../src/index.js';
import { runWorker } from '../src/cluster/remote/client.js';
import { ParticipantTally, slowestParticipant, type ParticipantsRecord } from '../src/cluster/participant_stats.js';
import { MetricsLog, readMetrics, type ParticipantsMetrics } from '../src/report/metrics.js';
import { BASE, coordinator, killChildren, out, referenceHash, workerProcess } from './remote_helpers.js';

afterEach(killChildren);

const reference = referenceHash({ threads: 2 }, 'participants-reference');
/** Rows of each step of BASE: 145 samples in batches of 64, two epochs. */
const BATCHES = [64, 64, 17, 64, 64, 17];

const recordsOf = (events: TrainEvent[]) => events.flatMap((e) => (e.type === 'participants' ? [e.record] : []));
const rowsOf = (record: ParticipantsRecord) => record.participants.reduce((sum, p) => sum + p.rows, 0);
const withoutType = ({ type: _type, ...record }: ParticipantsMetrics): ParticipantsRecord => record;

describe('participants of each step', () => {
  it('name two remote workers (--plan replicated), their rows summing to the batch, and mark the one slowed on purpose as the slowest', async () => {
    const abort = new AbortController();
    const events: TrainEvent[] = [];
    const summary = await coordinator(
      { threads: 0, plan: 'replicated', minWorkers: 2 },
      (url) => {
        void runWorker({ connect: url, name: 'fast', signal: abort.signal });
        // 10 ms more a row: many times what a row of this model takes to compute.
        void runWorker({ connect: url, name: 'slow', rowDelayMs: 10, signal: abort.signal });
      },
      (e) => events.push(e),
    );
    abort.abort();
    const records = recordsOf(events);
    expect(records.map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(records.map(rowsOf)).toEqual(BATCHES);
    for (const record of records) {
      expect(record.participants.map((p) => p.id).sort()).toEqual(['fast', 'slow']);
      for (const p of record.participants) {
        expect(p).toMatchObject({ kind: 'remote', state: 'computing', engine: 'onnx', device: 'cpu', address: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });
        for (const ms of [p.computeMs, p.applyMs, p.wireMs, p.waitMs]) expect(Number.isFinite(ms) && ms >= 0).toBe(true);
      }
      const slow = record.participants.find((p) => p.id === 'slow')!;
      // Its compute holds its injected 10 ms a row.
      if (slow.rows > 0) expect(slow.computeMs).toBeGreaterThanOrEqual(10 * slow.rows);
      if (record.participants.every((p) => p.rows > 0)) expect(slowestParticipant(record)).toBe('slow');
    }
    // Both computed rows in some step, so the slowest was marked at least once.
    expect(records.filter((r) => r.participants.every((p) => p.rows > 0)).length).toBeGreaterThan(0);
    // Each replica applies every step and reports it with its next rows.
    for (const id of ['fast', 'slow']) {
      const applied = records.flatMap((r) => r.participants.filter((p) => p.id === id && p.rows > 0).map((p) => p.applyMs));
      expect(applied.slice(1).some((ms) => ms > 0)).toBe(true);
    }
    // metrics.jsonl holds the same records, so that a finished run is seen the same way.
    const logged = readMetrics(summary.outDir!).flatMap((r) => (r.type === 'participants' ? [withoutType(r)] : []));
    expect(logged).toEqual(records);
    expect(summary.paramsSha256).toBe(await reference());
  });

  it('record the local threads of a run without remote workers as `local`', async () => {
    const events: TrainEvent[] = [];
    const summary = await train({ ...BASE, threads: 2, out: join(out, 'participants-local') }, { onEvent: (e) => events.push(e) });
    const records = recordsOf(events);
    expect(records.map(rowsOf)).toEqual(BATCHES);
    for (const record of records) {
      expect(record.participants).toHaveLength(1);
      const [local] = record.participants;
      expect(local).toMatchObject({ id: 'local', kind: 'local', state: 'computing', engine: 'onnx', device: 'cpu', wireMs: 0 });
      expect(local.computeMs).toBeGreaterThan(0);
      // Its weight pass of this step.
      expect(local.applyMs).toBeGreaterThan(0);
      expect(slowestParticipant(record)).toBe('local');
    }
    expect(readMetrics(summary.outDir!).filter((r) => r.type === 'participants')).toHaveLength(BATCHES.length);
    expect(summary.paramsSha256).toBe(await reference());
  });

  it('record a worker killed mid-run as dropped with the reason, and give two workers of one name distinct ids', async () => {
    const workers: ChildProcess[] = [];
    const events: TrainEvent[] = [];
    const summary = await coordinator(
      { threads: 0, plan: 'replicated', minWorkers: 2 },
      (url) => {
        for (let i = 0; i < 2; i++) {
          workers.push(workerProcess(url, '--name', 'twin'));
        }
      },
      (e) => events.push(e),
      async (step) => {
        if (step === 2) await new Promise((resolve) => (workers[0].once('exit', resolve), workers[0].kill('SIGKILL')));
      },
    );
    const records = recordsOf(events);
    expect(records[0].participants.map((p) => p.id).sort()).toEqual(['twin', 'twin-2']);
    const dropped = records.flatMap((r) => r.participants.filter((p) => p.state === 'dropped').map((p) => ({ step: r.step, ...p })));
    expect(dropped).toHaveLength(1);
    expect(dropped[0].step).toBe(3);
    expect(dropped[0].reason).toMatch(/connection closed|left|did not answer/);
    // Its rows were redone by the survivor: every step's rows still sum to the batch.
    expect(records.map(rowsOf)).toEqual(BATCHES);
    expect(records.slice(3).every((r) => r.participants.length === 1 && r.participants[0].state === 'computing')).toBe(true);
    expect(summary.paramsSha256).toBe(await reference());
  });

  it('name ranked workers `rank-N` beside the local threads (a split step), rows summing to the batch', async () => {
    const abort = new AbortController();
    const events: TrainEvent[] = [];
    const summary = await coordinator(
      { threads: 1, minWorkers: 2 },
      (url) => {
        // A rank names a launched worker whatever else it is called.
        void runWorker({ connect: url, rank: 1, name: 'ignored', signal: abort.signal });
        void runWorker({ connect: url, rank: 2, signal: abort.signal });
      },
      (e) => events.push(e),
    );
    abort.abort();
    const records = recordsOf(events);
    expect(records.map(rowsOf)).toEqual(BATCHES);
    for (const record of records) {
      // Which worker connected first is a race: sorted by id.
      expect(record.participants.map((p) => `${p.id} ${p.kind} ${p.state}`).sort()).toEqual(['local local computing', 'rank-1 remote computing', 'rank-2 remote computing']);
    }
    // The local threads computed rows, and waited for the workers' answers in some step.
    expect(records.some((r) => r.participants[0].rows > 0 && r.participants[0].waitMs > 0)).toBe(true);
    expect(summary.paramsSha256).toBe(await reference());
  });

  it('refuse a worker name that is not A-Z a-z 0-9 . _ - in one line', async () => {
    await expect(runWorker({ connect: 'ws://127.0.0.1:9', name: 'my box' })).rejects.toThrow('option "name" must be 1 to 64 of the characters A-Z a-z 0-9 . _ -, got "my box"');
  });

  it('are dropped from metrics.jsonl past the checkpoint on resume, as step records are', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dtrain-participants-'));
    const log = new MetricsLog(dir);
    const local = { id: 'local', kind: 'local', state: 'computing', rows: 8, computeMs: 1, applyMs: 1, wireMs: 0, waitMs: 0 } as const;
    for (let step = 1; step <= 4; step++) log.write({ type: 'participants', step, epoch: 1, participants: [local] });
    await log.close();
    await new MetricsLog(dir, { step: 2, epochs: 0 }).close();
    expect(readMetrics(dir).map((r) => r.type === 'participants' && r.step)).toEqual([1, 2]);
  });

  it('sum a participant\'s rounds of a step, to 10 µs, and start the next step from nothing', () => {
    const tally = new ParticipantTally<string>();
    tally.add('a', { rows: 16, computeMs: 1.234567 });
    tally.add('a', { rows: 1, computeMs: 0.1, waitMs: 2.5 });
    expect(tally.shareOf('a')).toEqual({ rows: 17, computeMs: 1.33, applyMs: 0, wireMs: 0, waitMs: 2.5 });
    expect(tally.who()).toEqual(['a']);
    tally.clear();
    expect([tally.has('a'), tally.shareOf('a').rows]).toEqual([false, 0]);
  });

  it('find the slowest by rows per ms of compute, among those computing rows', () => {
    const p = (id: string, rows: number, computeMs: number, state: 'computing' | 'dropped' = 'computing') =>
      ({ id, kind: 'remote', state, rows, computeMs, applyMs: 0, wireMs: 0, waitMs: 0 }) as const;
    // b computes fewer rows in less time, but at a lower rate; c is gone and d did nothing this step.
    const record = { step: 1, epoch: 1, participants: [p('a', 48, 10), p('b', 16, 8), p('c', 1, 100, 'dropped'), p('d', 0, 0)] };
    expect(slowestParticipant(record)).toBe('b');
    expect(slowestParticipant({ ...record, participants: [] })).toBeUndefined();
  });
});
