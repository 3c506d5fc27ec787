import { describe, expect, it } from 'vitest';
import { Scheduler } from '../src/cluster/scheduler.js';
import { createTrainingMemory } from '../src/cluster/training_memory.js';
import { makeSpec } from '../src/model/spec.js';
import type { RemoteHub } from '../src/cluster/remote/hub.js';
import type { RowsForm } from '../src/cluster/remote/messages.js';
import type { Range } from '../src/cluster/plan.js';
import type { Team } from '../src/cluster/team.js';
import { syntheticDataset } from './helpers.js';

/**
 * A scheduler with no local compute (--threads 0) and one remote worker, faked: it answers every rows
 * request with its losses (as asked) and then, when `leaves`, is gone before the step's update.
 */
function soleWorker(leaves: boolean) {
  const dataset = syntheticDataset(64, 8);
  const memory = createTrainingMemory(makeSpec(dataset.features, [8], dataset.classes, 'sigmoid'), dataset, 64, 1);
  const worker = { id: 1, name: 'worker 1', speed: 1, status: 'ready' };
  const forms: RowsForm[] = [];
  const hub = {
    ready: () => (worker.status === 'ready' ? [worker] : []),
    standby: () => [],
    joining: () => [],
    requestRows: async (_w: unknown, step: number, _batch: number, range: Range, _samples: Int32Array, form: RowsForm) => {
      forms.push(form);
      if (leaves) worker.status = 'closed';
      return { t: 'rowsDone', step, range, rowLoss: new Float32Array(range[1] - range[0]).fill(0.5), hidden: [], deltas: [], ms: 1, applyMs: 0, waitMs: 0, queuedMs: 0 };
    },
    broadcastUpdate: () => hub.ready().length,
  };
  const team = { size: 1, capabilities: { compactRows: false, wholeStep: true, deviceState: false }, runPass: async () => [] } as unknown as Team;
  const scheduler = new Scheduler(memory, team, 'replicated', hub as unknown as RemoteHub, () => {});
  return { scheduler, forms };
}

describe('Scheduler, a sole remote worker', () => {
  const index = Int32Array.from({ length: 64 }, (_, i) => i);

  it('asks for its rows as their losses only, and lets it apply the step', async () => {
    const { scheduler, forms } = soleWorker(false);
    expect(await scheduler.computeRows(0, 0, index, 16, true)).toEqual({ done: true, replicated: true, rowsHere: false });
    expect(forms).toEqual([{ compact: false, lossOnly: true }]);
  });

  it('says the rows are not here when the worker is gone after sending only its losses: the step is applied here, from rows computed here', async () => {
    const { scheduler } = soleWorker(true);
    // A weight pass here must not read rows this process never received (Trainer.afterRows computes them).
    expect(await scheduler.computeRows(0, 0, index, 16, true)).toEqual({ done: true, replicated: false, rowsHere: false });
  });
});
