/** Shared test helpers: whole-batch gradients through an engine, and an independent float64 reference. */
import { execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket, { WebSocketServer } from 'ws';
import type { Engine } from '../src/engine/engine.js';
import { RemoteHub, RemotePeer, type HubEvent, type HubOptions } from '../src/cluster/remote/hub.js';
import type { RemoteMembers } from '../src/cluster/remote/members.js';
import type { Snapshot } from '../src/cluster/remote/peer_work.js';
import type { Team } from '../src/cluster/team.js';
import type { TrainingMemory } from '../src/cluster/training_memory.js';
import { ADAM_DEFAULTS } from '../src/optim/adam.js';
import { createTrainingMemory } from '../src/cluster/training_memory.js';
import { listCheckpoints, readCheckpoint } from '../src/train/checkpoint.js';
import { toSplit, type Dataset } from '../src/data/datasets.js';
import { makeSpec, paramLayout, type ModelSpec } from '../src/model/spec.js';

export function oneHot(labels: ArrayLike<number>, classes: number): Float32Array {
  const t = new Float32Array(labels.length * classes);
  for (let i = 0; i < labels.length; i++) t[i * classes + labels[i]] = 1;
  return t;
}

/** Loss and full gradient of the batch mean, through the engine's two passes over the whole batch. */
export async function engineGradient(engine: Engine, spec: ModelSpec, params: Float32Array, x: Float32Array, labels: number[]) {
  const rows = labels.length;
  const layout = paramLayout(spec);
  const target = oneHot(labels, spec.sizes[spec.sizes.length - 1]);
  engine.setParams(params);
  const out = {
    rowLoss: new Float32Array(rows),
    hidden: spec.sizes.slice(1, -1).map((n) => new Float32Array(rows * n)),
    deltas: spec.sizes.slice(1).map((n) => new Float32Array(rows * n)),
  };
  await engine.rowPass(x, target, rows, 1 / rows, out);
  const grad = new Float32Array(layout.total);
  const gradients = await engine.weightPass([x, ...out.hidden], out.deltas, rows, layout.layers.map((layer) => [0, layer.fanOut] as const));
  layout.layers.forEach(({ weightOffset, biasOffset }, l) => {
    grad.set(gradients[l].weight, weightOffset);
    grad.set(gradients[l].bias, biasOffset);
  });
  const loss = out.rowLoss.reduce((a, b) => a + b, 0) / rows;
  return { loss, grad, out };
}

/** Batch-mean softmax cross-entropy in float64, written independently of both engines. */
export function referenceLoss(spec: ModelSpec, params: ArrayLike<number>, x: ArrayLike<number>, labels: number[]): number {
  const layout = paramLayout(spec);
  const act = { sigmoid: (z: number) => 1 / (1 + Math.exp(-z)), relu: (z: number) => Math.max(0, z), tanh: Math.tanh }[spec.activation];
  let total = 0;
  for (let r = 0; r < labels.length; r++) {
    let h = Array.from({ length: spec.sizes[0] }, (_, i) => x[r * spec.sizes[0] + i]);
    layout.layers.forEach((layer, l) => {
      const z = new Array<number>(layer.fanOut);
      for (let o = 0; o < layer.fanOut; o++) {
        let s = params[layer.biasOffset + o];
        for (let i = 0; i < layer.fanIn; i++) s += params[layer.weightOffset + o * layer.fanIn + i] * h[i];
        z[o] = s;
      }
      h = l + 1 < layout.layers.length ? z.map(act) : z;
    });
    const max = Math.max(...h);
    const logSum = max + Math.log(h.reduce((a, z) => a + Math.exp(z - max), 0));
    total += logSum - h[labels[r]];
  }
  return total / labels.length;
}

/** A small dataset of random pixels, for tests that need data of a given shape. */
export function syntheticDataset(train: number, test: number, features = 20, classes = 4, seed = 1): Dataset {
  let s = seed;
  const next = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 8) & 0xff;
  const split = (count: number) => {
    const pixels = new Uint8Array(count * features).map(() => next());
    const labels = new Uint8Array(count).map((_, i) => i % classes);
    return toSplit(pixels, labels, count, features, classes);
  };
  return { name: 'synthetic', dir: '', features, classes, train: split(train), test: split(test), sha256: 'synthetic' };
}

/**
 * SIGKILLs a coordinator process as soon as its run directory holds a checkpoint of at least `step`;
 * resolves with that checkpoint's step (rejects if the run ended first).
 */
export function killAtCheckpoint(child: ChildProcess, runDir: string, step: number): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const poll = setInterval(() => {
      const newest = listCheckpoints(runDir)[0];
      if (newest && readCheckpoint(newest).header.step >= step) {
        clearInterval(poll);
        child.kill('SIGKILL');
        resolve(readCheckpoint(newest).header.step);
      }
    }, 5);
    child.on('exit', () => {
      clearInterval(poll);
      reject(new Error('the coordinator finished before it could be killed'));
    });
  });
}

/**
 * A hub on a free loopback port over a tiny model, for tests of its connection handling; `options` replace
 * its defaults (a host, timeouts, TLS files, the engine).
 */
