import { describe, expect, it } from 'vitest';
import { resolveConfig } from '../src/config.js';
import { Trainer, type StepScheduler } from '../src/train/trainer.js';
import { makeSpec } from '../src/model/spec.js';
import { ADAM_DEFAULTS } from '../src/optim/adam.js';
import { createTrainingMemory, markDeviceAhead } from '../src/cluster/training_memory.js';
import { TrainingState } from '../src/cluster/training_state.js';
import { syntheticDataset } from './helpers.js';
import { train } from '../src/index.js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A scheduler for the trainer to drive: `given` are the members a test expects it to use; any other that the
 * trainer calls fails the test, naming it.
 */
function schedulerWith(given: Partial<StepScheduler>): StepScheduler {
  const unexpected = (name: string) => () => {
    throw new Error(`the trainer called scheduler.${name}, which this test does not expect`);
  };
  return {
    mode: 'split',
    verifying: false,
    serving: false,
    planName: 'split',
    local: { size: 1 },
    computeWholeStep: unexpected('computeWholeStep'),
    computeRows: unexpected('computeRows'),
    computeRowsHere: unexpected('computeRowsHere'),
    applyWeights: unexpected('applyWeights'),
    evaluate: unexpected('evaluate'),
    pullState: unexpected('pullState'),
    hasJoiners: unexpected('hasJoiners'),
    nobodyComputes: unexpected('nobodyComputes'),
    admit: unexpected('admit'),
    waitForParticipant: unexpected('waitForParticipant'),
    waitForJoin: unexpected('waitForJoin'),
    remoteMembers: unexpected('remoteMembers'),
    remoteRanks: unexpected('remoteRanks'),
    prefetch: unexpected('prefetch'),
    sendParams: unexpected('sendParams'),
    replicaState: unexpected('replicaState'),
    replaying: unexpected('replaying'),
    ...given,
  };
}

describe('Trainer', () => {
  it('after a one-call step with a non-finite gradient, recomputes the rows locally to name the layer and micro-shard', async () => {
    const dataset = syntheticDataset(64, 8);
    const spec = makeSpec(dataset.features, [8], dataset.classes, 'sigmoid');
    const memory = createTrainingMemory(spec, dataset, 64, 1);
    const rowPasses: boolean[] = [];
    // A scheduler whose one-call step reports layer 1's gradient as non-finite, and whose row pass (the
    // recomputation) leaves a NaN in layer 1's deltas at batch row 20.
    const scheduler = schedulerWith({
      mode: 'whole',
      computeWholeStep: async (_step: number, _generation: number, index: Int32Array) => {
        memory.batch.index.set(index);
        memory.batch.rowLoss.fill(0.5);
        return [{ nonFiniteLayers: [1] }];
      },
      // The recomputation on the local slots (true: it ran there, not on remote participants).
      computeRowsHere: async () => {
        rowPasses.push(true);
        memory.batch.deltas[1][20 * dataset.classes + 2] = NaN;
      },
    });
    const state = new TrainingState(memory);
    const trainer = new Trainer(resolveConfig({ threads: 1 }), dataset, scheduler, memory, state, ADAM_DEFAULTS);
    const index = Int32Array.from({ length: 64 }, (_, i) => 63 - i);
    await expect(trainer.trainStep(index)).rejects.toThrow(
      'step 0: non-finite gradient in layer 1 (W1, b1), micro-shard 1 (batch rows 16–31, first at dataset sample 43); training stopped with the last good parameters kept',
    );
    expect(rowPasses).toEqual([true]);
    expect([state.step, state.generation]).toEqual([0, 0]);
  });

  it('computes the rows here before its weight pass when the row pass says they are not here (compact, or losses only)', async () => {
    const dataset = syntheticDataset(64, 8);
    const memory = createTrainingMemory(makeSpec(dataset.features, [8], dataset.classes, 'sigmoid'), dataset, 64, 1);
    const calls: string[] = [];
    const scheduler = schedulerWith({
      mode: 'replicated',
      hasJoiners: () => false,
      nobodyComputes: () => false,
      computeRows: async () => {
        memory.batch.rowLoss.fill(0.5);
        return { done: true as const, replicated: false, rowsHere: false };
      },
      computeRowsHere: async () => void calls.push('rows here'),
      applyWeights: async () => (calls.push('weights'), [{ nonFiniteLayers: [] }]),
    });
    const trainer = new Trainer(resolveConfig({ threads: 1 }), dataset, scheduler, memory, new TrainingState(memory), ADAM_DEFAULTS);
    await trainer.trainStep(Int32Array.from({ length: 64 }, (_, i) => i));
    expect(calls).toEqual(['rows here', 'weights']);
  });

  it('ends on the last state this process held, saying so, when the device holding a newer one fails', async () => {
    const dataset = syntheticDataset(64, 8);
    const spec = makeSpec(dataset.features, [8], dataset.classes, 'sigmoid');
    const memory = createTrainingMemory(spec, dataset, 64, 1);
    const state = new TrainingState(memory);
    state.commit();
    state.commit();
    // Steps 3 and 4 ran on a device, which then fails as its state is pulled.
    markDeviceAhead(memory, state.step, state.generation);
    state.commit();
    state.commit();
    expect(() => state.params).toThrow('internal: the state of step 4 was read here while a device holds it (pull it first)');
    const scheduler = schedulerWith({ pullState: async () => Promise.reject(new Error('device lost')) });
    const trainer = new Trainer(resolveConfig({ threads: 1 }), dataset, scheduler, memory, state, ADAM_DEFAULTS);
    await expect(trainer.current()).rejects.toThrow("the device's state of step 4 could not be read back (device lost); the run ends on the state of step 2, the last this process held");
    expect([state.step, state.generation, state.onDevice]).toEqual([2, 0, false]);
    expect(() => state.params).not.toThrow();
  });

  it('does not count the time a beforeStep hook takes as training time', async () => {
    const dataset = syntheticDataset(128, 8);
    const summary = await train(
      { threads: 1, epochs: 1, hidden: [8], trainSamples: 0, testSamples: 0, out: mkdtempSync(join(tmpdir(), 'dtrain-hook-')) },
      { dataset, beforeStep: (step) => (step === 0 ? new Promise<void>((resolve) => setTimeout(resolve, 1500)) : undefined) },
    );
    expect(summary.steps).toBe(2);
    expect(summary.epochs[0].seconds).toBeLessThan(1);
  });
});
