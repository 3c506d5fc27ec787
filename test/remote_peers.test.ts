/**
 * Peer links (remote/peer_links.ts, peer_mesh.ts): the members of a sharded run send each other their rows and
 * slices directly, the coordinator only orchestrating; every run ends on the threads-only hash.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { runWorker, type WorkerOptions } from '../src/cluster/remote/client.js';
import type { TrainEvent } from '../src/index.js';
import type { PeerLinks } from '../src/cluster/remote/peer_links.js';
import { REDIAL_BACKOFF_MS } from '../src/cluster/remote/peer_links.js';
import { freePorts, selfSignedCert } from './helpers.js';
import { coordinator, killChildren, referenceHash, resettingProxy, workerProcess } from './remote_helpers.js';

const reference = referenceHash({ threads: 2 }, 'peers-reference');

const reference3 = referenceHash({ threads: 2, epochs: 3 }, 'peers-reference3');

const aborts: AbortController[] = [];
afterEach(() => {
  for (const a of aborts.splice(0)) a.abort();
  killChildren();
});

/** An in-process worker; its log lines are kept. */
function worker(url: string, extra: Partial<WorkerOptions> = {}, log: string[] = []): AbortController {
  const abort = new AbortController();
  aborts.push(abort);
  void runWorker({ connect: url, signal: abort.signal, onEvent: (e) => e.type === 'error' && log.push(e.message), ...extra });
  return abort;
}

/** Resolves once the coordinator reports every member linked (its `peers` event); keeps every such line. */
function linkedSignal() {
  const lines: string[] = [];
  let resolve = () => {};
  const done = new Promise<void>((r) => (resolve = r));
  const onEvent = (e: TrainEvent) => {
    if (e.type !== 'cluster' || e.event.type !== 'peers') return;
    lines.push(e.event.message);
    if (e.event.message.includes('every member linked')) resolve();
  };
  return { lines, done, onEvent };
}

describe('peer links (sharded steps between workers)', () => {
  it('ends on the threads-only hash with 2, 3 and 4 workers, the rows and slices going between them', async () => {
    for (const count of [2, 3, 4]) {
      const lines: string[] = [];
      const summary = await coordinator(
        { threads: 0, plan: 'sharded', minWorkers: count },
        (url) => {
          for (let i = 0; i < count; i++) worker(url);
        },
        (e) => e.type === 'cluster' && e.event.type === 'peers' && lines.push(e.event.message),
      );
      expect(lines.some((l) => l.includes('every member linked')), lines.join('\n')).toBe(true);
      expect(summary.paramsSha256, `${count} workers`).toBe(await reference());
    }
  });
});

describe('what travels through the coordinator', () => {
  it('drops to the rows requests and losses when the members link (bounded by its own byte counters), against the relay', async () => {
    const { readMetrics } = await import('../src/report/metrics.js');
    const bytesOf = async (extra: Partial<WorkerOptions>) => {
      // The first step waits for the links (else it and the next go through the coordinator while they form).
      const linked = linkedSignal();
      const summary = await coordinator(
        { threads: 0, plan: 'sharded', minWorkers: 3 },
        (url) => {
          for (let i = 0; i < 3; i++) worker(url, extra);
        },
        linked.onEvent,
        (step) => (step === 0 && extra.peerListen !== 'off' ? linked.done : undefined),
      );
      expect(summary.paramsSha256).toBe(await reference());
      return readMetrics(summary.outDir!).flatMap((r) => (r.type === 'step' ? [r.bytes] : []));
    };
    const direct = await bytesOf({});
    const relayed = await bytesOf({ peerListen: 'off' });
    // A full batch of 64 rows: each member is sent the batch's pixels and labels (64 × (784 × 4 + 1) bytes);
    // its answer is 4 bytes a row of losses, and the update and sliceDone a few hundred bytes.
    const requests = 3 * 64 * (784 * 4 + 1);
    const bound = requests + 32 * 1024;
    const directSteps = direct.filter((b) => b <= bound);
    expect(directSteps.length, `steps' bytes ${direct.join(', ')}`).toBeGreaterThanOrEqual(4);
    // Relayed, every step also carries every member's rows and the slices (the model's parameters, to each other member).
    expect(Math.min(...relayed), `relayed steps' bytes ${relayed.join(', ')}`).toBeGreaterThan(3 * bound);
  });
});