export async function smallHub(options: Partial<HubOptions> = {}, onEvent: (e: HubEvent) => void = () => {}) {
  const dataset = syntheticDataset(8, 8, 4, 3);
  const memory = createTrainingMemory(makeSpec(4, [5], 3, 'sigmoid'), dataset, 4, 1);
  const hubOptions: HubOptions = {
    host: '127.0.0.1', port: 0, engine: 'onnx', device: 'cpu', allowMixedDevices: false, datasetSha256: dataset.sha256,
    heartbeatMs: 1000, stepTimeoutMs: 1000, authTimeoutMs: 1000,
    ...options,
  };
  const hub = new RemoteHub(hubOptions, memory, onEvent);
  const { port } = await hub.start();
  return { hub, port, memory };
}

/** `count` TCP ports free on `host` now (bound together, then released: for listeners that must know their ports ahead). */
export async function freePorts(count: number, host = '127.0.0.1'): Promise<number[]> {
  const servers = Array.from({ length: count }, () => createServer());
  const ports = await Promise.all(
    servers.map((s) => new Promise<number>((resolve, reject) => {
      s.once('error', reject);
      s.listen(0, host, () => resolve((s.address() as { port: number }).port));
    })),
  );
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/** A TCP port free on loopback now (for a server a test starts on a known port). */
export async function freePort(): Promise<number> {
  return (await freePorts(1))[0];
}

/** A self-signed certificate for 127.0.0.1 (EC P-256, two days) and its key, in a fresh temp dir named by `prefix`. */
export function selfSignedCert(prefix: string): { cert: string; key: string } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const [cert, key] = [join(dir, 'cert.pem'), join(dir, 'key.pem')];
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert,
    '-days', '2', '-subj', '/CN=dtrain test', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  return { cert, key };
}

/**
 * `count` peers as the hub holds them (RemotePeer, status ready, speed 0), each on a real loopback
 * connection, for unit tests of what the scheduler, the plan and PeerWork do with peers; `close` ends them.
 */
export async function loopbackPeers(count: number): Promise<{ peers: RemotePeer[]; clients: WebSocket[]; close: () => Promise<void> }> {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => server.once('listening', resolve));
  const accepted: [WebSocket, Socket][] = [];
  server.on('connection', (ws, req) => accepted.push([ws, req.socket]));
  const { port } = server.address() as { port: number };
  const clients: WebSocket[] = [];
  for (let i = 0; i < count; i++) {
    const client = new WebSocket(`ws://127.0.0.1:${port}`);
    client.on('error', () => {});
    await new Promise((resolve) => client.once('open', resolve));
    clients.push(client);
  }
  while (accepted.length < count) await new Promise((resolve) => setImmediate(resolve));
  const peers = accepted.map(([ws, socket], i) => Object.assign(new RemotePeer(i + 1, ws, socket), { status: 'ready' as const }));
  const close = async () => {
    for (const client of clients) client.terminate();
    await new Promise((resolve) => server.close(resolve));
  };
  return { peers, clients, close };
}

/**
 * Remote members for the scheduler or the plan to drive: `given` are the members a test expects them to use;
 * any other that is called fails the test, naming it. By default, nobody is a member.
 */
export function membersWith(given: Partial<RemoteMembers>): RemoteMembers {
  const unexpected = (name: string) => () => {
    throw new Error(`remote members: ${name} was called, which this test does not expect`);
  };
  return {
    bytesMoved: 0,
    kinds: new Set<string>(),
    ready: () => [],
    standby: () => [],
    joining: () => [],
    // Members that announced no peer listener: sharded steps go through the coordinator.
    direct: () => false,
    peersCapable: () => false,
    meshBroken: false,
    admit: unexpected('admit'),
    resync: unexpected('resync'),
    park: unexpected('park'),
    waitForWorker: unexpected('waitForWorker'),
    reject: unexpected('reject'),
    requestRows: unexpected('requestRows'),
    fetchState: unexpected('fetchState'),
    requestSlices: unexpected('requestSlices'),
    checksumsAt: unexpected('checksumsAt'),
    broadcastParams: unexpected('broadcastParams'),
    broadcastUpdate: unexpected('broadcastUpdate'),
    close: async () => {},
    ...given,
  };
}

/** The state a hub sends its joiners at `step`: `memory`'s model with every parameter and moment zero. */
export function zeroSnapshot(memory: TrainingMemory, step: number): Snapshot {
  const total = paramLayout(memory.spec).total;
  const zeros = () => new Float32Array(total);
  return { spec: memory.spec, batchSize: memory.batchSize, adam: ADAM_DEFAULTS, step, generation: 0, params: zeros(), m: zeros(), v: zeros() };
}

/** Local slots that compute nothing (--threads 0 with remote replicas): a pass of them resolves with no results. */
export function idleTeam(): Team & { passes: number } {
  return {
    size: 1,
    description: 'no local compute (test)',
    capabilities: { compactRows: false, wholeStep: true, deviceState: false },
    passes: 0,
    async runPass() {
      this.passes++;
      return [];
    },
    close: async () => {},
  };
}
