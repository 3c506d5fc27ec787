import { afterEach, describe, expect, it } from 'vitest';
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { train, type TrainConfig } from '../src/index.js';
import { runWorker } from '../src/cluster/remote/client.js';
import { readMetrics } from '../src/report/metrics.js';
import { newNonce, proof } from '../src/cluster/remote/auth.js';
import { decodeRaw, encode } from '../src/cluster/remote/codec.js';
import { PROTOCOL_VERSION, type RowsDone, type SliceMessage } from '../src/cluster/remote/messages.js';
import { missingRanges } from '../src/cluster/plan.js';
import { BASE, coordinator, out, referenceHash } from './remote_helpers.js';
import { freePort, killAtCheckpoint, smallHub } from './helpers.js';

const cli = new URL('../dist/src/cli.js', import.meta.url).pathname;
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

function workerProcess(url: string, ...args: string[]): ChildProcess {
  const child = fork(cli, ['worker', '--connect', url, '--max-retries', '3', ...args], { stdio: 'ignore' });
  children.push(child);
  return child;
}

const reference = referenceHash({ threads: 2 }, 'reference');
const reference3 = referenceHash({ threads: 2, epochs: 3 }, 'reference3');
const referenceOneEpoch = referenceHash({ threads: 2, epochs: 1 }, 'reference1');

/** Two worker processes started when the coordinator listens; url() gives its address for later ones. */
function twoWorkers() {
  const workers: ChildProcess[] = [];
  let address = '';
  const onReady = (url: string) => {
    address = url;
    workers.push(workerProcess(url), workerProcess(url));
  };
  return { workers, url: () => address, onReady };
}

describe('remote workers on loopback', () => {
  it.each(['replicated', 'sharded', 'server'] as const)('two remote workers and no local threads (--plan %s) end with the same parameters as 2 local threads', async (plan) => {
    const joined: string[] = [];
    const summary = await coordinator(
      { threads: 0, plan },
      (url) => {
        workerProcess(url);
        workerProcess(url);
      },
      (e) => e.type === 'cluster' && e.event.type === 'joined' && joined.push(e.event.worker),
    );
    expect(joined.length).toBeGreaterThanOrEqual(1);
    expect(summary.paramsSha256).toBe(await reference());
  });

  it('gives a worker that got no rows of a step the whole batch in compact form, with the same result', async () => {
    // Three workers and two micro-shards a batch: one of them computes nothing and is sent every row.
    const abort = new AbortController();
    let joined = 0;
    let allJoined = () => {};
    const three = new Promise<void>((resolve) => (allJoined = resolve));
    const summary = await coordinator(
      { threads: 0, microBatch: 32 },
      (url) => {
        for (let i = 0; i < 3; i++) void runWorker({ connect: url, signal: abort.signal });
      },
      (e) => e.type === 'cluster' && e.event.type === 'joined' && ++joined === 3 && allJoined(),
      (step) => (step === 0 ? three : undefined),
    );
    abort.abort();
    // Every step, two of the three computed one micro-shard each and the third was sent all 64 rows.
    const rowsPerStep = readMetrics(summary.outDir!).flatMap((r) => (r.type === 'epoch' ? [Object.values(r.shares).reduce((a, b) => a + b, 0)] : []));
    expect(rowsPerStep).toEqual([145, 145]);
    expect(joined).toBe(3);
    expect(summary.paramsSha256).toBe(await reference());
  });

  it.each(['replicated', 'sharded', 'server'] as const)('keeps the result when a worker is SIGKILLed mid-run and another joins mid-run (--plan %s)', async (plan) => {
    const { workers, url, onReady } = twoWorkers();
    const events: string[] = [];
    let joined = 0;
    let onJoin = () => {};
    const shares: Record<string, number>[] = [];
    const summary = await coordinator(
      { threads: 0, epochs: 3, plan },
      onReady,
      (e) => {
        if (e.type === 'epoch') shares.push(e.shares.rows);
        if (e.type !== 'cluster') return;
        events.push(e.event.type);
        if (e.event.type === 'joined') (joined++, onJoin());
      },
      async (step) => {
        if (step === 2) workers[0].kill('SIGKILL');
        if (step === 4) {
          // Hold the run until the newcomer has joined, so that it really gets work from the next step.
          const third = new Promise<void>((resolve) => (onJoin = () => joined >= 3 && resolve()));
          workers.push(workerProcess(url()));
          await third;
        }
      },
    );
    expect(events).toContain('left');
    expect(joined).toBeGreaterThanOrEqual(3);
    // In the last epoch the survivor and the newcomer shared the rows.
    expect(Object.keys(shares[shares.length - 1]).length).toBe(2);
    expect(summary.paramsSha256).toBe(await reference3());
  });

  it('with --threads 0, a sole worker sends its rows\' losses only; a joiner makes them come whole again (the first is sent the state too), and the result is the same', async () => {
    const abort = new AbortController();
    let address = '';
    let synced = 0;
    let joined = () => {};
    const lost: string[] = [];
    const summary = await coordinator(
      { threads: 0, epochs: 3, minWorkers: 1 },
      (url) => {
        address = url;
        void runWorker({ connect: url, signal: abort.signal, onEvent: (e) => e.type === 'synced' && synced++ });
      },
      (e) => {
        if (e.type !== 'cluster') return;
        if (e.event.type === 'joined') joined();
        if (e.event.type === 'rejected' || (e.event.type === 'left' && e.event.reason !== 'coordinator finished')) lost.push(e.event.type);
      },
      async (step) => {
        if (step !== 4) return;
        // Held until it joined: admitted before step 4, whose rows the first was asked for early.
        const joining = new Promise<void>((resolve) => (joined = resolve));
        void runWorker({ connect: address, signal: abort.signal });
        await joining;
      },
    );
    abort.abort();
    const bytes = readMetrics(summary.outDir!).flatMap((r) => (r.type === 'step' ? [r.bytes] : []));
    // An epoch's last step (2, 5, 8) asks for no next rows early: what it moves is its rows' answer and the
    // update. Alone, 17 losses and the update: well under 4 KB (its 17 rows would be ~70 KB).
    expect(bytes[2]).toBeLessThan(4096);
    // Two: the rows travel again, each worker's to the other.
    expect(bytes[8]).toBeGreaterThan(50_000);
    // It may have applied step 4 from its own rows before the joiner could get them: sent the state again
    // (asked for those rows again instead, it would fail and be dropped).
    expect(synced).toBe(2);
    expect(lost).toEqual([]);
    expect(summary.paramsSha256).toBe(await reference3());
  });

  it('with --threads 0 and --verify 1, a sole worker\'s rows still come whole (they are compared here)', async () => {
    const abort = new AbortController();
    const summary = await coordinator({ threads: 0, epochs: 1, minWorkers: 1, verify: 1 }, (url) => void runWorker({ connect: url, signal: abort.signal }));
    abort.abort();
    const bytes = readMetrics(summary.outDir!).flatMap((r) => (r.type === 'step' ? [r.bytes] : []));
    expect(Math.min(...bytes)).toBeGreaterThan(50_000);
    expect(summary.paramsSha256).toBe(await referenceOneEpoch());
  });

  it('with --threads 0, replays locally when every replica is lost, and a newcomer continues with the same result', async () => {
    const { workers, url, onReady } = twoWorkers();
    const replays: [number, number][] = [];
    const waits: string[] = [];
    const summary = await coordinator(
      { threads: 0, epochs: 3 },
      onReady,
      (e) => {
        if (e.type !== 'cluster') return;
        if (e.event.type === 'replay') replays.push([e.event.from, e.event.to]);
        if (e.event.type === 'waiting') waits.push(e.event.reason);
      },
      async (step) => {
        if (step !== 5) return;
        // Both replicas die; the coordinator last took their state after epoch 1 (step 3), and a newcomer
        // joins while it waits for a worker.
        await Promise.all(workers.map((w) => new Promise((resolve) => (w.once('exit', resolve), w.kill('SIGKILL')))));
        setTimeout(() => workerProcess(url()), 200);
      },
    );
    expect(waits).toContain('step 5: no worker is connected; waiting for one');
    expect(replays).toEqual([[3, 5]]);
    expect(summary.paramsSha256).toBe(await reference3());
  });

  it('with --threads 0, checkpoints hold the replicas\' state: a stopped run resumed on local threads ends the same', async () => {
    const runDir = join(out, 'ckpt-threads0');
    const abort = new AbortController();
    const first = await coordinator({ threads: 0, steps: 4, checkpointEvery: 2, out: runDir }, (url) => void runWorker({ connect: url, signal: abort.signal }));
    abort.abort();
    expect(first.steps).toBe(4);
    const resumed = await train({ resume: runDir, threads: 1, steps: 0 });
    expect(resumed.paramsSha256).toBe(await reference());
    // Sharded among two owners, a checkpoint's state is put together from their shards.
    const shardedDir = join(out, 'ckpt-sharded');
    const two = (url: string) => [0, 1].forEach(() => void runWorker({ connect: url, signal: abort2.signal }));
    const abort2 = new AbortController();
    await coordinator({ threads: 0, plan: 'sharded', minWorkers: 2, steps: 4, checkpointEvery: 2, out: shardedDir }, two);
    abort2.abort();
    expect((await train({ resume: shardedDir, threads: 1, steps: 0 })).paramsSha256).toBe(await reference());
  });

  it('with --threads 0, stops on rows that really are non-finite, naming the micro-shard, and keeps the last good state', async () => {
    const { syntheticDataset } = await import('./helpers.js');
    const dataset = syntheticDataset(96, 16);
    dataset.train.images[(64 + 20) * dataset.features + 3] = NaN;
    const config = { threads: 0, epochs: 1, hidden: [8], trainSamples: 0, testSamples: 0, listen: '127.0.0.1:0' };
    const abort = new AbortController();
    const connect = (port: number) => void runWorker({ connect: `ws://127.0.0.1:${port}`, signal: abort.signal });
    const good = await train({ ...config, steps: 1, out: join(out, 'nan-good') }, { dataset, onListening: ({ port }) => connect(port) });
    const rejected: string[] = [];
    const dir = join(out, 'nan-remote');
    await expect(
      train({ ...config, out: dir }, { dataset, onListening: ({ port }) => connect(port), onEvent: (e) => e.type === 'cluster' && e.event.type === 'rejected' && rejected.push(e.event.reason) }),
    ).rejects.toThrow('step 1: non-finite loss in micro-shard 1 (batch rows 16–31, first at dataset sample 84)');
    abort.abort();
    // The worker told the truth: it stays; and the summary holds the state before the bad step.
    expect(rejected).toEqual([]);
    expect(JSON.parse(readFileSync(join(dir, 'summary.json'), 'utf8')).paramsSha256).toBe(good.paramsSha256);
  });

  it('mixes local threads and a remote worker running 2 threads with the same result, and waits for a worker with --threads 0', async () => {
    const abort = new AbortController();
    const mixed = await coordinator({ threads: 1 }, (url) => void runWorker({ connect: url, threads: 2, signal: abort.signal }));
    abort.abort();
    expect(mixed.paramsSha256).toBe(await reference());
    const waits: string[] = [];
    const late = new AbortController();
    const waited = await coordinator(
      { threads: 0 },
      (url) => setTimeout(() => void runWorker({ connect: url, signal: late.signal }), 300),
      (e) => e.type === 'cluster' && e.event.type === 'waiting' && waits.push(e.event.reason),
    );
    late.abort();
    expect(waits[0]).toBe('step 0: no worker is connected; waiting for one');
    expect(waited.paramsSha256).toBe(await reference());
  });
});

