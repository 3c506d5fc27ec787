import { describe, expect, it } from 'vitest';
import { Scheduler } from '../src/cluster/scheduler.js';
import { createTrainingMemory } from '../src/cluster/training_memory.js';
import { makeSpec, paramLayout } from '../src/model/spec.js';
import type { RowsForm } from '../src/cluster/remote/messages.js';
import { paramsSha256 } from '../src/model/checksum.js';
import { idleTeam, membersWith, syntheticDataset, loopbackPeers } from './helpers.js';

/**
 * A scheduler with no local compute (--threads 0) and one remote worker, faked: it answers every rows
 * request with its losses (as asked) and then, when `leaves`, is gone before the step's update.
 */
async function soleWorker(leaves: boolean) {
  const dataset = syntheticDataset(64, 8);
  const memory = createTrainingMemory(makeSpec(dataset.features, [8], dataset.classes, 'sigmoid'), dataset, 64, 1);
  const { peers: [worker], close } = await loopbackPeers(1);
  worker.speed = 1;
  const forms: RowsForm[] = [];
  const hub = membersWith({
    ready: () => (worker.status === 'ready' ? [worker] : []),
    requestRows: async (_worker, step, _batch, range, _samples, form) => {
      forms.push(form);
      if (leaves) worker.status = 'closed';
      return { t: 'rowsDone', step, range, rowLoss: new Float32Array(range[1] - range[0]).fill(0.5), hidden: [], deltas: [], ms: 1, applyMs: 0, waitMs: 0, queuedMs: 0 };
    },
    broadcastUpdate: () => hub.ready().length,
  });
  const scheduler = new Scheduler(memory, idleTeam(), 'replicated', hub, () => {});
  return { scheduler, forms, close };
}

describe('Scheduler, a sole remote worker', () => {
  const index = Int32Array.from({ length: 64 }, (_, i) => i);

  it('asks for its rows as their losses only, and lets it apply the step', async () => {
    const { scheduler, forms, close } = await soleWorker(false);
    expect(await scheduler.computeRows(0, 0, index, 16, true)).toEqual({ done: true, replicated: true, rowsHere: false });
    expect(forms).toEqual([{ compact: false, lossOnly: true }]);
    await close();
  });

  it('says the rows are not here when the worker is gone after sending only its losses: the step is applied here, from rows computed here', async () => {
    const { scheduler, close } = await soleWorker(true);
    // A weight pass here must not read rows this process never received (Trainer.afterRows computes them).
    expect(await scheduler.computeRows(0, 0, index, 16, true)).toEqual({ done: true, replicated: false, rowsHere: false });
    await close();
  });
});

describe('Scheduler, replicas at an epoch\'s end', () => {
  it("asks the replicas' checksums once when the state just taken is the one verified, and names as diverged those confirm resynced", async () => {
    const dataset = syntheticDataset(64, 8);
    const memory = createTrainingMemory(makeSpec(dataset.features, [8], dataset.classes, 'sigmoid'), dataset, 64, 1);
    const { peers, close } = await loopbackPeers(3);
    const total = paramLayout(memory.spec).total;
    const state = { params: new Float32Array(total).fill(0.25), m: new Float32Array(total), v: new Float32Array(total) };
    const sha = paramsSha256(state.params);
    let asked = 0;
    const hub = membersWith({
      ready: () => peers.filter((p) => p.status === 'ready'),
      fetchState: async () => state,
      // The third replica differs from the other two.
      checksumsAt: async () => (asked++, new Map(peers.filter((p) => p.status === 'ready').map((p, i) => [p, i === 2 ? 'f'.repeat(64) : sha]))),
      resync: (peer) => void (peer.status = 'joining'),
    });
    const scheduler = new Scheduler(memory, idleTeam(), 'replicated', hub, () => {});
    expect(await scheduler.replicaState(5)).toBe(state);
    expect(peers.map((p) => p.status)).toEqual(['ready', 'ready', 'joining']);
    expect(await scheduler.verifyReplicas(5, sha)).toEqual([peers[2].name]);
    expect(asked).toBe(1);
    // Once only: the next verification asks again (the resynced replica is no longer ready, and not named).
    expect(await scheduler.verifyReplicas(5, sha)).toEqual([]);
    expect(asked).toBe(2);
    // Another state than the one taken: asked again, every differing replica named.
    expect(await scheduler.replicaState(6)).toBe(state);
    expect(await scheduler.verifyReplicas(6, 'e'.repeat(64))).toEqual([peers[0].name, peers[1].name]);
    expect(asked).toBe(4);
    await close();
  });
});

describe('Scheduler, a replay', () => {
  it("leaves a replay's weight passes out of the participants' record; the next step's own pass is in it", async () => {
    const dataset = syntheticDataset(64, 8);
    const memory = createTrainingMemory(makeSpec(dataset.features, [8], dataset.classes, 'sigmoid'), dataset, 64, 1);
    const scheduler = new Scheduler(memory, idleTeam(), 'replicated', undefined, () => {});
    const weights = (step: number) => [{ kind: 'weights' as const, step, generation: step % 2, batch: 64, units: [], slot: 0 }];
    scheduler.replaying(3, 5);
    await scheduler.applyWeights(weights(3));
    await scheduler.applyWeights(weights(4));
    expect(scheduler.takeParticipants()).toEqual([]);
    await scheduler.applyWeights(weights(5));
    expect(scheduler.takeParticipants()).toMatchObject([{ id: 'local', kind: 'local', rows: 0 }]);
  });
});
