/**
 * Hostile networks: a proxy that damages frames between honest workers and the coordinator while
 * strangers send junk, and a flood of connections that never authenticate. Either way the run ends with
 * the parameters of the local threads alone, and the coordinator holds no more than it must.
 */
import { execSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { AdmissionStats } from '../src/cluster/remote/admission.js';
import { runWorker } from '../src/cluster/remote/client.js';
import { ProtocolError } from '../src/cluster/remote/messages.js';
import { Replica } from '../src/cluster/remote/replica.js';
import { makeSpec, paramLayout } from '../src/model/spec.js';
import { ADAM_DEFAULTS } from '../src/optim/adam.js';
import { coordinator, referenceHash } from './remote_helpers.js';
import { junkSenders, loseForwardedRows, proxy, randomDamage, type Policy } from '../scripts/hostile_network.js';

const TOKEN = 'correct horse battery staple';
/** Strangers connect from another loopback address, so that admission control tells them from the workers. */
const STRANGER = '127.0.0.2';
/** A flood's strangers, from several loopback addresses (admission caps those authenticating from each). */
const STRANGERS = Array.from({ length: 8 }, (_, i) => `127.0.0.${20 + i}`);

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

describe('a network that damages frames', () => {
  // A small model and more steps than the other runs: the workers take part in many steps, each frame
  // is small, and a lost one costs little.
  const RUN = { hidden: [64, 32], trainSamples: 640, epochs: 3 };
  const reference = referenceHash({ ...RUN, threads: 1 }, 'reference-network');

  /**
   * A run of one local thread and two honest workers behind a proxy with `policy` (two, so that rows are
   * forwarded between them), strangers sending junk meanwhile; returns the summary, the rows the workers
   * computed, and why peers were rejected or left.
   */
  async function runBehindProxy(policy: Policy) {
    const abort = new AbortController();
    cleanups.push(() => abort.abort());
    const reasons: string[] = [];
    let members = 0;
    let memberJoined = () => {};
    let remoteRows = 0;
    const started = performance.now();
    const summary = await coordinator(
      // Lost rows are noticed at the step deadline: short here, so that the test stays short.
      { ...RUN, threads: 1, token: TOKEN, stepTimeoutMs: 1000 },
      async (url) => {
        const through = await proxy(url, policy);
        cleanups.push(through.close);
        for (let i = 0; i < 2; i++) void runWorker({ connect: through.url, token: TOKEN, signal: abort.signal });
        cleanups.push(junkSenders(url, 50, STRANGER));
      },
      (e) => {
        if (e.type === 'epoch') remoteRows += Object.entries(e.shares.rows).reduce((n, [who, rows]) => n + (who === 'local' ? 0 : rows), 0);
        if (e.type !== 'cluster') return;
        if (e.event.type === 'rejected' || e.event.type === 'left') reasons.push(e.event.reason);
        if (e.event.type === 'joined') (members++, memberJoined());
        if (e.event.type === 'left') members--;
      },
      // The local thread alone would finish in a blink: each step waits (up to 2 s) for a worker to be in,
      // so that the workers, knocked out by damage again and again, take part in most steps.
      () => (members > 0 ? undefined : Promise.race([new Promise<void>((resolve) => (memberJoined = resolve)), sleep(2000)])),
    );
    return { summary, remoteRows, reasons, seconds: (performance.now() - started) / 1000 };
  }

  it('ends with the local threads\' parameters when a proxy damages 1 frame in 20 and strangers send junk', async () => {
    const { policy, damage } = randomDamage(1 / 20, 1);
    const { summary, remoteRows, reasons, seconds } = await runBehindProxy(policy);
    expect(summary.paramsSha256).toBe(await reference());
    expect(seconds).toBeLessThan(30);
    // The workers did compute rows, which damage could have spoilt; and damage there was.
    expect(remoteRows).toBeGreaterThan(0);
    expect(damage.flipped + damage.cut + damage.dropped).toBeGreaterThan(0);
    // The junk was refused with reasons (until its address was refused altogether).
    expect(reasons).toContainEqual(expect.stringMatching(/^undecodable frame|^text frames are not part of the protocol$|^hello: missing field/));
  });

  it('ends the same when rows forwarded to a worker are lost: the worker notices at the update instead of diverging', async () => {
    // Before the check, a replica applied such a step with the last step's rows in its buffers, and its
    // next rows (finite, and wrong) changed the result.
    const { policy, damage } = loseForwardedRows(4);
    const { summary, reasons, seconds } = await runBehindProxy(policy);
    expect(summary.paramsSha256).toBe(await reference());
    expect(seconds).toBeLessThan(30);
    expect(damage.dropped).toBeGreaterThan(0);
    expect(reasons).toContainEqual(expect.stringMatching(/^worker reported: update: rows \d+–\d+ of step \d+ never arrived$/));
  });
});

describe('a flood of strangers', () => {
  const reference = referenceHash({ threads: 1, epochs: 4 }, 'reference-flood');
  const FLOOD = 1000;

  /** How many connections fit at once: each takes a descriptor here and one in the hub (same process). */
  function batchSize(): number {
    const limit = Number(execSync('ulimit -n', { shell: '/bin/sh' }).toString().trim());
    return Number.isFinite(limit) ? Math.max(50, Math.min(FLOOD, Math.floor((limit - 256) / 2))) : FLOOD;
  }

  /** A stranger that never says hello: resolves once it was challenged (let in) or turned away. */
  function stranger(url: string, sockets: WebSocket[], from: string): Promise<{ code?: number; reason?: string }> {
    return new Promise((resolve) => {
      const ws = new WebSocket(url, { localAddress: from });
      sockets.push(ws);
      ws.on('message', () => resolve({}));
      ws.on('close', (code, reason) => resolve({ code, reason: String(reason) }));
      // A refused one is answered before the upgrade: HTTP 429 with the reason as its status text.
      ws.on('unexpected-response', (_request, response) => (resolve({ code: response.statusCode, reason: response.statusMessage }), ws.terminate()));
      ws.on('error', () => {});
    });
  }

  /** FLOOD strangers, all at once (or in batches of what the descriptor limit allows). */
  async function flood(url: string, sockets: WebSocket[]): Promise<{ code?: number; reason?: string }[]> {
    const results = [];
    for (let i = 0, n = batchSize(); i < FLOOD; i += n) {
      // From 8 addresses (at most 16 authenticate at once from each), so that the cap of all (64) is reached.
      results.push(...(await Promise.all(Array.from({ length: Math.min(n, FLOOD - i) }, (_, j) => stranger(url, sockets, STRANGERS[j % STRANGERS.length])))));
    }
    return results;
  }

  it('1,000 connections at once while training: steps go on, at most 64 authenticate at once, each refused one hears why, memory stays bounded', async () => {
    const abort = new AbortController();
    const sockets: WebSocket[] = [];
    cleanups.push(() => abort.abort(), () => sockets.forEach((ws) => ws.terminate()));
    let connections: AdmissionStats | undefined;
    let address = '';
    let workerJoined = () => {};
    const joined = new Promise<void>((resolve) => (workerJoined = resolve));
    const refusedLines: number[] = [];
    let strangers: Promise<{ code?: number; reason?: string }[]> | undefined;
    let heapBefore = 0;
    let heapPeak = 0;
    let stepsDuringFlood = 0;
    let flooding = false;
    const started = performance.now();
    const summary = await coordinator(
      { threads: 1, token: TOKEN, epochs: 4 },
      (url, counts) => {
        address = url;
        connections = counts;
        void runWorker({ connect: url, token: TOKEN, signal: abort.signal });
      },
      (e) => {
        if (e.type === 'step' && flooding) stepsDuringFlood++;
        if (e.type === 'cluster' && e.event.type === 'joined') workerJoined();
        if (e.type === 'cluster' && e.event.type === 'refused') refusedLines.push(e.event.count);
      },
      async (step) => {
        if (step === 0) await joined;
        if (step === 1) {
          heapBefore = process.memoryUsage().heapUsed;
          flooding = true;
          strangers = flood(address, sockets);
        }
        if (step >= 1) heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
        // The last step waits for every stranger to have been let in or turned away.
        if (step === 11) {
          await strangers;
          flooding = false;
          heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
        }
      },
    );
    const results = await strangers!;
    expect(summary.paramsSha256).toBe(await reference());
    expect(performance.now() - started).toBeLessThan(20_000);
    expect(stepsDuringFlood).toBeGreaterThan(0);
    expect(connections!.peakAuthenticating).toBeLessThanOrEqual(64);
    const refused = results.filter((r) => r.code !== undefined);
    expect(refused.length).toBeGreaterThanOrEqual(FLOOD - 64);
    for (const r of refused) {
      expect(r).toEqual({ code: 429, reason: expect.stringMatching(/^too many connections authenticating (\(64\)|from 127\.0\.0\.\d+ \(16\)): try again later$/) });
    }
    expect(connections!.refused).toBe(refused.length);
    // Refusals are logged as a few lines with counts, not one line each.
    expect(refusedLines.reduce((a, b) => a + b, 0)).toBe(refused.length);
    expect(refusedLines.length).toBeLessThan(30);
    // The heap of this process, which holds the hub and also the 1,000 strangers' own sockets: about
    // 17 MiB of growth measured; the bound leaves room for when garbage collection runs.
    expect(heapPeak - heapBefore).toBeLessThan(64 << 20);
  });
});

describe('a replica', () => {
  it('refuses an update that leaves rows of the batch missing (forwarded rows lost on the way)', async () => {
    const spec = makeSpec(4, [3], 2, 'sigmoid');
    const total = paramLayout(spec).total;
    const state = { t: 'state' as const, spec, batchSize: 4, adam: ADAM_DEFAULTS, step: 0, generation: 0, params: new Float32Array(total), m: new Float32Array(total), v: new Float32Array(total), useLocalData: false, plan: 'replicated' as const };
    const replica = await Replica.create(state, { threads: 1, engine: 'onnx', device: 'cpu' });
    try {
      const part = (r0: number, r1: number) => ({ range: [r0, r1] as [number, number], x: new Float32Array((r1 - r0) * 4), hidden: [new Float32Array((r1 - r0) * 3)], deltas: [new Float32Array((r1 - r0) * 2)] });
      const update = { t: 'update' as const, step: 0, batch: 4, parts: [part(0, 1), part(3, 4)] };
      await expect(replica.update(update)).rejects.toThrow(new ProtocolError('update: rows 1–2 of step 0 never arrived'));
      expect(replica.step).toBe(0);
    } finally {
      await replica.close();
    }
  });
});