describe('when links fail', () => {
  it('keeps the result when a worker process is SIGKILLed in the middle of a step between peers, and another joins', async () => {
    const workers: ChildProcess[] = [];
    let address = '';
    const linked = linkedSignal();
    const events: string[] = [];
    let joined = 0;
    let onJoin = () => {};
    const summary = await coordinator(
      { threads: 0, plan: 'sharded', epochs: 3, minWorkers: 3 },
      (url) => {
        address = url;
        for (let i = 0; i < 3; i++) workers.push(workerProcess(url));
      },
      (e) => {
        linked.onEvent(e);
        if (e.type !== 'cluster') return;
        events.push(e.event.type);
        if (e.event.type === 'joined') (joined++, onJoin());
      },
      async (step) => {
        if (step === 0) await linked.done;
        // Killed while the step it lets begin is under way: its rows or slice are lost to the others.
        if (step === 3) setTimeout(() => workers[0].kill('SIGKILL'), 5);
        if (step === 6) {
          const fourth = new Promise<void>((resolve) => (onJoin = () => joined >= 4 && resolve()));
          workers.push(workerProcess(address));
          await fourth;
        }
      },
    );
    expect(events).toContain('left');
    expect(joined).toBeGreaterThanOrEqual(4);
    // The survivors and the newcomer linked again in a later admission.
    expect(linked.lines.filter((l) => l.includes('every member linked')).length, linked.lines.join('\n')).toBeGreaterThanOrEqual(2);
    expect(summary.paramsSha256).toBe(await reference3());
    // The run over, every live worker process exits by itself: its peer listener does not hold it.
    const exits = workers.slice(1).map((w) => (w.exitCode !== null ? Promise.resolve(w.exitCode) : new Promise((resolve) => w.once('exit', resolve))));
    expect(await Promise.race([Promise.all(exits), new Promise((resolve) => setTimeout(() => resolve('still running after 10 s'), 10_000))])).toEqual([0, 0, 0]);
  });

  it('redoes the step when a member\'s links are cut in the middle of its units, links anew, and ends on the same hash', async () => {
    const linked = linkedSignal();
    const lines: string[] = [];
    let links: PeerLinks | undefined;
    const summary = await coordinator(
      { threads: 0, plan: 'sharded', minWorkers: 3 },
      (url) => {
        worker(url);
        worker(url);
        // Cut as its own units begin: it cannot send its slice, the others wait for it.
        worker(url, { onPeerLinks: (l) => (links = l), onUnits: (step) => step === 3 && links?.cut() });
      },
      (e) => {
        linked.onEvent(e);
        if (e.type === 'cluster') lines.push(e.event.type === 'left' ? `left: ${e.event.reason}` : e.event.type);
      },
      (step) => (step === 0 ? linked.done : undefined),
    );
    expect(linked.lines.some((l) => l.includes('steps go through the coordinator, from the state sent again')), linked.lines.join('\n')).toBe(true);
    expect(lines).toContain('replay');
    // Nobody was dropped for it (but at the end), and the next admission linked every member again.
    expect(lines.filter((l) => l.startsWith('left') && !l.endsWith('coordinator finished'))).toEqual([]);
    expect(linked.lines.filter((l) => l.includes('every member linked')).length).toBeGreaterThanOrEqual(2);
    expect(summary.paramsSha256).toBe(await reference());
  });

  it('goes through the coordinator when a member cannot be dialled (a wrong --advertise), and ends on the same hash', async () => {
    const linked = linkedSignal();
    let refused = () => {};
    const noLink = new Promise<void>((resolve) => (refused = resolve));
    const summary = await coordinator(
      { threads: 0, plan: 'sharded', minWorkers: 2 },
      (url) => {
        // Nothing listens on port 1: whichever of the two dials the other fails.
        worker(url, { advertise: '127.0.0.1:1' });
        worker(url, { advertise: '127.0.0.1:1' });
      },
      (e) => {
        linked.onEvent(e);
        if (e.type === 'cluster' && e.event.type === 'peers' && e.event.message.includes('holds no link')) refused();
      },
      (step) => (step === 3 ? noLink : undefined),
    );
    expect(linked.lines.some((l) => l.includes('every member linked')), linked.lines.join('\n')).toBe(false);
    expect(summary.paramsSha256).toBe(await reference());
  });

  it('links late in the admission (every quick dial reset in its handshake, a slow one not), goes back between peers, and ends on the same hash', async () => {
    // Each worker listens on a known port and announces a proxy in front of it that resets the first dials.
    const ports = await freePorts(2);
    const proxies = await Promise.all(ports.map((port) => resettingProxy(`127.0.0.1:${port}`, REDIAL_BACKOFF_MS.length + 1)));
    const linked = linkedSignal();
    let short = () => {};
    const noLink = new Promise<void>((resolve) => (short = resolve));
    try {
      const summary = await coordinator(
        { threads: 0, plan: 'sharded', minWorkers: 2, epochs: 3 },
        (url) => ports.forEach((port, i) => worker(url, { peerListen: `127.0.0.1:${port}`, advertise: proxies[i].address })),
        (e) => {
          linked.onEvent(e);
          if (e.type === 'cluster' && e.event.type === 'peers' && e.event.message.includes('holds no link')) short();
        },
        // Step 2 waits for the report that the link is missing; step 5 for the dial 5 s later that links them.
        (step) => (step === 2 ? noLink : step === 5 ? linked.done : undefined),
      );
      expect(linked.lines).toHaveLength(2);
      expect(linked.lines[0]).toMatch(/^peer links \(epoch (\d+), 2 members\): worker \d+ .* holds no link to worker \d+: steps go through the coordinator$/);
      // The same admission: no state was sent again for it.
      expect(linked.lines[1]).toBe(`peer links (epoch ${/epoch (\d+)/.exec(linked.lines[0])![1]}, 2 members): every member linked to every other: rows and slices go between them`);
      expect(proxies.map((p) => p.connections()).sort()).toEqual([0, REDIAL_BACKOFF_MS.length + 2]);
      expect(summary.paramsSha256).toBe(await reference3());
    } finally {
      for (const proxy of proxies) proxy.close();
    }
  });

  it('keeps --verify on the coordinator\'s path (no links), and ends on the same hash', async () => {
    const linked = linkedSignal();
    const summary = await coordinator({ threads: 0, plan: 'sharded', minWorkers: 2, verify: 1 }, (url) => (worker(url), worker(url)), linked.onEvent);
    expect(linked.lines).toEqual([]);
    expect(summary.paramsSha256).toBe(await reference());
  });
});

