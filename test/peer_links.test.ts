/**
 * The links of one epoch between two members (remote/peer_links.ts) and the coordinator's view of their reports
 * (remote/peer_mesh.ts), without a run: two PeerLinks on loopback, a proxy between them that resets connections
 * in the middle of their handshake (as `ss -K` does in the chaos round), and a PeerMesh fed reports by hand.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { connect } from 'node:net';
import { newNonce, newPeerSecret, pairKey, proof } from '../src/cluster/remote/auth.js';
import { decodeRaw, encode } from '../src/cluster/remote/codec.js';
import type { PeerLinksReport, PeerRoster } from '../src/cluster/remote/messages.js';
import { PeerLink } from '../src/cluster/remote/peer_link.js';
import { LINK_WAIT_MS, PeerLinks, REDIAL_BACKOFF_MS } from '../src/cluster/remote/peer_links.js';
import { PeerMesh } from '../src/cluster/remote/peer_mesh.js';
import type { RemotePeer } from '../src/cluster/remote/peer.js';
import { resettingProxy } from './remote_helpers.js';

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

/** A proxy closed after the test. */
function keep<P extends { close(): void }>(proxy: P): P {
  cleanups.push(() => proxy.close());
  return proxy;
}

/** A member's links, listening on loopback; its reports (with when each came) and log lines are kept. */
async function member(redialEveryMs?: number) {
  const reports: { report: PeerLinksReport; at: number }[] = [];
  const notes: string[] = [];
  const links = new PeerLinks({ listen: '127.0.0.1:0', maxFrameBytes: 1 << 20, redialEveryMs });
  links.attach(() => ({ spec: undefined, batchSize: 0, step: 0 }), { report: (report) => reports.push({ report, at: Date.now() }), note: (m) => notes.push(m) });
  const address = (await links.listen('127.0.0.1'))!;
  cleanups.push(() => links.close());
  return { links, address, reports, notes };
}

