/**
 * RemoteHub (src/cluster/remote/hub.ts), on loopback with hand-written peers: a member's life from joining
 * to leaving, its connection handling when its own handlers fail, the backlog limit, the checksum round.
 * Authentication and admission control: admission.test.ts; hostile peers in whole runs: remote_hostile.test.ts.
 */
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { decodeRaw, encode } from '../src/cluster/remote/codec.js';
import { idleTeam, smallHub, zeroSnapshot } from './helpers.js';
import { rawPeer } from './remote_helpers.js';

/** A hub and one hand-written peer that has joined (authenticated, waiting for the state); what it was sent and how it closed. */
async function joinedPeer() {
  const events: string[] = [];
  const { hub, port, memory } = await smallHub({ heartbeatMs: 10_000 }, (e) => events.push(`${e.type}: ${'reason' in e ? e.reason : 'worker' in e ? e.worker : ''}`));
  const received: Record<string, unknown>[] = [];
  const joined = hub.waitForWorker();
  const ws = rawPeer(`ws://127.0.0.1:${port}`, undefined, (m) => received.push(m));
  const closed = new Promise<[number, string]>((resolve) => ws.on('close', (code, reason) => resolve([code, String(reason)])));
  await joined;
  const [peer] = hub.joining();
  /** Resolves once the peer has received a message of type `t`. */
  const receivedOne = async (t: string) => {
    while (!received.some((m) => m.t === t)) await new Promise((resolve) => setTimeout(resolve, 5));
    return received.find((m) => m.t === t)!;
  };
  return { hub, peer, memory, ws, events, receivedOne, closed };
}

describe('a member\'s life in the hub', () => {
  it('joins once authenticated (waitForWorker wakes), is sent the state by admit and is then ready; park sets it on standby, resync makes it join again', async () => {
    const { hub, peer, memory, events, receivedOne, ws } = await joinedPeer();
    expect(events).toEqual([expect.stringMatching(/^joined: worker 1 \(127\.0\.0\.1:\d+\)$/)]);
    expect([...hub.kinds]).toEqual(['onnx/cpu']);
    expect(await receivedOne('welcome')).toMatchObject({ workerId: peer.id });
    hub.admit(zeroSnapshot(memory, 7), 'sharded');
    expect(await receivedOne('state')).toMatchObject({ step: 7, plan: 'sharded', useLocalData: false });
    expect([hub.joining(), hub.ready()]).toEqual([[], [peer]]);
    hub.park(peer);
    expect([hub.ready(), hub.standby()]).toEqual([[], [peer]]);
    hub.resync(peer);
    expect([hub.standby(), hub.joining()]).toEqual([[], [peer]]);
    ws.close();
    await hub.close();
  });

  it('counts the bytes of every frame, sent and received', async () => {
    const { hub, memory, receivedOne, ws } = await joinedPeer();
    const before = hub.bytesMoved;
    // Its hello came in, the challenge and the welcome went out.
    expect(before).toBeGreaterThan(0);
    hub.admit(zeroSnapshot(memory, 0));
    await receivedOne('state');
    // 3 arrays of the 4→5→3 model's 43 parameters, 4 bytes each, and the rest of the state message.
    expect(hub.bytesMoved - before).toBeGreaterThan(3 * 43 * 4);
    ws.close();
    await hub.close();
  });

  it('rejects a member by telling it why, closing with 1008, and reporting it rejected and then left', async () => {
    const { hub, peer, events, receivedOne, closed } = await joinedPeer();
    hub.reject(peer, 'a reason of this test');
    expect(await receivedOne('error')).toEqual({ t: 'error', message: 'a reason of this test' });
    expect(await closed).toEqual([1008, 'a reason of this test']);
    expect(events.slice(1)).toEqual(['rejected: a reason of this test', 'left: a reason of this test']);
    expect(hub.joining()).toEqual([]);
    await hub.close();
  });

  it('drops a member that reports an error of its own, with its message', async () => {
    const { hub, ws, events, closed } = await joinedPeer();
    ws.send(encode({ t: 'error', message: 'out of memory' }));
    expect((await closed)[0]).toBe(1011);
    expect(events.slice(1)).toEqual(['left: worker reported: out of memory']);
    await hub.close();
  });

  it('ends every member when it closes: they are told the run finished, and leave', async () => {
    const { hub, events, closed } = await joinedPeer();
    await hub.close();
    expect(await closed).toEqual([4000, 'run finished']);
    expect(events.slice(1)).toEqual(['left: coordinator finished']);
  });
});

describe('the coordinator survives its own handlers failing', () => {
  /**
   * How to make one connection handler of the hub throw, and how a peer then sets it off. Fault injection
   * into the hub's private members (untyped on purpose): no public seam makes its own code throw, and one
   * made for this test would widen what the scheduler can call.
   */
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
      hub.admit(zeroSnapshot(memory, 7));
      expect(hub.ready()).toHaveLength(2);
      let start = performance.now();
      const answers = await hub.checksumsAt(7);
      const waited = performance.now() - start;
      expect([...answers.values()]).toEqual([sha256]);
      expect(waited).toBeGreaterThanOrEqual(stepTimeoutMs - 10);
      expect(waited).toBeLessThan(stepTimeoutMs + 1000);
      // The scheduler's round at an epoch's end waits the same deadline, and keeps the late peer.
      const scheduler = new Scheduler(memory, idleTeam(), 'split', hub, () => {});
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

describe('a peer that reads slower than it is sent to', () => {
  it('is dropped once its backlog passes 4 of the largest frames, instead of growing the coordinator', async () => {
    const events: string[] = [];
    const { hub, port } = await smallHub({}, (e) => events.push(`${e.type}: ${'reason' in e ? e.reason : ''}`));
    const joined = new Promise<void>((resolve) => hub.waitForWorker().then(() => resolve()));
    const slow = rawPeer(`ws://127.0.0.1:${port}`, undefined, () => {});
    await joined;
    // It stops reading: what the hub sends piles up in the kernel's buffers, then in ws's. (ws's socket and the
    // hub's sendFrame are private: the public messages of this tiny model are far too small to fill them.)
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
