import { afterEach, describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { Admission, ADMISSION_DEFAULTS, RefusalLog } from '../src/cluster/remote/admission.js';
import { newNonce, proof } from '../src/cluster/remote/auth.js';
import { decodeRaw, encode } from '../src/cluster/remote/codec.js';
import { RemoteHub, type HubEvent } from '../src/cluster/remote/hub.js';
import { PROTOCOL_VERSION, REFUSED } from '../src/cluster/remote/messages.js';
import { createTrainingMemory } from '../src/cluster/training_memory.js';
import { makeSpec } from '../src/model/spec.js';
import { syntheticDataset } from './helpers.js';

describe('admission control', () => {
  const clock = () => {
    let t = 0;
    return { now: () => t, advance: (ms: number) => (t += ms) };
  };

  it('lets at most maxPendingAuth connections authenticate at once, and frees a slot when one settles', () => {
    const admission = new Admission({ ...ADMISSION_DEFAULTS, maxPendingAuth: 2 });
    expect(admission.admit('10.0.0.1')).toBeUndefined();
    expect(admission.admit('10.0.0.2')).toBeUndefined();
    expect(admission.admit('10.0.0.3')).toBe('too many connections authenticating (2): try again later');
    admission.settle('10.0.0.1', true);
    expect(admission.admit('10.0.0.3')).toBeUndefined();
    expect(admission.stats).toEqual({ authenticating: 2, peakAuthenticating: 2, refused: 1 });
  });

  it('refuses an address after 3 failures within the window, twice as long each time, and forgets it once it authenticates', () => {
    const { now, advance } = clock();
    const admission = new Admission(ADMISSION_DEFAULTS, now);
    const fail = (address: string) => (admission.admit(address), admission.settle(address, false));
    expect(fail('10.0.0.9')).toBeUndefined();
    expect(fail('10.0.0.9')).toBeUndefined();
    expect(fail('10.0.0.9')).toBe('3 failed authentications from 10.0.0.9 within 60 s: refusing its connections for 1 s');
    expect(admission.admit('10.0.0.9')).toBe('too many failed authentications from 10.0.0.9: refused for another 1 s');
    expect(admission.admit('10.0.0.1')).toBeUndefined();
    advance(1000);
    fail('10.0.0.9');
    fail('10.0.0.9');
    expect(fail('10.0.0.9')).toBe('3 failed authentications from 10.0.0.9 within 60 s: refusing its connections for 2 s');
    advance(2000);
    admission.admit('10.0.0.9');
    admission.settle('10.0.0.9', true);
    fail('10.0.0.9');
    fail('10.0.0.9');
    expect(fail('10.0.0.9')).toMatch(/for 1 s$/);
  });

  it('counts only the failures within the window', () => {
    const { now, advance } = clock();
    const admission = new Admission(ADMISSION_DEFAULTS, now);
    for (let i = 0; i < 10; i++) {
      admission.admit('10.0.0.9');
      expect(admission.settle('10.0.0.9', false)).toBeUndefined();
      advance(30_001);
    }
  });
});

describe('the log of refused connections', () => {
  afterEach(() => void vi.useRealTimers());

  it('reports the first refusal at once and the rest of a burst as one line a second', () => {
    vi.useFakeTimers();
    const lines: string[] = [];
    const log = new RefusalLog((count, reason) => lines.push(`${count}: ${reason}`));
    for (let i = 0; i < 5; i++) log.add(`r${i}`);
    expect(lines).toEqual(['1: r0']);
    vi.advanceTimersByTime(1000);
    log.add('r5');
    vi.advanceTimersByTime(1000);
    expect(lines).toEqual(['1: r0', '4: r4', '1: r5']);
    // A quiet second ends the burst: the next refusal is reported at once again.
    vi.advanceTimersByTime(1000);
    log.add('r6');
    log.add('r7');
    log.close();
    expect(lines).toEqual(['1: r0', '4: r4', '1: r5', '1: r6', '1: r7']);
  });
});

describe('a hub turning strangers away', () => {
  const TOKEN = 'correct horse battery staple';

  /** Connects from `from` (any 127.x address reaches the hub on Linux); answers the challenge with `token`. */
  function knock(port: number, from: string, token: string): Promise<{ challenged: boolean; code: number; reason: string }> {
    return new Promise((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}`, { localAddress: from });
      let challenged = false;
      ws.on('message', (data) => {
        const m = decodeRaw(data as Buffer);
        if (m.t !== 'challenge') return;
        challenged = true;
        const mac = proof(token, 'worker', m.nonce as Uint8Array);
        ws.send(encode({ t: 'hello', protocol: PROTOCOL_VERSION, mac, nonce: newNonce(), engine: 'onnx', device: 'cpu', backend: 'test', threads: 1, dataSha256: '' }));
      });
      ws.on('close', (code, reason) => resolve({ challenged, code, reason: String(reason) }));
      ws.on('error', () => {});
      turnedAway(ws, (code, reason) => resolve({ challenged, code, reason }));
    });
  }

  /** A refusal comes before the upgrade: an HTTP 429 whose status text is the reason. */
  function turnedAway(ws: WebSocket, answer: (code: number, reason: string) => void): void {
    ws.on('unexpected-response', (_request, response) => {
      answer(response.statusCode ?? 0, response.statusMessage ?? '');
      ws.terminate();
    });
  }

  it('refuses an address that failed 3 times, logging it, while others still get in; and refuses past the cap', async () => {
    const dataset = syntheticDataset(8, 8, 4, 3);
    const memory = createTrainingMemory(makeSpec(4, [5], 3, 'sigmoid'), dataset, 4, 1);
    const events: HubEvent[] = [];
    // Each refused stranger's socket lingers for the close grace (it is no longer read): blocks last longer here.
    const options = { host: '127.0.0.1', port: 0, token: TOKEN, engine: 'onnx', device: 'cpu', datasetSha256: '', heartbeatMs: 1000, stepTimeoutMs: 1000, authTimeoutMs: 1000, blockMs: 30_000 };
    const hub = new RemoteHub(options, memory, (e) => events.push(e));
    const { port } = await hub.start();
    try {
      for (let i = 0; i < 3; i++) expect(await knock(port, '127.0.0.3', 'not the token at all')).toMatchObject({ challenged: true, code: REFUSED });
      expect(events.filter((e) => e.type === 'rejected').map((e) => e.type === 'rejected' && `${e.peer}: ${e.reason}`)).toEqual([
        expect.stringMatching(/^worker 1 \(127\.0\.0\.3:\d+\): authentication failed: wrong or missing token$/),
        expect.stringMatching(/^worker 2 \(127\.0\.0\.3:\d+\): authentication failed/),
        expect.stringMatching(/^worker 3 \(127\.0\.0\.3:\d+\): authentication failed/),
        '127.0.0.3: 3 failed authentications from 127.0.0.3 within 60 s: refusing its connections for 30 s',
      ]);
      const refused = { challenged: false, code: 429, reason: expect.stringMatching(/^too many failed authentications from 127\.0\.0\.3: refused for another (29\.\d|30) s$/) };
      expect(await knock(port, '127.0.0.3', TOKEN)).toEqual(refused);
      expect(events.at(-1)).toEqual({ type: 'refused', count: 1, reason: refused.reason });
      // Another address is not refused: the worker with the token joins.
      const joined = new Promise((resolve) => hub.waitForWorker().then(resolve));
      void knock(port, '127.0.0.4', TOKEN);
      await joined;
      expect(hub.connections).toMatchObject({ authenticating: 0, refused: 1 });
    } finally {
      await hub.close();
    }
  });

  it('turns connections past maxPendingAuth away at once, before the upgrade, with the reason in the HTTP status', async () => {
    const dataset = syntheticDataset(8, 8, 4, 3);
    const memory = createTrainingMemory(makeSpec(4, [5], 3, 'sigmoid'), dataset, 4, 1);
    const options = { host: '127.0.0.1', port: 0, engine: 'onnx', device: 'cpu', datasetSha256: '', heartbeatMs: 1000, stepTimeoutMs: 1000, authTimeoutMs: 500, maxPendingAuth: 2 };
    const hub = new RemoteHub(options, memory, () => {});
    const { port } = await hub.start();
    try {
      // Three silent strangers: two wait for their hello deadline, the third is turned away at once.
      const silent = () =>
        new Promise<[number, string]>((resolve) => {
          const ws = new WebSocket(`ws://127.0.0.1:${port}`, { localAddress: '127.0.0.5' });
          ws.on('close', (code, reason) => resolve([code, String(reason)]));
          ws.on('error', () => {});
          turnedAway(ws, (code, reason) => resolve([code, reason]));
        });
      const results = await Promise.all([silent(), silent(), silent()]);
      expect(results.sort()).toEqual([
        [1008, 'did not authenticate within 500 ms'],
        [1008, 'did not authenticate within 500 ms'],
        [429, 'too many connections authenticating (2): try again later'],
      ]);
      expect(hub.connections).toEqual({ authenticating: 0, peakAuthenticating: 2, refused: 1 });
    } finally {
      await hub.close();
    }
  });
});
