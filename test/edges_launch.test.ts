/**
 * dtrain run's edges (issue 23): rank 0 listens on both stacks when the ranks span hosts, and a resumed
 * launched worker computes with the run's engine and device, which only rank 0's checkpoint holds.
 */
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { runWorker, type WorkerEvent } from '../src/cluster/remote/client.js';
import { decodeRaw } from '../src/cluster/remote/codec.js';
import { RemoteHub } from '../src/cluster/remote/hub.js';
import { createTrainingMemory } from '../src/cluster/training_memory.js';
import type { Env } from '../src/launch/environment.js';
import { planLaunch } from '../src/launch/run.js';
import { makeSpec } from '../src/model/spec.js';
import { syntheticDataset } from './helpers.js';
import { createServer } from 'node:net';

const SLURM = (rank: number): Env => ({ SLURM_JOB_ID: '7', SLURM_STEP_ID: '0', SLURM_PROCID: String(rank), SLURM_NTASKS: '4', SLURM_JOB_NODELIST: 'cn[07-08]', SLURM_STEP_NUM_NODES: '2', DTRAIN_TOKEN: 'a token of 16+ bytes' });
const noToken = () => {
  throw new Error('no token file was given');
};
const hubOptions = (host: string, engine: 'onnx' | 'tfjs' = 'onnx') =>
  ({ host, port: 0, engine, device: 'cpu', datasetSha256: '', heartbeatMs: 1000, stepTimeoutMs: 1000, authTimeoutMs: 3000 }) as const;
const memory = () => createTrainingMemory(makeSpec(4, [5], 3, 'sigmoid'), syntheticDataset(8, 8, 4, 3), 4, 1);

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
    const hub = new RemoteHub(hubOptions('::'), memory(), () => {});
    const { port } = await hub.start();
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
    const hub = new RemoteHub(hubOptions('127.0.0.1', 'tfjs'), memory(), () => {});
    const { port } = await hub.start();
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
