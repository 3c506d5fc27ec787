/**
 * A coordinator played by the test, over a real ws server on loopback: it runs the handshake with a real
 * `runWorker` (no token) and then sends whatever the test chooses, as a faulty or hostile coordinator would.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { decodeRaw, encode } from '../src/cluster/remote/codec.js';
import { PROTOCOL_VERSION, type StateMessage, type ToWorker } from '../src/cluster/remote/messages.js';
import { makeSpec, paramLayout } from '../src/model/spec.js';
import { ADAM_DEFAULTS } from '../src/optim/adam.js';

export interface FakeCoordinator {
  url: string;
  /** Each worker connection, once it said hello and was welcomed. */
  welcomed: Promise<WebSocket>;
  close(): Promise<void>;
}

/**
 * Listens on loopback; welcomes the first worker with `welcome` merged into the usual fields, after sending
 * `beforeChallenge` if given.
 */
export async function fakeCoordinator(welcome: Partial<Extract<ToWorker, { t: 'welcome' }>> = {}, beforeChallenge?: Buffer): Promise<FakeCoordinator> {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(server, 'listening');
  const welcomed = new Promise<WebSocket>((resolve) => {
    server.on('connection', (ws) => {
      if (beforeChallenge) ws.send(beforeChallenge);
      ws.send(encode({ t: 'challenge', protocol: PROTOCOL_VERSION, nonce: new Uint8Array(32) }));
      ws.once('message', (data) => {
        if (decodeRaw(data as Buffer).t !== 'hello') return;
        ws.send(encode({ t: 'welcome', proof: new Uint8Array(32), workerId: 1, heartbeatMs: 60_000, maxFrameBytes: 8 << 20, ...welcome } as ToWorker));
        resolve(ws);
      });
    });
  });
  return {
    url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`,
    welcomed,
    close: () => {
      for (const ws of server.clients) ws.terminate();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** A valid snapshot of a small model. */
export function smallState(): StateMessage {
  const spec = makeSpec(4, [3], 2, 'relu');
  const total = paramLayout(spec).total;
  return {
    t: 'state',
    spec,
    batchSize: 6,
    adam: ADAM_DEFAULTS,
    step: 0,
    generation: 1,
    params: new Float32Array(total).fill(0.25),
    m: new Float32Array(total),
    v: new Float32Array(total),
    useLocalData: false,
    plan: 'replicated',
  };
}