/** Resolves with the first report that satisfies `test`, or undefined after `ms`. */
async function reportWhere(reports: { report: PeerLinksReport; at: number }[], test: (r: PeerLinksReport) => boolean, ms: number) {
  const deadline = Date.now() + ms;
  for (;;) {
    const found = reports.find((r) => test(r.report));
    if (found || Date.now() > deadline) return found;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Epoch 4's roster of members 1 (the listener) and 2 (the dialer), as member `self` gets it. */
function rosterOf(secret: Uint8Array, self: number, address1: string, address2: string): PeerRoster {
  return { epoch: 4, secret, self, members: [{ id: 1, address: address1 }, { id: 2, address: address2 }] };
}

const redialsInAll = REDIAL_BACKOFF_MS.reduce((a, b) => a + b, 0);

describe('a link that ends in its handshake', () => {
  it('is dialled again, and both members report the link before the wait for links is over', async () => {
    const [one, two] = [await member(), await member()];
    const proxy = keep(await resettingProxy(one.address, 2));
    const secret = newPeerSecret();
    const began = Date.now();
    one.links.join(rosterOf(secret, 1, one.address, two.address));
    // Member 2 dials member 1 through the proxy: its first two connections are reset after the challenge.
    two.links.join(rosterOf(secret, 2, proxy.address, two.address));
    const linkedTwo = await reportWhere(two.reports, (r) => r.linked.includes(1), LINK_WAIT_MS + 1000);
    const linkedOne = await reportWhere(one.reports, (r) => r.linked.includes(2), 1000);
    expect(linkedTwo, `member 2 reported ${JSON.stringify(two.reports)}; notes ${two.notes.join(' | ')}`).toBeDefined();
    expect(linkedOne).toBeDefined();
    // Reported as soon as the third dial linked, not when the wait for links ran out.
    expect(linkedTwo!.at - began).toBeLessThan(LINK_WAIT_MS);
    expect(proxy.connections()).toBe(3);
    expect(two.links.complete && one.links.complete).toBe(true);
    expect(two.notes.filter((n) => n.includes('ended in its handshake'))).toHaveLength(2);
    // Nobody reported a link it does not hold, nor logged a lost one.
    expect(two.reports.every((r) => r.report.linked.includes(1))).toBe(true);
    expect([...one.notes, ...two.notes].filter((n) => n.includes('peer link lost'))).toEqual([]);
  });

  it('is reported at once (no link to that member) once the dials tried again all failed', async () => {
    const [one, two] = [await member(), await member()];
    const proxy = keep(await resettingProxy(one.address, Infinity));
    const secret = newPeerSecret();
    const began = Date.now();
    one.links.join(rosterOf(secret, 1, one.address, two.address));
    two.links.join(rosterOf(secret, 2, proxy.address, two.address));
    const report = await reportWhere(two.reports, () => true, LINK_WAIT_MS + 1000);
    expect(report?.report).toEqual({ t: 'peerLinks', epoch: 4, linked: [] });
    // After the backoffs (1.3 s) and well before LINK_WAIT_MS (3 s), the report the timer would have sent.
    expect(report!.at - began).toBeGreaterThanOrEqual(redialsInAll);
    expect(report!.at - began).toBeLessThan(LINK_WAIT_MS - 500);
    expect(proxy.connections()).toBe(REDIAL_BACKOFF_MS.length + 1);
    expect(two.notes.at(-1)).toMatch(/^no peer link to worker 1 after 4 dials \(the last: .*\): steps go through the coordinator; dialling again every 5 s$/);
    expect(two.links.complete).toBe(false);
  });

  it('is dialled again, slowly, for the rest of the epoch once reported missing, and reported when it comes up', async () => {
    const [one, two] = [await member(), await member(200)];
    // Every quick dial and the first slow one are reset; the next passes.
    const proxy = keep(await resettingProxy(one.address, REDIAL_BACKOFF_MS.length + 2));
    const secret = newPeerSecret();
    one.links.join(rosterOf(secret, 1, one.address, two.address));
    two.links.join(rosterOf(secret, 2, proxy.address, two.address));
    const linked = await reportWhere(two.reports, (r) => r.linked.includes(1), LINK_WAIT_MS);
    expect(linked, `notes ${two.notes.join(' | ')}`).toBeDefined();
    expect(two.reports.map((r) => r.report.linked)).toEqual([[], [1]]);
    expect(await reportWhere(one.reports, (r) => r.linked.includes(2), 1000)).toBeDefined();
    expect(proxy.connections()).toBe(REDIAL_BACKOFF_MS.length + 3);
    expect(two.notes.at(-1)).toBe(`peer link to worker 1 up after ${REDIAL_BACKOFF_MS.length + 3} dials`);
    expect(two.links.complete && one.links.complete).toBe(true);
  });

  it('is dialled no more once the epoch is over', async () => {
    const [one, two] = [await member(), await member()];
    const proxy = keep(await resettingProxy(one.address, Infinity));
    const secret = newPeerSecret();
    one.links.join(rosterOf(secret, 1, one.address, two.address));
    two.links.join(rosterOf(secret, 2, proxy.address, two.address));
    // The epoch ends once the first dial came (and was reset), before the dial tried again.
    for (const until = Date.now() + 2000; proxy.connections() === 0 && Date.now() < until; ) await new Promise((resolve) => setTimeout(resolve, 5));
    const dialled = proxy.connections();
    two.links.join(undefined);
    await new Promise((resolve) => setTimeout(resolve, redialsInAll + 200));
    expect(dialled).toBe(1);
    expect(proxy.connections()).toBe(dialled);
    expect(two.reports).toEqual([]);
  });
});

describe('a listener dialled again by a member it holds a link to', () => {
  /** Dials `address` as member 2 of epoch 4 and completes the handshake; the link stays open. */
  function linkAs2(address: string, secret: Uint8Array): Promise<PeerLink> {
    const key = pairKey(secret, 4, 2, 1);
    const port = Number(address.slice(address.lastIndexOf(':') + 1));
    return new Promise((resolve, reject) => {
      const link: PeerLink = new PeerLink(connect({ host: '127.0.0.1', port }), 1 << 16, {
        frame: (frame) => {
          const message = decodeRaw(frame);
          if (message.t === 'peerChallenge') link.send(encode({ t: 'peerHello', epoch: 4, from: 2, nonce: newNonce(), mac: proof(key, 'dialer', message.nonce as Uint8Array) }));
          if (message.t === 'peerWelcome') resolve(link);
        },
        closed: (reason) => reject(new Error(reason)),
      });
      cleanups.push(() => link.close('test over'));
    });
  }

  it('takes the new link in place of the old one as no lost link: still complete, reported again', async () => {
    const one = await member();
    const secret = newPeerSecret();
    one.links.join(rosterOf(secret, 1, one.address, '127.0.0.1:1'));
    await linkAs2(one.address, secret);
    // The dialer's end of that link died unseen (its welcome lost): it dials again.
    await linkAs2(one.address, secret);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(one.links.complete).toBe(true);
    expect(one.notes.filter((n) => n.includes('peer link lost'))).toEqual([]);
    expect(one.reports.map((r) => r.report.linked)).toEqual([[2], [2]]);
  });

  it('keeps no new link once a link of the epoch was lost (its waits fail whatever comes): the dialer learns it as lost', async () => {
    const one = await member();
    const secret = newPeerSecret();
    one.links.join(rosterOf(secret, 1, one.address, '127.0.0.1:1'));
    (await linkAs2(one.address, secret)).close('gone');
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(one.notes.filter((n) => n.includes('peer link lost'))).toHaveLength(1);
    const again = await linkAs2(one.address, secret);
    const closed = await new Promise<boolean>((resolve) => {
      again.socket.once('close', () => resolve(true));
      setTimeout(() => resolve(!again.open), 500);
    });
    expect(closed).toBe(true);
    expect(one.links.complete).toBe(false);
    expect(one.reports.map((r) => r.report.linked)).toEqual([[2], []]);
  });
});

describe('the coordinator\'s view of the reports (PeerMesh)', () => {
  const peer = (id: number) => ({ id, name: `worker ${id}`, hello: { peerAddress: `127.0.0.1:${7000 + id}` } }) as unknown as RemotePeer;

  it('routes between peers again when a missing link comes up before any step went between them', () => {
    const [a, b] = [peer(1), peer(2)];
    const mesh = new PeerMesh(true);
    expect(mesh.admit([a, b])).toBeDefined();
    const report = (p: RemotePeer, linked: number[]) => mesh.report(p, { t: 'peerLinks', epoch: 1, linked });
    expect(report(a, []).news).toBe('peer links (epoch 1, 2 members): worker 1 holds no link to worker 2: steps go through the coordinator');
    expect(report(b, []).news).toBeUndefined();
    expect(mesh.direct([a, b])).toBe(false);
    // The dial tried again linked them: both report it.
    expect(report(b, [1]).news).toBeUndefined();
    expect(report(a, [2]).news).toBe('peer links (epoch 1, 2 members): every member linked to every other: rows and slices go between them');
    expect(mesh.direct([a, b])).toBe(true);
    expect(mesh.broken).toBe(false);
  });

  it('stays on the coordinator\'s path, and must send the state again, once a link is lost after steps went between peers', () => {
    const [a, b] = [peer(1), peer(2)];
    const mesh = new PeerMesh(true);
    mesh.admit([a, b]);
    const report = (p: RemotePeer, linked: number[]) => mesh.report(p, { t: 'peerLinks', epoch: 1, linked });
    report(a, [2]);
    report(b, [1]);
    expect(mesh.direct([a, b])).toBe(true);
    expect(report(a, []).news).toBe('peer links (epoch 1, 2 members): worker 1 holds no link to worker 2: steps go through the coordinator, from the state sent again');
    expect(mesh.broken).toBe(true);
    report(a, [2]);
    expect(mesh.direct([a, b])).toBe(false);
    // A new admission starts clean.
    mesh.admit([a, b]);
    expect(mesh.broken).toBe(false);
  });

  it('ignores a report of an epoch that is over (a report that waited in the socket while a new admission began)', () => {
    const [a, b] = [peer(1), peer(2)];
    const mesh = new PeerMesh(true);
    mesh.admit([a, b]);
    mesh.admit([a, b]);
    expect(mesh.report(a, { t: 'peerLinks', epoch: 1, linked: [] })).toEqual({ abandoned: false });
  });
});
