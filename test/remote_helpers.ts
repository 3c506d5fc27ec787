/**
 * What the remote tests share: the small run they all make, a coordinator on loopback, reference hashes,
 * `dtrain worker` processes, and a hand-written peer.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { train, type TrainConfig, type TrainEvent } from '../src/index.js';
import type { AdmissionStats } from '../src/cluster/remote/admission.js';
import { newNonce, proof } from '../src/cluster/remote/auth.js';
import { decodeRaw, encode } from '../src/cluster/remote/codec.js';
import { PROTOCOL_VERSION } from '../src/cluster/remote/messages.js';

export const out = mkdtempSync(join(tmpdir(), 'dtrain-remote-'));
let runs = 0;
// 145 samples: 2 full batches and a short one with a 1-row micro-shard, twice.
export const BASE: Partial<TrainConfig> = { trainSamples: 145, testSamples: 100, epochs: 2, logEvery: 1000, heartbeatMs: 500 };

/**
 * A coordinator run; `onReady` gets the ws:// URL once it listens (and its live connection counts),
 * `onEvent` every event, `beforeStep` is awaited before each step.
 */
export async function coordinator(
  config: Partial<TrainConfig>,
  onReady: (url: string, connections: AdmissionStats) => void,
  onEvent: (e: TrainEvent) => void = () => {},
  beforeStep?: (step: number) => Promise<void> | void,
) {
  return train(
    { ...BASE, listen: '127.0.0.1:0', out: join(out, String(runs++)), ...config },
    { onListening: ({ port, connections }) => onReady(`ws://127.0.0.1:${port}`, connections), onEvent, beforeStep },
  );
}

/** paramsSha256 of a run with local threads, computed once (per test file). */
export function referenceHash(config: Partial<TrainConfig>, name: string): () => Promise<string> {
  let hash: Promise<string> | undefined;
  return () => (hash ??= train({ ...BASE, ...config, out: join(out, name) }).then((s) => s.paramsSha256));
}

/** The built CLI (npm test's pretest builds it): what `dtrain worker` and `dtrain coordinator` processes run. */
export const cli = new URL('../dist/src/cli.js', import.meta.url).pathname;
const children: ChildProcess[] = [];

/** A `dtrain worker` process connecting to `url`; killed by killChildren (each file's afterEach). */
export function workerProcess(url: string, ...args: string[]): ChildProcess {
  return keepChild(fork(cli, ['worker', '--connect', url, '--max-retries', '3', ...args], { stdio: 'ignore' }));
}

/** A child process killChildren ends after the test. */
export function keepChild(child: ChildProcess): ChildProcess {
  children.push(child);
  return child;
}

/** SIGKILLs every process workerProcess and keepChild started: call it in afterEach. */
export function killChildren(): void {
  for (const c of children.splice(0)) c.kill('SIGKILL');
}

/** A hand-written peer: authenticates (or not; `hello` overrides fields of its hello) and then does whatever the test wants. */
export function rawPeer(url: string, token: string | undefined, onMessage: (m: Record<string, unknown>, ws: WebSocket) => void, hello: object = {}): WebSocket {
  const ws = new WebSocket(url);
  ws.on('message', (data) => {
    const m = decodeRaw(data as Buffer);
    if (m.t === 'challenge') {
      ws.send(
        encode({
          t: 'hello',
          protocol: PROTOCOL_VERSION,
          mac: token ? proof(token, 'worker', m.nonce as Uint8Array) : new Uint8Array(0),
          nonce: newNonce(),
          engine: 'onnx',
          device: 'cpu',
          backend: 'test peer',
          threads: 1,
          dataSha256: '',
          ...hello,
        }),
      );
      return;
    }
    onMessage(m, ws);
  });
  ws.on('error', () => {});
  return ws;
}

/**
 * A TCP proxy on loopback in front of `target` (HOST:PORT): each of the first `resets` connections is reset
 * (RST both ways) as soon as the dialer sends its first bytes — the listener's challenge went through, the
 * dialer's hello does not: a reset in the middle of a peer link's handshake (as `ss -K` in the chaos round).
 * Later connections pass untouched. `connections`: how many came.
 */
export async function resettingProxy(target: string, resets: number): Promise<{ address: string; connections: () => number; close: () => void }> {
  const port = Number(target.slice(target.lastIndexOf(':') + 1));
  let connections = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const reset = connections++ < resets;
    const upstream = connect({ host: '127.0.0.1', port });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => sockets.delete(s));
    }
    upstream.on('data', (chunk) => client.write(chunk));
    client.on('data', (chunk) => {
      if (!reset) return void upstream.write(chunk);
      client.resetAndDestroy();
      upstream.resetAndDestroy();
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const bound = server.address();
  const close = () => {
    for (const s of sockets) s.destroy();
    server.close();
  };
  return { address: `127.0.0.1:${typeof bound === 'object' && bound ? bound.port : 0}`, connections: () => connections, close };
}
