/**
 * PeerWork (src/cluster/remote/peer_work.ts): what a step asks of each member and what a late answer costs,
 * driven through the narrow part of the hub it uses (HubContext), with peers on real loopback connections.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { decodeRaw } from '../src/cluster/remote/codec.js';
import type { HubContext } from '../src/cluster/remote/hub_context.js';
import type { RowsDone, ToWorker } from '../src/cluster/remote/messages.js';
import type { RemotePeer } from '../src/cluster/remote/peer.js';
import { PeerWork, type WorkOptions } from '../src/cluster/remote/peer_work.js';
import { createTrainingMemory } from '../src/cluster/training_memory.js';
import { makeSpec } from '../src/model/spec.js';
import { loopbackPeers, syntheticDataset, zeroSnapshot } from './helpers.js';

const dataset = syntheticDataset(16, 4, 4, 3);
const memory = createTrainingMemory(makeSpec(4, [5], 3, 'sigmoid'), dataset, 8, 1);
/** The batch of every test's step 3: dataset samples 8–15. */
const samples = Int32Array.from({ length: 8 }, (_, i) => 8 + i);
const asAsked = { compact: false, lossOnly: false };

const open: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of open.splice(0)) await close();
});

/** PeerWork over `count` ready peers, with what it sent, forwarded and rejected, by peer id. */
async function workWith(count: number, options: Partial<WorkOptions> = {}) {
  const { peers, close } = await loopbackPeers(count);
  open.push(close);
  const sent: [number, ToWorker][] = [];
  const frames: [number, Buffer][] = [];
  const rejected: [number, string][] = [];
  const hub: Pick<HubContext, 'send' | 'sendFrame' | 'reject' | 'guarded' | 'ready'> = {
    send: (peer, message) => void sent.push([peer.id, message]),
    sendFrame: (peer, frame) => void frames.push([peer.id, frame]),
    // As the hub does: the peer is gone, and what it owed fails.
    reject: (peer, reason) => {
      rejected.push([peer.id, reason]);
      peer.status = 'closed';
      peer.requests.close(new Error(`${peer.name} left: ${reason}`));
    },
    guarded: (_peer, _what, handler) => handler,
    ready: () => peers.filter((p) => p.status === 'ready'),
  };
  const work = new PeerWork({ datasetSha256: dataset.sha256, stepTimeoutMs: 1000, ...options }, memory, hub);
  return { work, peers, sent, frames, rejected };
}

/** A worker's answer to its rows request of step 3 over `range` (values as if computed). */
function answer(range: [number, number]): RowsDone {
  const rows = range[1] - range[0];
  return { t: 'rowsDone', step: 3, range, rowLoss: new Float32Array(rows).fill(0.5), hidden: [new Float32Array(rows * 5)], deltas: [new Float32Array(rows * 5), new Float32Array(rows * 3)], ms: 1 };
}

function helloWith(peer: RemotePeer, dataSha256: string): void {
  peer.hello = { t: 'hello', protocol: 1, mac: new Uint8Array(0), nonce: new Uint8Array(0), engine: 'onnx', device: 'cpu', backend: 'test', threads: 1, dataSha256 };
}

