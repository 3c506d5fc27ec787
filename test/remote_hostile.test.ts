/**
 * Peers that lie or misbehave, one at a time beside an honest worker: each is turned away with a reason
 * (or caught by --verify) and the run ends on the local threads' parameters. Whole hostile networks are in
 * remote_network.test.ts.
 */
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { TrainConfig } from '../src/index.js';
import { runWorker } from '../src/cluster/remote/client.js';
import { encode } from '../src/cluster/remote/codec.js';
import type { RowsDone, SliceMessage } from '../src/cluster/remote/messages.js';
import { coordinator, rawPeer, referenceHash } from './remote_helpers.js';

const reference = referenceHash({ threads: 2 }, 'reference');
const reference2 = referenceHash({ threads: 1 }, 'reference2');

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
      // The first 4 bytes are read as a frame header: a length far beyond the 5 bytes sent.
      /^undecodable frame \(a header of \d+ bytes does not fit in its 5 bytes\)$/,
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
        ws.on('open', () => ws.send(encode({ t: 'é'.repeat(60) } as never))); // no message type of the protocol
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
            applyMs: 0,
            waitMs: 0,
            queuedMs: 0,
          } as never), // a hostile answer: not a message the protocol's types allow
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