describe('under TLS', () => {
  it('hands out no peer links (they are plain TCP): the sharded steps go through the coordinator, inside TLS', async () => {
    const { cert, key } = selfSignedCert('dtrain-peers-tls-');
    const linked = linkedSignal();
    const token = 'a token of 16+ bytes';
    const summary = await coordinator(
      { threads: 0, plan: 'sharded', minWorkers: 2, tlsCert: cert, tlsKey: key, token },
      (url) => {
        const wss = url.replace('ws://', 'wss://');
        worker(wss, { token, ca: cert });
        worker(wss, { token, ca: cert });
      },
      linked.onEvent,
    );
    expect(linked.lines).toEqual([]);
    expect(summary.paramsSha256).toBe(await reference());
  });
});

describe('a peer listener', () => {
  /** A listener of member 1 in epoch 7 of a roster with member 2; `dial` speaks to it as member 2 would, with `key`. */
  async function listenerOf() {
    const { PeerLinks } = await import('../src/cluster/remote/peer_links.js');
    const { newPeerSecret } = await import('../src/cluster/remote/auth.js');
    const notes: string[] = [];
    const links = new PeerLinks({ listen: '127.0.0.1:0', maxFrameBytes: 1 << 20 });
    links.attach(() => ({ spec: undefined, batchSize: 0, step: 0 }), { report: () => {}, note: (m) => notes.push(m) });
    const address = (await links.listen('127.0.0.1'))!;
    const secret = newPeerSecret();
    // Member 1 dials nobody (it has the lower id); member 2's address is never dialled here.
    links.join({ epoch: 7, secret, self: 1, members: [{ id: 1, address }, { id: 2, address: '127.0.0.1:1' }] });
    return { links, address, secret, notes };
  }

  /** Dials `address` and answers its challenge as member `from` of epoch 7 with `key`; resolves with what came back, then the close. */
  async function handshake(address: string, key: Uint8Array, from = 2): Promise<string[]> {
    const { connect } = await import('node:net');
    const { PeerLink } = await import('../src/cluster/remote/peer_link.js');
    const { decodeRaw, encode } = await import('../src/cluster/remote/codec.js');
    const { newNonce, proof } = await import('../src/cluster/remote/auth.js');
    const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
    const got: string[] = [];
    return new Promise((resolve) => {
      const link: InstanceType<typeof PeerLink> = new PeerLink(connect({ host, port }), 1 << 16, {
        frame: (frame) => {
          const message = decodeRaw(frame);
          got.push(String(message.t));
          if (message.t === 'peerChallenge') link.send(encode({ t: 'peerHello', epoch: 7, from, nonce: newNonce(), mac: proof(key, 'dialer', message.nonce as Uint8Array) }));
          if (message.t === 'peerWelcome') link.close('done');
        },
        closed: () => resolve(got),
      });
    });
  }

  it('welcomes a member that proves the pair\'s key, and refuses one that does not (nor the token-less stranger)', async () => {
    const { pairKey } = await import('../src/cluster/remote/auth.js');
    const { links, address, secret, notes } = await listenerOf();
    try {
      expect(await handshake(address, pairKey(secret, 7, 1, 2))).toEqual(['peerChallenge', 'peerWelcome']);
      expect(await handshake(address, pairKey(secret, 6, 1, 2))).toEqual(['peerChallenge', 'error']);
      expect(await handshake(address, new Uint8Array(32))).toEqual(['peerChallenge', 'error']);
      // A member not in the roster, with the key its id would have.
      expect(await handshake(address, pairKey(secret, 7, 1, 3), 3)).toEqual(['peerChallenge', 'error']);
      expect(notes.filter((n) => n.includes('refused a peer link'))).toHaveLength(3);
    } finally {
      links.close();
    }
  });

  it('ends a connection that announces a frame larger than a handshake, or sends garbage', async () => {
    const { connect } = await import('node:net');
    const { links, address } = await listenerOf();
    const port = Number(address.slice(address.lastIndexOf(':') + 1));
    const closedAfter = (bytes: Buffer) =>
      new Promise<void>((resolve) => {
        const socket = connect({ host: '127.0.0.1', port }, () => socket.write(bytes));
        socket.on('data', () => {});
        socket.on('close', () => resolve());
        socket.on('error', () => {});
      });
    try {
      const huge = Buffer.alloc(4);
      huge.writeUInt32LE(1 << 30, 0);
      await closedAfter(huge);
      const junk = Buffer.from([8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
      await closedAfter(junk);
    } finally {
      links.close();
    }
  });
});

describe('dtrain worker --peer-listen and --advertise', () => {
  it('names a malformed value and what was expected', async () => {
    const { resolveWorkerConfig } = await import('../src/config.js');
    expect(() => resolveWorkerConfig({ connect: 'ws://h:1', peerListen: 'h:port' })).toThrow('option "peerListen" must be [HOST:]PORT, or off, got "h:port"');
    expect(() => resolveWorkerConfig({ connect: 'ws://h:1', advertise: 'a b' })).toThrow('option "advertise" must be HOST or HOST:PORT');
    expect(resolveWorkerConfig({ connect: 'ws://h:1', peerListen: '0.0.0.0:7000', advertise: 'node3.lan' }).peerListen).toBe('0.0.0.0:7000');
  });
});

describe('what a peer link takes (validateFromPeer)', () => {
  it('refuses rows and slices before the handshake, of a step too far, compact, non-finite, or of the wrong size', async () => {
    const { validateFromPeer } = await import('../src/cluster/remote/validation.js');
    const { decodeRaw, encode } = await import('../src/cluster/remote/codec.js');
    const { NonFiniteError, ProtocolError } = await import('../src/cluster/remote/messages.js');
    const spec = { sizes: [4, 3, 2], activation: 'relu' as const };
    const view = { linked: true, spec, batchSize: 8, step: 5 };
    const rows = (over: Record<string, unknown> = {}) => ({
      t: 'rowsDone' as const, step: 5, range: [0, 2] as [number, number], rowLoss: new Float32Array(2), hidden: [new Float32Array(6)],
      deltas: [new Float32Array(6), new Float32Array(4)], ms: 0, applyMs: 0, waitMs: 0, queuedMs: 0, ...over,
    });
    const check = (message: object, v = view) => validateFromPeer(decodeRaw(encode(message as never)), v);
    expect(check(rows()).t).toBe('rowsDone');
    expect(check(rows({ step: 6 })).t).toBe('rowsDone');
    expect(() => check(rows({ step: 7 }))).toThrow(ProtocolError);
    expect(() => check(rows({ step: 4 }))).toThrow('neither this member\'s step 5 nor the next');
    expect(() => check(rows(), { ...view, linked: false })).toThrow('sent before the link\'s handshake');
    expect(() => check(rows({ deltas: [new Float32Array(4)] }))).toThrow(ProtocolError);
    expect(() => check(rows({ hidden: [new Float32Array([1, 2, 3, 4, 5, NaN])] }))).toThrow(NonFiniteError);
    // A slice of units [0, 1) of layer 0 and [0, 2) of layer 1: 1 × (4 + 1) + 2 × (3 + 1) parameters.
    const slice = (params: Float32Array) => ({ t: 'slice' as const, step: 5, units: [[0, 1], [0, 2]], params });
    expect(check(slice(new Float32Array(13))).t).toBe('slice');
    expect(() => check(slice(new Float32Array(12)))).toThrow(ProtocolError);
    expect(() => check(slice(new Float32Array(13).fill(Infinity)))).toThrow(NonFiniteError);
    expect(() => check({ t: 'peerHello', epoch: 1, from: 2, nonce: new Uint8Array(32), mac: new Uint8Array(32) })).toThrow('sent after the link\'s handshake');
    expect(() => check({ t: 'state' })).toThrow('unknown message type "state"');
  });
});