describe('PeerWork', () => {
  it('asks for rows with the batch\'s pixels, or only its dataset indices when the worker has the same data, and shows the request to validation', async () => {
    const { work, peers, sent } = await workWith(2);
    helloWith(peers[1], dataset.sha256);
    void work.requestRows(peers[0], 3, 8, [0, 4], samples, asAsked);
    void work.requestRows(peers[1], 3, 8, [4, 8], samples, { compact: true, lossOnly: false });
    const [[, pixels], [, indices]] = sent as [number, Extract<ToWorker, { t: 'rows' }>][];
    expect([pixels.x?.length, pixels.index, pixels.labels.length]).toEqual([8 * 4, undefined, 8]);
    expect([pixels.x?.subarray(0, 4)]).toEqual([dataset.train.images.subarray(8 * 4, 9 * 4)]);
    expect([indices.x, indices.index]).toEqual([undefined, samples]);
    expect(work.viewOf(peers[1])).toMatchObject({ pendingStep: 3, pendingRange: [4, 8], pendingCompact: true, pendingLossOnly: false, pendingSnapshot: undefined });
  });

  it('forwards a member\'s rows, as the very frame it sent, to the others computing the same step only, and resolves its request', async () => {
    const { work, peers, frames } = await workWith(3);
    const [a, b, c] = peers;
    const asked = work.requestRows(a, 3, 8, [0, 4], samples, asAsked);
    void work.requestRows(b, 3, 8, [4, 8], samples, asAsked);
    // c computes nothing of step 3: it gets the rows in the update instead.
    const frame = Buffer.from('the frame as a sent it');
    work.rowsDone(a, answer([0, 4]), frame);
    expect(await asked).toEqual(answer([0, 4]));
    expect(frames).toEqual([[b.id, frame]]);
    expect(frames[0][1]).toBe(frame);
    expect([a.holds, b.holds, c.holds]).toEqual([[[0, 4]], [[0, 4]], []]);
  });

  it('holds the rows back for the update with --verify (forwardRows false) and in the server plan', async () => {
    for (const [options, plan] of [[{ forwardRows: false }, 'replicated'], [{}, 'server']] as const) {
      const { work, peers, frames } = await workWith(2, options);
      work.setPlan(plan);
      void work.requestRows(peers[0], 3, 8, [0, 4], samples, asAsked);
      void work.requestRows(peers[1], 3, 8, [4, 8], samples, asAsked);
      work.rowsDone(peers[0], answer([0, 4]), Buffer.alloc(1));
      expect(frames, plan).toEqual([]);
    }
  });

  it('sends each member in the update only the rows it does not hold', async () => {
    const { work, peers, sent } = await workWith(3);
    const [a, b, c] = peers;
    void work.requestRows(a, 3, 8, [0, 4], samples, asAsked);
    void work.requestRows(b, 3, 8, [4, 6], samples, asAsked);
    work.rowsDone(a, answer([0, 4]), Buffer.alloc(1));
    work.rowsDone(b, answer([4, 6]), Buffer.alloc(1));
    sent.length = 0;
    // Rows 6–7 were computed here (say): nobody holds them.
    expect(work.broadcastUpdate(3, 8, true)).toBe(3);
    const parts = sent.map(([id, m]) => [id, m.t === 'update' ? m.parts.map((p) => p.range) : m.t]);
    expect(parts).toEqual([
      [a.id, [[6, 8]]],
      [b.id, [[6, 8]]],
      [c.id, [[0, 8]]],
    ]);
    // Compact: the last layer's delta only.
    const update = sent[2][1] as Extract<ToWorker, { t: 'update' }>;
    expect(update.parts[0].deltas.map((d) => d.length)).toEqual([8 * 3]);
  });

  it('sends a joiner the state, forgetting the rows it held (a reloaded replica holds none)', async () => {
    const { work, peers, frames } = await workWith(1);
    const [peer] = peers;
    void work.requestRows(peer, 3, 8, [0, 4], samples, asAsked);
    work.rowsDone(peer, answer([0, 4]), Buffer.alloc(1));
    work.sendState(peer, zeroSnapshot(memory, 4), 'sharded');
    expect([peer.rowsStep, peer.holds]).toEqual([-1, []]);
    // The state goes out as one encoded frame (its size sets the joiner's transfer deadline).
    expect(frames.map(([id]) => id)).toEqual([peer.id]);
    expect(decodeRaw(frames[0][1])).toMatchObject({ t: 'state', step: 4, useLocalData: false, plan: 'sharded' });
    expect(peer.stateArrivesBy).toBeGreaterThan(0);
    // Rows of an earlier step leave the allowance; rows computed from that state end it.
    void work.requestRows(peer, 3, 8, [0, 4], samples, asAsked);
    work.rowsDone(peer, answer([0, 4]), Buffer.alloc(1));
    expect(peer.stateArrivesBy).toBeGreaterThan(0);
    void work.requestRows(peer, 4, 8, [0, 4], samples, asAsked);
    work.rowsDone(peer, { ...answer([0, 4]), step: 4 }, Buffer.alloc(1));
    expect(peer.stateArrivesBy).toBe(0);
  });

  it('drops a member that does not answer its rows by the step deadline, and its request fails', async () => {
    const { work, peers, rejected } = await workWith(1, { stepTimeoutMs: 50 });
    await expect(work.requestRows(peers[0], 3, 8, [0, 8], samples, asAsked)).rejects.toThrow(/left: did not answer step 3 within 50 ms$/);
    expect(rejected).toEqual([[peers[0].id, 'did not answer step 3 within 50 ms']]);
  });

  it('keeps a member whose checksum is late (its answer is only missing), and takes no checksum of another step than asked', async () => {
    const { work, peers, sent, rejected } = await workWith(2, { stepTimeoutMs: 50 });
    const [prompt, late] = peers;
    const answers = work.checksumsAt(7);
    expect(sent.map(([id, m]) => [id, m])).toEqual([
      [prompt.id, { t: 'check', step: 7 }],
      [late.id, { t: 'check', step: 7 }],
    ]);
    // An answer to an earlier check must not pass for this one.
    work.checksum(prompt, 6, 'ab'.repeat(32));
    work.checksum(prompt, 7, 'cd'.repeat(32));
    expect([...(await answers)].map(([peer, sha]) => [peer.id, sha])).toEqual([[prompt.id, 'cd'.repeat(32)]]);
    expect(rejected).toEqual([]);
    expect(late.status).toBe('ready');
  });
});
