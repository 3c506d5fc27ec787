/**
 * dtrain run's edges (issue 23): rank 0 listens on both stacks when the ranks span hosts, and a resumed
 * launched worker computes with the run's engine and device, which only rank 0's checkpoint holds.
 */
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { runWorker, type WorkerEvent } from '../src/cluster/remote/client.js';
import { decodeRaw } from '../src/cluster/remote/codec.js';
import type { Env } from '../src/launch/environment.js';
import { planLaunch } from '../src/launch/run.js';
import { freePort, selfSignedCert, smallHub } from './helpers.js';
import { createServer } from 'node:net';

const SLURM = (rank: number): Env => ({ SLURM_JOB_ID: '7', SLURM_STEP_ID: '0', SLURM_PROCID: String(rank), SLURM_NTASKS: '4', SLURM_JOB_NODELIST: 'cn[07-08]', SLURM_STEP_NUM_NODES: '2', DTRAIN_TOKEN: 'a token of 16+ bytes' });
const noToken = () => {
  throw new Error('no token file was given');
};

/** Whether this host has IPv6 loopback. */
function hasIpv6(): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(0, '::1', () => server.close(() => resolve(true)));
  });
}

/** Connects to `url` and resolves with the first message's type (the challenge), or the error. */
function challenged(url: string): Promise<string> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.on('message', (data) => (resolve(String(decodeRaw(data as Buffer).t)), ws.terminate()));
    ws.on('error', (e) => resolve(`error: ${e.message}`));
  });
}

describe('dtrain run', () => {
  it('has rank 0 listen on both stacks when the ranks span hosts', () => {
    expect(planLaunch({}, SLURM(0), noToken)).toMatchObject({ role: 'coordinator', train: { listen: '[::]:29501' } });
  });

  it('a hub listening on :: takes IPv4 and IPv6 connections', async () => {
    if (!(await hasIpv6())) return void console.warn('skipped: this host has no IPv6 loopback (::1)');
    const { hub, port } = await smallHub({ host: '::', authTimeoutMs: 3000 });
    try {
      expect(await challenged(`ws://127.0.0.1:${port}`)).toBe('challenge');
      expect(await challenged(`ws://[::1]:${port}`)).toBe('challenge');
    } finally {
      await hub.close();
    }
  });

  it("has a resumed launched worker take the run's engine and device from rank 0", () => {
    expect(planLaunch({ resume: '/runs/a' }, SLURM(1), noToken)).toMatchObject({ role: 'worker', worker: { engineFromCoordinator: true } });
    const fresh = planLaunch({ engine: 'tfjs' }, SLURM(1), noToken);
    expect(fresh.role === 'worker' && fresh.worker.engineFromCoordinator).toBeUndefined();
  });

  it('a worker told to take the engine from the coordinator joins a tfjs run started with the defaults (onnx)', async () => {
    const { hub, port } = await smallHub({ engine: 'tfjs', authTimeoutMs: 3000 });
    const events: WorkerEvent[] = [];
    const stop = new AbortController();
    try {
      const joined = hub.waitForWorker();
      const ended = runWorker({ connect: `ws://127.0.0.1:${port}`, engineFromCoordinator: true, maxRetries: 1, signal: stop.signal, onEvent: (e) => events.push(e) }).then(
        () => 'returned',
        (e: Error) => e.message,
      );
      expect(await Promise.race([joined.then(() => 'joined'), ended])).toBe('joined');
      expect(events.filter((e) => e.type === 'device')).toEqual([
        { type: 'device', description: 'onnx (cpu)' },
        { type: 'device', description: 'tfjs (cpu)' },
      ]);
    } finally {
      stop.abort();
      await hub.close();
    }
  }, 20_000);
});

describe('dtrain run with TLS', () => {
  const TORCHRUN = (rank: number, port: number): Env => ({ RANK: String(rank), WORLD_SIZE: '2', MASTER_ADDR: 'localhost', MASTER_PORT: String(port - 1), TORCHELASTIC_RUN_ID: 'x' });

  it('hands every rank the same files: rank 0 serves wss:// with the certificate, the others verify it by it (or by --ca)', () => {
    const tls = { tlsCert: '/secrets/cert.pem', tlsKey: '/secrets/key.pem' };
    expect(planLaunch(tls, TORCHRUN(0, 29501), noToken)).toMatchObject({ role: 'coordinator', train: tls });
    expect(planLaunch(tls, TORCHRUN(1, 29501), noToken)).toMatchObject({ role: 'worker', worker: { connect: 'wss://127.0.0.1:29501', ca: '/secrets/cert.pem' } });
    expect(planLaunch({ ...tls, ca: '/secrets/ca.pem' }, TORCHRUN(1, 29501), noToken)).toMatchObject({ worker: { ca: '/secrets/ca.pem' } });
    expect(() => planLaunch({ tlsCert: '/secrets/cert.pem' }, TORCHRUN(1, 29501), noToken)).toThrow('options "tlsCert" and "tlsKey" go together');
    expect(() => planLaunch({ ca: '/secrets/ca.pem' }, TORCHRUN(1, 29501), noToken)).toThrow('option "ca" is the CA that signed rank 0\'s certificate');
  });

  it('runs a launched job over wss:// end to end', async () => {
    const { join } = await import('node:path');
    const { train } = await import('../src/index.js');
    const { BASE, out } = await import('./remote_helpers.js');
    const { cert: tlsCert, key: tlsKey } = selfSignedCert('dtrain-edges-launch-tls-');
    const port = await freePort();
    const flags = { tlsCert, tlsKey, epochs: 1, trainSamples: 145, testSamples: 100 };
    const rank0 = planLaunch(flags, TORCHRUN(0, port), noToken);
    const rank1 = planLaunch(flags, TORCHRUN(1, port), noToken);
    if (rank0.role !== 'coordinator' || rank1.role !== 'worker') throw new Error('unexpected roles');
    const stop = new AbortController();
    const { data: _data, ...worker } = rank1.worker;
    let joined = false;
    const summary = await train(
      { ...BASE, ...rank0.train, out: join(out, 'edges-launch-tls') },
      {
        expectedRanks: rank0.expectedRanks,
        onListening: () => void runWorker({ ...worker, signal: stop.signal }).catch(() => {}),
        onEvent: (e) => e.type === 'cluster' && e.event.type === 'joined' && (joined = true),
      },
    );
    stop.abort();
    expect(joined).toBe(true);
    expect(summary.steps).toBe(3);
  }, 60_000);
});
