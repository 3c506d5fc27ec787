/**
 * The dashboard's parts: the run store (curves downsampled, shares, the slowest, plans, a resumed run's
 * history), the viewer gate, the pages' streams (a cap, and a page that stops reading dropped with the
 * coordinator's buffers bounded), a port in use, and a finished run's folder served by dtrain plot --serve.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import type { IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { selfSignedCert } from './helpers.js';
import type { ParticipantsRecord } from '../src/cluster/participant_stats.js';
import { dashboardSettings } from '../src/config.js';
import { DashboardThread } from '../src/dashboard/dashboard_thread.js';
import { serveRunFolder } from '../src/dashboard/live.js';
import { loadHistory, openRunFolder } from '../src/dashboard/run_folder.js';
import { MAX_POINTS, RunStore } from '../src/dashboard/run_store.js';
import { DashboardServer } from '../src/dashboard/server.js';
import { ViewerGate } from '../src/dashboard/viewer_auth.js';
import { train } from '../src/index.js';

const dir = mkdtempSync(join(tmpdir(), 'dtrain-dashboard-'));
const VIEWER_TOKEN = 'viewer-token-of-the-dashboard-0123';
const servers: DashboardServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(store: RunStore, options: Partial<ConstructorParameters<typeof DashboardServer>[1]> = {}): Promise<{ server: DashboardServer; url: string }> {
  const server = new DashboardServer(store, { host: '127.0.0.1', port: 0, flushMs: 60_000, ...options });
  servers.push(server);
  return { server, url: await server.start() };
}

const participant = (id: string, rows: number, computeMs: number) => ({ id, kind: 'remote' as const, address: `127.0.0.1:${id.length}`, state: 'computing' as const, rows, computeMs, applyMs: 1, wireMs: 2, waitMs: 3 });

describe('the run store', () => {
  it('keeps at most MAX_POINTS points a curve, averaging neighbours, and the newest step last', () => {
    const store = new RunStore();
    const steps = 3 * MAX_POINTS + 7;
    for (let s = 1; s <= steps; s++) store.addStep(s, 1 / s, 10, 64);
    const { steps: columns } = store.snapshot();
    expect(columns.step.length).toBeLessThanOrEqual(MAX_POINTS + 1);
    expect(columns.step.length).toBeGreaterThan(MAX_POINTS / 2);
    // Whole buckets only: the last point is the last step that completed one.
    expect(steps - columns.step[columns.step.length - 1]).toBeLessThan(4);
    expect(columns.loss[0]).toBeCloseTo((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, 10);
    expect(columns.samplesPerSecond[5]).toBeCloseTo(6400, 6);
    // Halving tells the open pages to take the snapshot again.
    expect(store.takeUpdate()?.kind).toBe('reset');
  });

  it('sends an open page the new points and the parts that changed', () => {
    const store = new RunStore();
    store.addStep(1, 2, 10, 64);
    store.takeUpdate();
    expect(store.takeUpdate()).toBeUndefined();
    store.addStep(2, 1.5, 12, 64);
    store.addStep(3, 1.25, 14, 64);
    const change = store.takeUpdate();
    expect(change?.kind).toBe('update');
    if (change?.kind !== 'update') return;
    expect(change.update.steps?.step).toEqual([2, 3]);
    expect(change.update.stepStats?.medianMs).toBe(12);
    expect(change.update.participants).toBeUndefined();
  });

  it('gives every participant its share and marks the slowest by its rate', () => {
    const store = new RunStore();
    for (let step = 1; step <= 3; step++) {
      const record: ParticipantsRecord = { step, epoch: 1, participants: [participant('fast', 48, 10), participant('slow', 16, 20)] };
      store.addParticipants(record);
    }
    const { participants, slowest } = store.snapshot();
    expect(slowest).toBe('slow');
    expect(participants.map((p) => [p.id, p.share])).toEqual([
      ['fast', 0.75],
      ['slow', 0.25],
    ]);
    expect(participants[0].rowsPerSecond).toBeCloseTo(4800, 6);
    expect(participants[1]).toMatchObject({ computeMs: 20, wireMs: 2, waitMs: 3, state: 'computing', lastStep: 3 });
    // Gone: recorded once as dropped, then absent; its share goes to the one left, nobody's straggler alone.
    store.addParticipants({ step: 4, epoch: 1, participants: [participant('fast', 64, 12), { ...participant('slow', 0, 0), state: 'dropped', reason: 'missed a pong' }] });
    for (let step = 5; step <= 60; step++) store.addParticipants({ step, epoch: 1, participants: [participant('fast', 64, 12)] });
    const after = store.snapshot();
    expect(after.participants.map((p) => [p.id, p.state, p.share])).toEqual([
      ['fast', 'computing', 1],
      ['slow', 'dropped', 0],
    ]);
    expect(after.participants[1].reason).toBe('missed a pong');
    expect(after.slowest).toBeNull();
  });

  it('measures each plan by the steps taken under it', () => {
    const store = new RunStore();
    store.addClusterEvent({ type: 'plan', step: 0, plan: 'replicated', reason: 'as asked', estimates: [] });
    store.addStep(1, 1, 10, 64);
    store.addStep(2, 1, 20, 64);
    store.addClusterEvent({ type: 'plan', step: 2, plan: 'server', reason: 'cheapest', estimates: [{ plan: 'server', ms: 4, computeMs: 3, wireMs: 1 }] });
    store.addStep(3, 1, 5, 64);
    const { plans, events } = store.snapshot();
    expect(plans.map((p) => [p.plan, p.measuredMs])).toEqual([
      ['replicated', 15],
      ['server', 5],
    ]);
    expect(events[1].line).toBe('⇄ step 2: plan server (cheapest; estimated a step: server 4.0 ms)');
  });

  it('continues a resumed run from metrics.jsonl, without what was logged past the checkpoint', () => {
    const run = mkdtempSync(join(dir, 'resumed-'));
    const lines = [
      ...[1, 2, 3, 4, 5, 6].map((step) => ({ type: 'step', step, epoch: 1, loss: 3 - step / 4, ms: 5, bytes: 0, cpuMs: 1, plan: 'whole' })),
      { type: 'participants', step: 4, epoch: 1, participants: [participant('w', 64, 4)] },
      { type: 'epoch', epoch: 1, steps: 4, testAccuracy: 50, testAvgLoss: 1, trainLoss: 2, seconds: 1, samplesPerSecond: 256, shares: { w: 256 }, networkWaitSeconds: 0 },
      { type: 'epoch', epoch: 2, steps: 6, testAccuracy: 60, testAvgLoss: 0.9, trainLoss: 1.8, seconds: 1, samplesPerSecond: 128, shares: { w: 128 }, networkWaitSeconds: 0 },
    ];
    writeFileSync(join(run, 'metrics.jsonl'), lines.map((l) => `${JSON.stringify(l)}\n`).join(''));
    const store = new RunStore();
    loadHistory(store, run, 64, 4);
    store.addStep(5, 1.5, 5, 64);
    const snapshot = store.snapshot();
    expect(snapshot.steps.step).toEqual([1, 2, 3, 4, 5]);
    expect(snapshot.steps.loss[4]).toBe(1.5);
    expect(snapshot.epochs.map((e) => e.epoch)).toEqual([1]);
    expect(snapshot.participants.map((p) => p.id)).toEqual(['w']);
  });
});

describe('the viewer gate', () => {
  const request = (url: string, headers: Record<string, string>) => ({ url, headers }) as unknown as IncomingMessage;

  it('on loopback, answers only to loopback host names (no DNS rebinding)', () => {
    const gate = new ViewerGate(undefined, true, false);
    expect(gate.check(request('/', { host: '127.0.0.1:8080' })).allowed).toBe(true);
    expect(gate.check(request('/', { host: 'localhost:8080' })).allowed).toBe(true);
    expect(gate.check(request('/', { host: 'rebound.example:8080' }))).toMatchObject({ allowed: false, status: 421 });
  });

  it('beyond loopback, wants the viewer token by header, cookie or URL (exchanged for a cookie)', () => {
    const gate = new ViewerGate(VIEWER_TOKEN, false, true);
    expect(gate.check(request('/events', { host: 'box:8443' }))).toMatchObject({ allowed: false, status: 401 });
    expect(gate.check(request('/events', { host: 'box:8443', authorization: 'Bearer wrong-token-wrong-token' }))).toMatchObject({ allowed: false });
    expect(gate.check(request('/events', { host: 'box:8443', authorization: `Bearer ${VIEWER_TOKEN}` }))).toEqual({ allowed: true });
    expect(gate.check(request('/', { host: 'box:8443', cookie: `a=b; dtrain_viewer=${VIEWER_TOKEN}` }))).toEqual({ allowed: true });
    const exchanged = gate.check(request(`/?token=${VIEWER_TOKEN}`, { host: 'box:8443' }));
    expect(exchanged).toEqual({ allowed: true, exchange: { cookie: `dtrain_viewer=${VIEWER_TOKEN}; HttpOnly; Secure; SameSite=Strict; Path=/`, location: '/' } });
  });

  it('is configured only as config.ts allows: beyond loopback with TLS and a token of its own', () => {
    expect(dashboardSettings({ dashboard: '8080' })).toEqual({ host: '127.0.0.1', port: 8080, tls: undefined, token: undefined });
    expect(() => dashboardSettings({ dashboard: '0.0.0.0:8080' })).toThrow(/needs TLS/);
    expect(() => dashboardSettings({ dashboard: '0.0.0.0:8080', tlsCert: 'c', tlsKey: 'k' })).toThrow(/needs a viewer token/);
    expect(() => dashboardSettings({ dashboard: '0.0.0.0:8080', tlsCert: 'c', tlsKey: 'k', dashboardToken: VIEWER_TOKEN, token: VIEWER_TOKEN })).toThrow(/must differ from "token"/);
    expect(() => dashboardSettings({ dashboard: 'host:port' })).toThrow('option "dashboard" must be [HOST:]PORT with a port from 0 to 65535, got "host:port"');
    expect(() => dashboardSettings({ dashboard: '8080', dashboardToken: 'short' })).toThrow(/"dashboardToken" must be at least 16 bytes/);
  });
});

describe('the dashboard server', () => {
  it('serves the page, uPlot and the snapshot; refuses writes and unknown paths', async () => {
    const { url } = await serve(new RunStore());
    const page = await fetch(url);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-security-policy')).toContain("default-src 'self'");
    expect(await page.text()).toContain('<script src="uplot.js"');
    expect((await fetch(`${url}uplot.js`)).status).toBe(200);
    expect(await (await fetch(`${url}snapshot.json`)).json()).toMatchObject({ finished: false, steps: { step: [] } });
    expect((await fetch(url, { method: 'POST', body: 'x' })).status).toBe(405);
    expect((await fetch(`${url}../package.json`)).status).toBe(404);
  });

  it('refuses a request without the viewer token before it reaches the run (https)', async () => {
    const { cert, key } = selfSignedCert('dtrain-dashboard-tls-');
    let reads = 0;
    const store = new (class extends RunStore {
      override snapshot() {
        reads++;
        return super.snapshot();
      }
    })();
    const { url } = await serve(store, { tls: { cert, key }, token: VIEWER_TOKEN });
    expect(url).toMatch(/^https:/);
    const get = (path: string, headers: Record<string, string> = {}) =>
      new Promise<{ status: number; headers: IncomingMessage['headers']; body: string }>((resolve, reject) => {
        const req = httpsRequest(`${url}${path.replace(/^\//, '')}`, { ca: readFileSync(cert), headers }, (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
        });
        req.on('error', reject);
        req.end();
      });
    for (const path of ['/', '/snapshot.json', '/events']) expect((await get(path)).status).toBe(401);
    expect((await get('/snapshot.json', { cookie: 'dtrain_viewer=not-the-token-at-all-000' })).status).toBe(401);
    expect(reads).toBe(0);
    const exchanged = await get(`/?token=${VIEWER_TOKEN}`);
    expect(exchanged.status).toBe(303);
    expect(exchanged.headers.location).toBe('/');
    const cookie = exchanged.headers['set-cookie']![0].split(';')[0];
    expect((await get('/snapshot.json', { cookie })).status).toBe(200);
    expect(reads).toBe(1);
  });

  it('caps the open pages, and drops a page that stops reading, its unsent bytes bounded', async () => {
    const store = new RunStore();
    const limits = { maxPages: 2, maxBufferedBytes: 256 << 10 };
    const { server, url } = await serve(store, { limits });
    const { port } = new URL(url);
    // A page that opens the stream and never reads it.
    const stalled = connect(Number(port), '127.0.0.1');
    stalled.pause();
    stalled.write(`GET /events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
    // A page that reads.
    const reader = new AbortController();
    let received = 0;
    const reading = fetch(`${url}events`, { signal: reader.signal }).then(async (res) => {
      for await (const chunk of res.body!) received += chunk.length;
    }).catch(() => {});
    while (server.streams.open < 2) await new Promise((r) => setTimeout(r, 10));
    expect((await fetch(`${url}events`)).status).toBe(503);
    let step = 0;
    let mostBuffered = 0;
    for (let round = 0; round < 4000 && server.streams.dropped === 0; round++) {
      // Curves are downsampled, so the bulk is the cluster events' list, sent whole when it changes.
      for (let i = 0; i < 20; i++) store.addStep(++step, Math.random(), 10, 64);
      store.addClusterEvent({ type: 'waiting', reason: `${step}: ${'a long reason '.repeat(20)}` });
      server.flush();
      mostBuffered = Math.max(mostBuffered, server.streams.bufferedBytes);
      await new Promise((r) => setTimeout(r, 1));
    }
    expect(server.streams.dropped).toBe(1);
    expect(server.streams.open).toBe(1);
    // The limit and one message more at most: the largest is a snapshot, whose curves are bounded.
    const snapshotBytes = Buffer.byteLength(JSON.stringify(store.snapshot()));
    expect(mostBuffered).toBeLessThanOrEqual(limits.maxBufferedBytes + 2 * snapshotBytes);
    const before = received;
    store.addStep(++step, 0.5, 10, 64);
    server.flush();
    await new Promise((r) => setTimeout(r, 100));
    expect(received).toBeGreaterThan(before);
    reader.abort();
    stalled.destroy();
    await reading;
  });

  it('a dashboard port already in use is a one-line error before the run starts', async () => {
    const { url } = await serve(new RunStore());
    const { port } = new URL(url);
    const second = new DashboardServer(new RunStore(), { host: '127.0.0.1', port: Number(port) });
    await expect(second.start()).rejects.toThrow(`--dashboard 127.0.0.1:${port}: the address is already in use; give another port (or 0 for any free one)`);
    await expect(train({ dashboard: `127.0.0.1:${port}`, trainSamples: 64, epochs: 1, threads: 1, out: join(dir, 'in-use') })).rejects.toThrow(/already in use/);
  });
});

describe('the dashboard thread', () => {
  it('fails alone: the run is told and goes on', async () => {
    const failures: string[] = [];
    const thread = await DashboardThread.start({ host: '127.0.0.1', port: 0 }, (message) => failures.push(message));
    expect((await fetch(`${thread.url}snapshot.json`)).status).toBe(200);
    // Nothing the run sends looks like this; it stands for a fault in the dashboard's own code.
    thread.post({ type: 'event', event: { type: 'participants', record: null } } as never);
    for (let i = 0; i < 100 && failures.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(failures).toHaveLength(1);
    await thread.close();
  });
});

describe('a run and its folder', () => {
  const runDir = join(dir, 'run');
  const small = { hidden: [8], trainSamples: 256, testSamples: 64, epochs: 2, threads: 1, logEvery: 1000 };

  it('shows a live run, then a resumed run continuing the same curve', async () => {
    let url = '';
    const seen: number[][] = [];
    const first = await train(
      { ...small, steps: 4, out: runDir, dashboard: '0' },
      {
        onEvent: (e) => void (e.type === 'dashboard' && (url = e.url)),
        beforeStep: async (step) => {
          if (step !== 3) return;
          await new Promise((r) => setTimeout(r, 400));
          seen.push((await (await fetch(`${url}snapshot.json`)).json()).steps.step);
        },
      },
    );
    expect(first.steps).toBe(4);
    expect(seen[0]).toEqual([1, 2, 3]);
    await train(
      { resume: runDir, steps: 6, dashboard: '0' },
      {
        onEvent: (e) => void (e.type === 'dashboard' && (url = e.url)),
        beforeStep: async (step) => {
          if (step !== 5) return;
          await new Promise((r) => setTimeout(r, 400));
          seen.push((await (await fetch(`${url}snapshot.json`)).json()).steps.step);
        },
      },
    );
    expect(seen[1]).toEqual([1, 2, 3, 4, 5]);
  });

  it('serves a finished run from its folder (dtrain plot --serve)', async () => {
    const summary = await train({ ...small, out: join(dir, 'finished') });
    const store = openRunFolder(join(dir, 'finished'));
    const snapshot = store.snapshot();
    expect(snapshot.finished).toBe(true);
    expect(snapshot.done?.paramsSha256).toBe(summary.paramsSha256);
    expect(snapshot.steps.step.length).toBe(summary.steps);
    expect(snapshot.epochs.map((e) => e.testAccuracy)).toEqual(summary.epochs.map((e) => e.testAccuracy));
    expect(snapshot.identity?.datasetSha256).toBe(summary.dataset.sha256);
    const served = await serveRunFolder(join(dir, 'finished'), { host: '127.0.0.1', port: 0 });
    try {
      expect((await (await fetch(`${served.url}snapshot.json`)).json()).done.paramsSha256).toBe(summary.paramsSha256);
    } finally {
      await served.close();
    }
    expect(() => openRunFolder(join(dir, 'nothing'))).toThrow(`${join(dir, 'nothing')}: not a run directory to show (no summary.json); give the --out directory of a run`);
  });
});