/** A hand-written peer: authenticates (or not; `hello` overrides fields of its hello) and then does whatever the test wants. */
function rawPeer(url: string, token: string | undefined, onMessage: (m: Record<string, unknown>, ws: WebSocket) => void, hello: object = {}): WebSocket {
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

describe('hostile peers', () => {
  const TOKEN = 'correct horse battery staple';

  /** Runs a coordinator with one honest in-process worker and the given hostile peer; returns rejections. */
  async function withHostile(hostile: (url: string) => void, config: Partial<TrainConfig> = {}) {
    const rejections: string[] = [];
    const abort = new AbortController();
    // Step 0 waits until the honest worker and the hostile peer are in (or the peer was turned away):
    // a run of a few milliseconds would otherwise be over before either connects. A peer that neither
    // joins nor is rejected (an oversize frame is refused by ws itself) is given a second.
    let joined = 0;
    let waited = false;
    let settle = () => {};
    const settled = new Promise<void>((resolve) => {
      settle = () => joined >= 1 && (joined >= 2 || rejections.length > 0 || waited) && resolve();
      setTimeout(() => ((waited = true), settle()), 1000);
    });
    const summary = await coordinator(
      { threads: 1, token: TOKEN, ...config },
      (url) => {
        hostile(url);
        setTimeout(() => void runWorker({ connect: url, token: TOKEN, signal: abort.signal }), 50);
      },
      (e) => {
        if (e.type !== 'cluster') return;
        if (e.event.type === 'rejected') rejections.push(e.event.reason);
        if (e.event.type === 'joined') joined++;
        settle();
      },
      (step) => (step === 0 ? settled : undefined),
    );
    abort.abort();
    return { summary, rejections };
  }

  it.each([
    ['a wrong token', (url: string) => void rawPeer(url, 'wrong', () => {}), 'authentication failed: wrong or missing token'],
    ['no token', (url: string) => void rawPeer(url, undefined, () => {}), 'authentication failed: wrong or missing token'],
    [
      'random bytes',
      (url: string) => {
        const ws = new WebSocket(url);
        ws.on('open', () => ws.send(Buffer.from([0xc1, 0xff, 0x00, 0x13, 0x37])));
        ws.on('error', () => {});
      },
      /^undecodable frame|^a message must be a msgpack map/,
    ],
    [
      'a state it was not asked for',
      (url: string) =>
        void rawPeer(url, TOKEN, (m, ws) => {
          if (m.t !== 'welcome') return;
          const none = new Float32Array(0);
          ws.send(encode({ t: 'replicaState', step: 0, params: none, m: none, v: none }));
        }),
      /^replicaState: the state of step 0 was not asked for \(expected none\)$/,
    ],
    [
      // msgpackr quotes what it read: 120 characters of this reason are 174 bytes of UTF-8, more than a
      // close frame holds, and ws threw out of the message handler, ending the coordinator's process.
      'a frame whose reason is long in UTF-8',
      (url: string) => {
        const ws = new WebSocket(url);
        ws.on('open', () => ws.send(encode({ t: 'é'.repeat(60) } as never)));
        ws.on('error', () => {});
      },
      /^unknown message type "é{60}/,
    ],
    [
      'a text frame',
      (url: string) => {
        const ws = new WebSocket(url);
        ws.on('open', () => ws.send('hello'));
        ws.on('error', () => {});
      },
      'text frames are not part of the protocol',
    ],
    [
      'a worker on another device',
      (url: string) => void rawPeer(url, TOKEN, () => {}, { device: 'webgpu', backend: 'onnx (webgpu on test)' }),
      /^mixed devices: the run computes on onnx\/cpu, the worker on onnx\/webgpu, .* --allow-mixed-devices /,
    ],
  ])('rejects %s with a reason and trains on unharmed', async (_, hostile, reason) => {
    const { summary, rejections } = await withHostile(hostile);
    expect(rejections).toEqual([expect.stringMatching(reason)]);
    expect(summary.paramsSha256).toBe(await reference2());
  });

  it('refuses a frame above the size limit in ws itself', async () => {
    let closeCode = 0;
    const { summary } = await withHostile((url) =>
      rawPeer(url, TOKEN, (m, ws) => {
        if (m.t !== 'welcome') return;
        ws.on('close', (code) => (closeCode = code));
        ws.send(Buffer.alloc(16 << 20));
      }),
    );
    expect(closeCode).toBe(1009);
    expect(summary.paramsSha256).toBe(await reference2());
  });

  it('cuts off a stranger that sends more than 64 KiB before authenticating', async () => {
    const closed: [number, string][] = [];
    const { summary, rejections } = await withHostile((url) => {
      const ws = new WebSocket(url);
      ws.on('open', () => ws.send(Buffer.alloc(1 << 20)));
      ws.on('close', (code, reason) => closed.push([code, String(reason)]));
      ws.on('error', () => {});
    });
    expect(rejections).toEqual(['sent more than 65536 bytes before authenticating']);
    expect(closed).toEqual([[1008, 'sent more than 65536 bytes before authenticating']]);
    expect(summary.paramsSha256).toBe(await reference2());
  });

  it.each([
    ['a wrong shape', (m: Record<string, unknown>) => ({ hidden: [new Uint8Array(12)] }), /^rowsDone: field "hidden" must be a list of 4 arrays/],
    ['NaN values', (m: Record<string, unknown>) => ({ nan: true }), /^rowsDone: rowLoss contains a non-finite value at index 0/],
    // An old step's answer replayed (or, asked at step 0, the next step's): either way, not the step asked for.
    ['a replayed old step', (m: Record<string, unknown>) => ({ step: (m.step as number) > 0 ? (m.step as number) - 1 : 1 }), /^rowsDone: step \d+ was not asked for \(expected \d+\): stale or replayed/],
  ])('rejects a worker that answers with %s, and redoes its rows', async (_, tamper, reason) => {
    let asked = 0;
    const { summary, rejections } = await withHostile((url) =>
      rawPeer(url, TOKEN, (m, ws) => {
        if (m.t !== 'rows') return;
        asked++;
        const range = m.range as [number, number];
        const rows = range[1] - range[0];
        const sizes = [512, 256, 128, 64, 10];
        const t = tamper(m) as Record<string, unknown>;
        const rowLoss = new Float32Array(rows).fill(t.nan ? NaN : 0.5);
        ws.send(
          encode({
            t: 'rowsDone',
            step: (t.step as number | undefined) ?? (m.step as number),
            range,
            rowLoss,
            hidden: (t.hidden as Float32Array[]) ?? sizes.slice(0, -1).map((n) => new Float32Array(rows * n)),
            deltas: sizes.map((n) => new Float32Array(rows * n)),
            ms: 1,
          } as never),
        );
      }),
    );
    expect(asked).toBeGreaterThanOrEqual(1);
    expect(rejections).toEqual([expect.stringMatching(reason)]);
    expect(summary.paramsSha256).toBe(await reference2());
  });

  it('drops a worker that never answers after the step deadline, and redoes its rows', async () => {
    const { summary, rejections } = await withHostile((url) => rawPeer(url, TOKEN, () => {}), { stepTimeoutMs: 400 });
    expect(rejections).toEqual([expect.stringMatching(/^did not answer step \d+ within 400 ms$/)]);
    expect(summary.paramsSha256).toBe(await reference2());
  });
});

const reference2 = referenceHash({ threads: 1 }, 'reference2');

describe('the coordinator survives its own handlers failing', () => {
  /** How to make one connection handler of the hub throw, and how a peer then sets it off. */
  const FAULTS: [string, (hub: Record<string, any>) => void, (ws: WebSocket) => void][] = [
    ['message', (hub) => (hub.receive = boom()), (ws) => ws.send(Buffer.from([0x80]))],
    ['pong', (hub) => (hub.heartbeat.heard = boom()), (ws) => ws.pong()],
    ['close', (hub) => (hub.drop = boomOnce(hub.drop.bind(hub))), (ws) => ws.close(1000, 'bye')],
  ];
  function boom() {
    return () => {
      throw new Error('boom');
    };
  }
  /** Throws the first time only: the guard's own clean-up goes through the same method. */
  function boomOnce(original: (...args: unknown[]) => void) {
    let thrown = false;
    return (...args: unknown[]) => {
      if (thrown) return original(...args);
      thrown = true;
      throw new Error('boom');
    };
  }

  it.each(FAULTS)('drops a peer whose %s handler throws, with the reason, and keeps accepting others', async (what, breakIt, setOff) => {
    const events: string[] = [];
    const { hub, port } = await smallHub({}, (e) => events.push(`${e.type}: ${'reason' in e ? e.reason : ''}`));
    breakIt(hub as unknown as Record<string, any>);
    const first = rawPeer(`ws://127.0.0.1:${port}`, undefined, () => {});
    const closed = new Promise<void>((resolve) => first.on('close', () => resolve()));
    first.on('open', () => setOff(first));
    await closed;
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(events).toContain(`rejected: internal error in its ${what} handler: boom`);
    const second = new WebSocket(`ws://127.0.0.1:${port}`);
    second.on('error', () => {});
    const challenge = await new Promise((resolve) => second.on('message', (d) => resolve(decodeRaw(d as Buffer).t)));
    expect(challenge).toBe('challenge');
    second.close();
    await hub.close();
  });
});

describe('the epoch-end replica checksum round', () => {
  it('waits for a peer that never answers no longer than the step deadline (--step-timeout-ms)', async () => {
    const { Scheduler } = await import('../src/cluster/scheduler.js');
    const stepTimeoutMs = 300;
    let joined = 0;
    let bothJoined = () => {};
    const ready = new Promise<void>((resolve) => (bothJoined = resolve));
    const { hub, port, memory } = await smallHub({ stepTimeoutMs, heartbeatMs: 10_000 }, (e) => e.type === 'joined' && ++joined === 2 && bothJoined());
    const url = `ws://127.0.0.1:${port}`;
    const sha256 = 'ab'.repeat(32);
    const honest = rawPeer(url, undefined, (m, ws) => m.t === 'check' && ws.send(encode({ t: 'checksum', step: m.step as number, sha256 })));
    const silent = rawPeer(url, undefined, () => {});
    try {
      await ready;
      hub.admit({ step: 7 } as never);
      expect(hub.ready()).toHaveLength(2);
      let start = performance.now();
      const answers = await hub.checksumsAt(7);
      const waited = performance.now() - start;
      expect([...answers.values()]).toEqual([sha256]);
      expect(waited).toBeGreaterThanOrEqual(stepTimeoutMs - 10);
      expect(waited).toBeLessThan(stepTimeoutMs + 1000);
      // The scheduler's round at an epoch's end waits the same deadline, and keeps the late peer.
      const scheduler = new Scheduler(memory, { capabilities: { compactRows: false } } as never, 'split', hub, () => {});
      start = performance.now();
      expect(await scheduler.verifyReplicas(7, sha256)).toEqual([]);
      expect(performance.now() - start).toBeLessThan(stepTimeoutMs + 1000);
      expect(hub.ready()).toHaveLength(2);
    } finally {
      honest.close();
      silent.close();
      await hub.close();
    }
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

describe('mixed devices', () => {
  it('with --allow-mixed-devices, take a worker on another engine and say so in summary.json', async () => {
    const abort = new AbortController();
    const joined: string[] = [];
    const config = { threads: 0, allowMixedDevices: true, epochs: 1, hidden: [16] };
    const summary = await coordinator(
      config,
      (url) => void runWorker({ connect: url, engine: 'tfjs', signal: abort.signal }),
      (e) => e.type === 'cluster' && e.event.type === 'joined' && joined.push(e.event.backend),
    );
    abort.abort();
    expect(joined).toEqual(['tfjs (cpu)']);
    expect([summary.devices, summary.mixedDevices]).toEqual([['onnx/cpu', 'tfjs/cpu'], true]);
    const alone = await train({ ...BASE, ...config, allowMixedDevices: false, threads: 1, listen: null, out: join(out, 'unmixed') });
    expect([alone.devices, alone.mixedDevices]).toEqual([['onnx/cpu'], false]);
  });
});

describe('a worker with its own copy of the data', () => {
  it('gets row indices instead of pixels when its copy matches, pixels when it does not, with the same result', async () => {
    const { loadDataset } = await import('../src/data/datasets.js');
    const { syntheticDataset } = await import('./helpers.js');
    const perStep: number[] = [];
    for (const dataset of [loadDataset(), syntheticDataset(10, 10, 784, 10)]) {
      const abort = new AbortController();
      const summary = await coordinator({ threads: 0 }, (url) => void runWorker({ connect: url, dataset, signal: abort.signal }));
      abort.abort();
      expect(summary.paramsSha256).toBe(await reference());
      // Wire bytes a step, after the first (which carries the state snapshot).
      const steps = readMetrics(summary.outDir!).filter((r) => r.type === 'step').slice(1);
      perStep.push(steps.reduce((n, r) => n + (r.type === 'step' ? r.bytes : 0), 0) / steps.length);
    }
    // The pixels of a step's ~48 rows are ~150 kB; a matching copy saves them.
    expect(perStep[1] - perStep[0]).toBeGreaterThan(100_000);
  });
  it('computes the right rows on 2 worker threads from its own copy, beside a coordinator with 0 and with 2 threads', async () => {
    const { loadDataset } = await import('../src/data/datasets.js');
    const dataset = loadDataset();
    for (const threads of [0, 2]) {
      const abort = new AbortController();
      const summary = await coordinator({ threads }, (url) => void runWorker({ connect: url, dataset, threads: 2, signal: abort.signal }));
      abort.abort();
      expect(summary.paramsSha256, `coordinator --threads ${threads}`).toBe(await reference());
    }
  });
});

describe('the sharded plan (--plan sharded)', () => {
  /** In-process workers with their hooks; `units` counts the sharded steps' units each started. */
  function workersOf(count: number, options: Partial<Parameters<typeof runWorker>[0]> = {}) {
    const abort = new AbortController();
    const units: number[] = Array.from({ length: count }, () => 0);
    const start = (url: string, i: number, extra: Partial<Parameters<typeof runWorker>[0]> = {}) =>
      void runWorker({ connect: url, signal: abort.signal, onUnits: () => units[i]++, ...options, ...extra });
    return { abort, units, start };
  }

  it('ends on the threads-only hash with 2, 3 and 4 remote workers, and with 2 worker threads each on their own copy of the data', async () => {
    const { loadDataset } = await import('../src/data/datasets.js');
    const dataset = loadDataset();
    for (const [count, extra] of [[2, {}], [3, {}], [4, {}], [2, { threads: 2, dataset }]] as const) {
      const { abort, units, start } = workersOf(count, extra);
      const summary = await coordinator({ threads: 0, plan: 'sharded', minWorkers: count }, (url) => {
        for (let i = 0; i < count; i++) start(url, i);
      });
      abort.abort();
      expect(summary.paramsSha256, `${count} workers ${JSON.stringify(Object.keys(extra))}`).toBe(await reference());
      // Every step was sharded among all of them: each started its units of each of the 6 steps.
      expect(units).toEqual(Array.from({ length: count }, () => 6));
    }
  });

  it('redoes the steps of an owner that stops in the middle of its units (replayed here), and ends on the same hash', async () => {
    const { abort, start } = workersOf(3);
    const quitter = new AbortController();
    const events: string[] = [];
    const summary = await coordinator(
      { threads: 0, plan: 'sharded', minWorkers: 3 },
      (url) => {
        start(url, 0);
        start(url, 1);
        start(url, 2, { signal: quitter.signal, onUnits: (step) => step === 4 && quitter.abort() });
      },
      (e) => e.type === 'cluster' && events.push(e.event.type),
    );
    abort.abort();
    expect(events).toContain('left');
    expect(events).toContain('replay');
    expect(summary.paramsSha256).toBe(await reference());
  });

  it('shares the units anew when a worker joins mid-run, and ends on the same hash', async () => {
    const { abort, units, start } = workersOf(3);
    let address = '';
    let joined = 0;
    let third = () => {};
    const summary = await coordinator(
      { threads: 0, plan: 'sharded', minWorkers: 2 },
      (url) => {
        address = url;
        start(url, 0);
        start(url, 1);
      },
      (e) => e.type === 'cluster' && e.event.type === 'joined' && ++joined === 3 && third(),
      async (step) => {
        if (step !== 4) return;
        const joinedNow = new Promise<void>((resolve) => (third = resolve));
        start(address, 2);
        await joinedNow;
      },
    );
    abort.abort();
    expect(units[2]).toBeGreaterThan(0);
    expect(units[0]).toBe(6);
    expect(summary.paramsSha256).toBe(await reference());
  });
});

describe('the server plan (--plan server)', () => {
  it('ends on the threads-only hash with 1, 3 and 4 remote workers, 2 worker threads each on their own copy of the data, and 2 coordinator threads, the weight pass here and the parameters sent back', async () => {
    const { loadDataset } = await import('../src/data/datasets.js');
    const dataset = loadDataset();
    // The last: the coordinator's two threads share the weight pass (and compute no rows).
    const runs = [[1, {}, 0], [3, {}, 0], [4, {}, 0], [2, { threads: 2, dataset }, 0], [2, {}, 2]] as const;
    for (const [count, extra, threads] of runs) {
      const abort = new AbortController();
      const steps: number[] = Array.from({ length: count }, () => 0);
      const shares: Record<string, number>[] = [];
      const summary = await coordinator({ threads, plan: 'server', minWorkers: count }, (url) => {
        for (let i = 0; i < count; i++) {
          void runWorker({
            connect: url,
            signal: abort.signal,
            ...extra,
            onEvent: (e) => e.type === 'step' && steps[i]++,
          });
        }
      }, (e) => e.type === 'epoch' && shares.push(e.shares.rows));
      abort.abort();
      const label = `${count} workers ${JSON.stringify(Object.keys(extra))}, ${threads} coordinator threads`;
      expect(shares.flatMap((s) => Object.keys(s)).filter((who) => !who.startsWith('worker')), label).toEqual([]);
      expect(summary.paramsSha256, label).toBe(await reference());
      expect(summary.plan, label).toBe('server');
      // Every worker committed the coordinator's parameters of each of the 6 steps.
      expect(steps, label).toEqual(Array.from({ length: count }, () => 6));
    }
  });
});

describe('the server plan asks for the next rows early', () => {
  it('sends step s+1\'s rows request with step s\'s parameters, before step s+1 begins, so the workers compute while the coordinator moves on', async () => {
    const abort = new AbortController();
    const answered = new Set<number>();
    let early = 0;
    const summary = await coordinator(
      { threads: 0, plan: 'server', minWorkers: 1, epochs: 1 },
      (url) => void runWorker({ connect: url, signal: abort.signal, tamperRows: (rows) => (answered.add(rows.step), rows) }),
      () => {},
      async (step) => {
        if (step === 0) return;
        // The coordinator waits here before step `step`: only a request sent early can be answered meanwhile.
        for (let waited = 0; waited < 2000 && !answered.has(step); waited += 10) await new Promise((r) => setTimeout(r, 10));
        if (answered.has(step)) early++;
      },
    );
    abort.abort();
    // Steps 1 and 2 of the epoch's 3 (the next batch of the last is not known before the epoch ends).
    expect(early).toBe(2);
    expect(summary.paramsSha256).toBe(await referenceOneEpoch());
  });
});

describe('--plan auto', () => {
  const reference7 = referenceHash({ threads: 2, epochs: 7 }, 'reference7');
  const reference8 = referenceHash({ threads: 2, epochs: 8 }, 'reference8');
  const reference11 = referenceHash({ threads: 2, epochs: 11 }, 'reference11');
  const reference12 = referenceHash({ threads: 2, epochs: 12 }, 'reference12');

  it('estimates the step of the plan a run takes within a factor of 3 of the measured one (a tiny configuration)', async () => {
    const abort = new AbortController();
    const summary = await coordinator({ threads: 0, epochs: 7, minWorkers: 2, plan: 'replicated' }, (url) => {
      for (let i = 0; i < 2; i++) void runWorker({ connect: url, signal: abort.signal });
    });
    abort.abort();
    const [first, judged] = summary.plans;
    expect([first.plan, first.reason]).toEqual(['replicated', 'as asked (--plan)']);
    // The byte's cost is calibrated from steps 2–13, and the estimate is checked against those same steps as
    // metrics.jsonl timed them: a later window can run at another speed when other test files load the machine
    // (one ran 4.6× faster than the steps before it in CI), which no estimate made before it can know.
    expect(judged.step).toBe(14);
    const estimate = judged.estimates.find((e) => e.plan === judged.plan)!.ms;
    const steps = readMetrics(summary.outDir!).flatMap((r) => (r.type === 'step' && r.step > 2 && r.step <= 14 ? [r.ms] : []));
    const measured = steps.sort((x, y) => x - y)[steps.length >> 1];
    expect(measured / estimate).toBeGreaterThan(1 / 3);
    expect(measured / estimate).toBeLessThan(3);
    expect(summary.paramsSha256).toBe(await reference7());
  });

  it('tries every row on one worker once the plan is judged, keeps what measured faster, and ends on the same result', async () => {
    const abort = new AbortController();
    const shares: Record<string, number>[] = [];
    const summary = await coordinator(
      { threads: 0, epochs: 11, minWorkers: 2 },
      (url) => {
        for (let i = 0; i < 2; i++) void runWorker({ connect: url, signal: abort.signal });
      },
      (e) => e.type === 'epoch' && shares.push(e.shares.rows),
    );
    abort.abort();
    expect(summary.plans.find((c) => c.rowsOnOne)?.reason).toBe('trial: every row of a step on the fastest worker, the others on standby');
    const trial = summary.plans.find((c) => c.reason.startsWith('measured: rows on one'))!;
    expect(trial.reason).toMatch(/^measured: rows on one worker [\d.]+ ms a step, shared [\d.]+ ms: (on one|shared)$/);
    // Steps 18–20 are in the trial: one worker computed every row of that epoch.
    expect(Object.keys(shares[6])).toHaveLength(1);
    expect(summary.paramsSha256).toBe(await reference11());
  });

  /** Blocks this process (the coordinator and the in-process workers alike) for `ms`: a worker slow in earnest. */
  const stall = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
  /** Reports its rows twice as slow as they were: the other worker is then the fastest, and gets most rows. */
  const slower = (rows: RowsDone): RowsDone => ({ ...rows, ms: rows.ms * 2 + 1 });

  it('keeps every row on one worker when the others slow the shared steps: they stand by and apply nothing, and when the one computing leaves they are sent the replayed state', async () => {
    const abort = new AbortController();
    const leader = new AbortController();
    const applied = [0, 0];
    const synced = [0, 0];
    const events: string[] = [];
    const count = (i: number) => (e: { type: string }) => {
      if (e.type === 'step') applied[i]++;
      if (e.type === 'synced') synced[i]++;
    };
    const summary = await coordinator(
      { threads: 0, epochs: 12, minWorkers: 2 },
      (url) => {
        void runWorker({ connect: url, signal: leader.signal, onEvent: (e) => (count(0)(e), e.type === 'step' && e.step === 31 && leader.abort()) });
        // Each time it computes rows it holds every step that waits on them by 20 ms.
        void runWorker({ connect: url, signal: abort.signal, onEvent: count(1), tamperRows: (rows) => (stall(20), slower(rows)) });
      },
      (e) => e.type === 'cluster' && events.push(e.event.type === 'plan' ? `plan ${e.event.step}` : e.event.type),
      (step) => {
        // From the trial on (step 14; step 13 may still be applied then) until the one computing leaves, the slow worker applies no step.
        if (step === 16) applied[1] = 0;
        if (step === 31) expect(applied[1]).toBe(0);
      },
    );
    abort.abort();
    const kept = summary.plans.find((c) => c.reason.startsWith('measured: rows on one'))!;
    expect(kept.reason).toMatch(/: on one$/);
    expect(kept.rowsOnOne).toBe(true);
    // It was sent the state at its admission and again after the other left, from a replay here.
    expect(synced[1]).toBe(2);
    expect(events).toContain('left');
    expect(events).toContain('replay');
    expect(summary.paramsSha256).toBe(await reference12());
  });

  it('sends the state again to the workers set aside when every row on one worker measured slower, and shares the rows again', async () => {
    const abort = new AbortController();
    const synced = [0, 0];
    const shares: Record<string, number>[] = [];
    const summary = await coordinator(
      { threads: 0, epochs: 11, minWorkers: 2 },
      (url) => {
        // Slow only when asked for a whole batch of 64 rows: only in the trial, whichever worker it runs on.
        const slowAlone = (rows: RowsDone) => (rows.range[1] - rows.range[0] >= 64 && stall(20), rows);
        for (let i = 0; i < 2; i++) void runWorker({ connect: url, signal: abort.signal, tamperRows: slowAlone, onEvent: (e) => e.type === 'synced' && synced[i]++ });
      },
      (e) => e.type === 'epoch' && shares.push(e.shares.rows),
    );
    abort.abort();
    const lost = summary.plans.find((c) => c.reason.startsWith('measured: rows on one'))!;
    expect(lost.reason).toMatch(/: shared$/);
    // The one set aside was sent the state again; the other only at its admission.
    expect(synced.sort()).toEqual([1, 2]);
    // No new trial after it: the last epochs' rows are shared.
    expect(summary.plans.filter((c) => c.rowsOnOne)).toHaveLength(1);
    expect(Object.keys(shares[shares.length - 1])).toHaveLength(2);
    expect(summary.paramsSha256).toBe(await reference11());
  });

  it('changes plan by the cost model, and plans again after a join and a death, without changing the result', async () => {
    // Workers that report their rows as slow make compute look dear and bytes cheap: the model then shards
    // (the coordinator, not measured yet, is assumed as slow as they are).
    const slow = (rows: RowsDone): RowsDone => ({ ...rows, ms: 1000 });
    const abort = new AbortController();
    const quitter = new AbortController();
    let address = '';
    const plans: string[] = [];
    const events: string[] = [];
    const summary = await coordinator(
      { threads: 0, epochs: 8, minWorkers: 2 },
      (url) => {
        address = url;
        void runWorker({ connect: url, signal: abort.signal, tamperRows: slow });
        void runWorker({ connect: url, signal: quitter.signal, tamperRows: slow, onUnits: (step) => step === 21 && quitter.abort() });
      },
      (e) => {
        if (e.type !== 'cluster') return;
        events.push(e.event.type);
        if (e.event.type === 'plan') plans.push(`${e.event.step}: ${e.event.plan}`);
      },
      (step) => {
        if (step === 17) void runWorker({ connect: address, signal: abort.signal, tamperRows: slow });
      },
    );
    abort.abort();
    console.log(JSON.stringify(summary.plans, null, 1));
    expect(plans[0]).toBe('0: replicated');
    expect(plans[1]).toBe('14: sharded');
    expect(events.filter((e) => e === 'joined')).toHaveLength(3);
    expect(events).toContain('left');
    expect(events).toContain('replay');
    const choices = summary.plans;
    expect(choices[1].estimates.map((e) => e.plan)).toEqual(['sharded', 'server', 'replicated']);
    expect(choices[1].measuredMs).toBeGreaterThan(0);
    // The owner's death made the coordinator replay, which measured its own weight pass: far faster than the
    // workers claim their rows are, so the parameter server is now the cheapest plan.
    const last = choices[choices.length - 1];
    expect([last.plan, last.reason, last.estimates[0].plan]).toEqual(['server', 'the cost model, as the workers changed', 'server']);
    expect(summary.plan).toBe('server');
    expect(summary.paramsSha256).toBe(await reference8());
  });
});

describe('rows a replica still lacks', () => {
  it('are the parts of the batch that its own and the forwarded rows do not cover', () => {
    expect(missingRanges(64, [])).toEqual([[0, 64]]);
    expect(missingRanges(64, [[16, 32]])).toEqual([[0, 16], [32, 64]]);
    expect(missingRanges(64, [[32, 64], [0, 32]])).toEqual([]);
    expect(missingRanges(64, [[0, 16], [8, 24], [40, 48]])).toEqual([[24, 40], [48, 64]]);
  });
});

/**
 * A replica of a 4→3→2 model at step 5 whose steps come by `plan`, the parameters every slice of its tests
 * carries (1, 2, 3, …), and slice(units): those units of them, packed.
 */
async function replicaOf(plan: 'sharded' | 'server') {
  const { Replica } = await import('../src/cluster/remote/replica.js');
  const { makeSpec, paramLayout } = await import('../src/model/spec.js');
  const { packSlice } = await import('../src/cluster/unit_slices.js');
  const spec = makeSpec(4, [3], 2, 'sigmoid');
  const total = paramLayout(spec).total;
  const zeros = () => new Float32Array(total);
  const { ADAM_DEFAULTS: adam } = await import('../src/optim/adam.js');
  const state = { t: 'state', spec, batchSize: 4, adam, step: 5, generation: 0, params: zeros(), m: zeros(), v: zeros(), useLocalData: false, plan } as const;
  const replica = await Replica.create(state, { threads: 1, engine: 'onnx', device: 'cpu', allowSoftwareGpu: false });
  const next = Float32Array.from({ length: total }, (_, i) => i + 1);
  const slice = (units: [number, number][]) => ({ t: 'slice' as const, step: 5, units, params: packSlice(spec, next, units) });
  return { replica, next, slice };
}

describe('a replica of a sharded run', () => {
  it('places other owners\' slices, refuses one that overlaps units already covered, and commits only once every unit is', async () => {
    const { replica, slice } = await replicaOf('sharded');
    expect(replica.slice(slice([[0, 2], [0, 1]]))).toBe(false);
    expect(() => replica.slice(slice([[1, 3], [1, 2]]))).toThrow('slice: units 1–2 of layer 0 overlap units 0–1 already applied at step 5');
    // Every unit covered by slices, but its own units never applied: no commit.
    expect(replica.slice(slice([[2, 3], [1, 2]]))).toBe(false);
    expect(replica.step).toBe(5);
    await replica.close();
  });
});

describe('a replica of a server plan', () => {
  it('commits the coordinator\'s parameters of every unit without applying the step, and refuses updates and snapshots', async () => {
    const { replica, next, slice } = await replicaOf('server');
    await expect(replica.update({ t: 'update', step: 5, batch: 4, parts: [] })).rejects.toThrow('update: a whole step sent to a replica whose state said its steps come server');
    await expect(replica.stateAt(5)).rejects.toThrow('snapshot: this replica only mirrors the parameters (server plan)');
    // Not every unit yet: no commit.
    expect(replica.slice(slice([[0, 2], [0, 2]]))).toBe(false);
    expect(replica.slice(slice([[2, 3], [0, 0]]))).toBe(true);
    expect(replica.step).toBe(6);
    expect(replica.state.params).toEqual(next);
    await replica.close();
  });
});

describe('TLS', () => {
  const TLS_TOKEN = 'a token of 16+ bytes';

  it('warns, once and in one line, when it listens beyond loopback without TLS', async () => {
    const warnings: string[] = [];
    await train({ ...BASE, threads: 1, steps: 1, listen: '0.0.0.0:0', token: TLS_TOKEN, out: join(out, 'plaintext') }, { onEvent: (e) => e.type === 'warning' && warnings.push(e.message) });
    expect(warnings).toEqual([expect.stringMatching(/^--listen 0\.0\.0\.0:0 reaches beyond loopback without TLS: .*rows and parameters travel in clear/)]);
  });

  it('serves wss:// that a worker trusting the certificate joins, and a worker without it cannot', async () => {
    const { execFileSync } = await import('node:child_process');
    const dir = mkdtempSync(join(tmpdir(), 'dtrain-tls-'));
    const cert = join(dir, 'cert.pem');
    const key = join(dir, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert,
      '-days', '2', '-subj', '/CN=dtrain test', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    const abort = new AbortController();
    const untrusted: string[] = [];
    const summary = await train(
      { ...BASE, threads: 0, listen: '127.0.0.1:0', tlsCert: cert, tlsKey: key, token: TLS_TOKEN, out: join(out, 'tls') },
      {
        onListening: ({ port }) => {
          const url = `wss://127.0.0.1:${port}`;
          void runWorker({ connect: url, token: TLS_TOKEN, maxRetries: 1, onEvent: (e) => e.type === 'error' && untrusted.push(e.message) }).catch(() => {});
          void runWorker({ connect: url, token: TLS_TOKEN, ca: cert, signal: abort.signal });
        },
      },
    );
    abort.abort();
    expect(summary.paramsSha256).toBe(await reference());
    expect(untrusted.join('\n')).toMatch(/self-signed certificate/);
  });
});

describe('--min-workers', () => {
  it('holds step 0 until that many remote workers joined, and ends with the same parameters', async () => {
    const order: string[] = [];
    const summary = await coordinator(
      { threads: 0, minWorkers: 2 },
      (url) => {
        workerProcess(url);
        setTimeout(() => workerProcess(url), 300);
      },
      (e) => (e.type === 'cluster' && e.event.type === 'joined' ? order.push('joined') : e.type === 'step' && order.push('step')),
    );
    expect(order.slice(0, 3)).toEqual(['joined', 'joined', 'step']);
    expect(summary.paramsSha256).toBe(await reference());
  });

  it('fails after --join-timeout-ms naming how many workers are missing', async () => {
    await expect(coordinator({ threads: 1, minWorkers: 2, joinTimeoutMs: 300 }, () => {})).rejects.toThrow(
      '2 of 2 remote workers missing after 300 ms (--min-workers 2): start them with dtrain worker --connect, or raise --join-timeout-ms',
    );
  });

  it('names the ranks of a launched job that have not joined (each worker says its rank in its hello)', async () => {
    const abort = new AbortController();
    const run = train(
      { ...BASE, threads: 1, listen: '127.0.0.1:0', minWorkers: 3, joinTimeoutMs: 1500, out: join(out, 'ranks-missing') },
      { expectedRanks: [1, 2, 3], onListening: ({ port }) => void runWorker({ connect: `ws://127.0.0.1:${port}`, rank: 2, signal: abort.signal }) },
    );
    await expect(run).rejects.toThrow(
      '2 of 3 remote workers missing after 1500 ms (--min-workers 3): ranks 1, 3 have not joined; see their output, or raise --join-timeout-ms',
    );
    abort.abort();
  });

  it('gives up reconnecting once no connection has come for retryForMs (a launched rank whose rank 0 is gone)', async () => {
    await expect(runWorker({ connect: 'ws://127.0.0.1:9', retryForMs: 400 })).rejects.toThrow(/^gave up after \d+ ms without a connection to ws:\/\/127\.0\.0\.1:9 \(last: /);
  });
});

describe('a coordinator that crashes', () => {
  it('SIGKILLed mid-run with --threads 0 and two workers, restarted with --resume alone: the workers reconnect and the run ends on the uninterrupted hash', async () => {
    const config = { trainSamples: 2000, testSamples: 100, epochs: 2, logEvery: 1000 };
    const whole = train({ ...config, threads: 2, out: join(out, 'crash-reference') });
    const runDir = join(out, 'crash');
    const port = await freePort();
    const url = `ws://127.0.0.1:${port}`;
    const args = ['coordinator', '--train-samples', '2000', '--test-samples', '100', '--epochs', '2', '--threads', '0', '--min-workers', '2',
      '--checkpoint-every', '5', '--heartbeat-ms', '500', '--listen', `127.0.0.1:${port}`, '--out', runDir];
    const first = fork(cli, args, { stdio: 'ignore' });
    children.push(first);
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

describe('--verify', () => {
  /** Rows a little wrong but finite: one activation of each answer moved by 1e-3. */
  const tamper = (rows: RowsDone): RowsDone => ({ ...rows, hidden: rows.hidden.map((h, l) => (l === 0 ? h.map((v, i) => (i === 0 ? v + 1e-3 : v)) : h)) });

  /**
   * A run with one honest and one tampering in-process worker (which reconnects after each rejection, as
   * `dtrain worker` does); returns the rejections and every id the liar was given.
   */
  async function withLiar(config: Partial<TrainConfig>) {
    const rejections: string[] = [];
    const left: string[] = [];
    const abort = new AbortController();
    const liar: number[] = [];
    const summary = await coordinator(
      { minWorkers: 2, ...config },
      (url) => {
        void runWorker({ connect: url, signal: abort.signal });
        void runWorker({ connect: url, signal: abort.signal, tamperRows: tamper, onEvent: (e) => e.type === 'connected' && liar.push(e.workerId) });
      },
      (e) => {
        if (e.type === 'cluster' && e.event.type === 'rejected') rejections.push(`${e.event.peer}: ${e.event.reason}`);
        if (e.type === 'cluster' && e.event.type === 'left' && e.event.reason !== 'coordinator finished') left.push(e.event.worker);
      },
    );
    abort.abort();
    // The honest worker never leaves before the end (it was dropped when a step was asked of it twice).
    const honestLeft = left.filter((w) => !liar.includes(Number(/^worker (\d+)/.exec(w)![1])));
    expect(honestLeft).toEqual([]);
    return { summary, rejections, liar };
  }

  it.each([
    [1, 'auto'],
    [0, 'auto'],
    [0, 'sharded'],
    [0, 'server'],
  ] as const)('at rate 1 catches a worker sending slightly wrong rows (coordinator with %i threads, --plan %s), and the result is unchanged', async (threads, plan) => {
    const { summary, rejections, liar } = await withLiar({ threads, verify: 1, plan });
    expect(rejections.length).toBeGreaterThan(0);
    for (const r of rejections) {
      expect(r).toMatch(/^worker (\d+) .*: --verify: its rows \d+–\d+ of step \d+ differ from this coordinator's own computation$/);
      expect(liar).toContain(Number(/^worker (\d+)/.exec(r)![1]));
    }
    expect(summary.paramsSha256).toBe(threads === 1 ? await reference2() : await reference());
  });

  it('at rate 1 catches an owner sending wrong parameters of its units (--plan sharded), and the result is unchanged', async () => {
    const abort = new AbortController();
    const liar: number[] = [];
    const rejections: string[] = [];
    const wrongSlice = (slice: SliceMessage): SliceMessage => ({ ...slice, params: slice.params.map((v, i) => (i === 0 ? v + 1e-3 : v)) });
    const summary = await coordinator(
      { threads: 0, plan: 'sharded', verify: 1, minWorkers: 3 },
      (url) => {
        void runWorker({ connect: url, signal: abort.signal });
        void runWorker({ connect: url, signal: abort.signal });
        void runWorker({ connect: url, signal: abort.signal, tamperSlice: wrongSlice, onEvent: (e) => e.type === 'connected' && liar.push(e.workerId) });
      },
      (e) => e.type === 'cluster' && e.event.type === 'rejected' && rejections.push(`${e.event.peer}: ${e.event.reason}`),
    );
    abort.abort();
    expect(rejections.length).toBeGreaterThan(0);
    for (const r of rejections) {
      expect(r).toMatch(/^worker (\d+) .*: --verify: its parameters of step \d+ differ from this coordinator's own computation$/);
      expect(liar).toContain(Number(/^worker (\d+)/.exec(r)![1]));
    }
    expect(summary.paramsSha256).toBe(await reference());
  });

  // Below rate 1, rows not drawn are used unchecked until the worker is caught, so the result may differ:
  // what is checked is how soon it is caught.
  it('at rate 0.1 catches it within 60 steps (see README), and never the honest worker', async () => {
    const config = { trainSamples: 64 * 64, epochs: 1 };
    const { summary, rejections, liar } = await withLiar({ threads: 1, verify: 0.1, ...config });
    expect(rejections.length).toBeGreaterThan(0);
    expect(liar).toContain(Number(/^worker (\d+)/.exec(rejections[0])![1]));
    expect(Number(/of step (\d+)/.exec(rejections[0])![1])).toBeLessThan(60);
    for (const r of rejections) expect(liar).toContain(Number(/^worker (\d+)/.exec(r)![1]));
    expect(summary.steps).toBe(64);
  });
});

describe('a worker refused at the door', () => {
  it('stops with the coordinator\'s reason instead of retrying (a wrong token cannot get better)', async () => {
    let connects = 0;
    const abort = new AbortController();
    const stopped = new Promise<string>((resolve) => {
      void coordinator(
        { threads: 1, token: 'the right token, 16+ bytes', steps: 2, epochs: 1 },
        (url) =>
          runWorker({ connect: url, token: 'a wrong token of 16+ bytes', maxRetries: 5, signal: abort.signal, onEvent: (e) => e.type === 'connected' && connects++ }).then(
            () => resolve('returned'),
            (e: Error) => resolve(e.message),
          ),
        () => {},
        () => stopped.then(() => undefined),
      );
    });
    expect(await stopped).toBe('the coordinator refused this worker: authentication failed: wrong or missing token');
    abort.abort();
    expect(connects).toBe(0);
  });
});

describe('a run stopped while it waits for workers', () => {
  it('ends with a one-line reason instead of waiting on (--threads 0, nobody connected)', async () => {
    const abort = new AbortController();
    const run = train(
      { ...BASE, threads: 0, listen: '127.0.0.1:0', out: join(out, 'stopped-waiting') },
      { signal: abort.signal, onEvent: (e) => e.type === 'cluster' && e.event.type === 'waiting' && setTimeout(() => abort.abort(), 100) },
    );
    await expect(run).rejects.toThrow('step 0: stopped while waiting for remote workers; the last good state is kept');
  });
});

describe('a peer that reads slower than it is sent to', () => {
  it('is dropped once its backlog passes 4 of the largest frames, instead of growing the coordinator', async () => {
    const events: string[] = [];
    const { hub, port } = await smallHub({}, (e) => events.push(`${e.type}: ${'reason' in e ? e.reason : ''}`));
    const joined = new Promise<void>((resolve) => hub.waitForWorker().then(() => resolve()));
    const slow = rawPeer(`ws://127.0.0.1:${port}`, undefined, () => {});
    await joined;
    // It stops reading: what the hub sends piles up in the kernel's buffers, then in ws's.
    (slow as unknown as { _socket: { pause(): void } })._socket.pause();
    const [peer] = hub.joining();
    const send = (hub as unknown as { sendFrame(p: unknown, f: Buffer): void }).sendFrame.bind(hub);
    for (let i = 0; i < 200 && !events.some((e) => e.includes('fell behind')); i++) {
      send(peer, Buffer.alloc(1 << 20));
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(events).toContainEqual(expect.stringMatching(/^rejected: fell behind: \d+ MiB not yet sent to it \(more than 4 of the largest frames\)$/));
    slow.terminate();
    await hub.close();
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
