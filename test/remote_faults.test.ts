/**
 * Faults on either side that end a process or a connection: a coordinator SIGKILLed and resumed, a worker
 * whose coordinator goes silent, a model too large for a worker's frame limit. (Network cuts:
 * netfaults.test.ts.)
 */
import { afterEach, describe, expect, it } from 'vitest';
import { fork } from 'node:child_process';
import { join } from 'node:path';
import { train } from '../src/index.js';
import { runWorker } from '../src/cluster/remote/client.js';
import { newNonce } from '../src/cluster/remote/auth.js';
import { decodeRaw, encode } from '../src/cluster/remote/codec.js';
import { PROTOCOL_VERSION } from '../src/cluster/remote/messages.js';
import { cli, coordinator, keepChild, killChildren, out, workerProcess } from './remote_helpers.js';
import { freePort, killAtCheckpoint } from './helpers.js';

afterEach(killChildren);

describe('a coordinator that crashes', () => {
  it('SIGKILLed mid-run with --threads 0 and two workers, restarted with --resume alone: the workers reconnect and the run ends on the uninterrupted hash', async () => {
    const config = { trainSamples: 2000, testSamples: 100, epochs: 2, logEvery: 1000 };
    const whole = train({ ...config, threads: 2, out: join(out, 'crash-reference') });
    const runDir = join(out, 'crash');
    const port = await freePort();
    const url = `ws://127.0.0.1:${port}`;
    const args = ['coordinator', '--train-samples', '2000', '--test-samples', '100', '--epochs', '2', '--threads', '0', '--min-workers', '2',
      '--checkpoint-every', '5', '--heartbeat-ms', '500', '--listen', `127.0.0.1:${port}`, '--out', runDir];
    const first = keepChild(fork(cli, args, { stdio: 'ignore' }));
    workerProcess(url, '--max-retries', '0');
    workerProcess(url, '--max-retries', '0');
    const killedAt = await killAtCheckpoint(first, runDir, 10);
    expect(killedAt).toBeLessThan(64);
    await new Promise((resolve) => first.once('exit', resolve));
    const joined: string[] = [];
    const resumed = await train({ resume: runDir, listen: `127.0.0.1:${port}` }, { onEvent: (e) => e.type === 'cluster' && e.event.type === 'joined' && joined.push(e.event.worker) });
    expect(joined.length).toBeGreaterThanOrEqual(1);
    expect(resumed.steps).toBe(64);
    expect(resumed.paramsSha256).toBe((await whole).paramsSha256);
  });
});

describe('a worker whose coordinator goes silent', () => {
  it('says so, terminates the socket and reconnects, after a few heartbeat periods without a ping', async () => {
    const { WebSocketServer } = await import('ws');
    const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise((resolve) => server.once('listening', resolve));
    let connections = 0;
    // A coordinator that welcomes the worker, announces a 100 ms heartbeat, and then never pings: frozen.
    server.on('connection', (ws) => {
      connections++;
      ws.on('message', (data) => {
        if (decodeRaw(data as Buffer).t === 'hello') ws.send(encode({ t: 'welcome', proof: new Uint8Array(0), workerId: connections, heartbeatMs: 100, maxFrameBytes: 8 << 20 }));
      });
      ws.send(encode({ t: 'challenge', protocol: PROTOCOL_VERSION, nonce: newNonce() }));
    });
    const { port } = server.address() as { port: number };
    const reasons: string[] = [];
    const abort = new AbortController();
    const worker = runWorker({
      connect: `ws://127.0.0.1:${port}`,
      signal: abort.signal,
      onEvent: (e) => {
        if (e.type !== 'disconnected') return;
        reasons.push(e.reason);
        if (reasons.length === 2) abort.abort();
      },
    });
    await worker;
    server.close();
    expect(connections).toBeGreaterThanOrEqual(2);
    expect(reasons[0]).toMatch(/^no heartbeat from the coordinator for \d+ ms$/);
    expect(Number(/(\d+) ms/.exec(reasons[0])![1])).toBeGreaterThanOrEqual(300);
  });
});

describe('a model too large for a worker\'s frame limit', () => {
  it('ends the worker with the limit named, instead of reconnecting for ever', async () => {
    const abort = new AbortController();
    const ended = new Promise<string>((resolve) => {
      // --min-workers 1: the worker is sent the state (2.3 MB of parameters, 6.9 MB in all) before step 0.
      void coordinator({ threads: 1, steps: 2, epochs: 1, minWorkers: 1 }, (url) =>
        runWorker({ connect: url, maxFrameBytes: 1 << 20, maxRetries: 5, signal: abort.signal }).then(() => resolve('returned'), (e: Error) => resolve(e.message)),
      );
    });
    expect(await ended).toBe(
      "a frame from the coordinator is larger than this worker's limit of 1 MiB (--max-frame-bytes): its model's state snapshot (12 bytes a parameter) does not fit",
    );
    abort.abort();
  });
});
