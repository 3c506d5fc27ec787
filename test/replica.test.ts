/** Replica (src/cluster/remote/replica.ts): the state a worker mirrors, and how it takes each plan's steps. */
import { describe, expect, it } from 'vitest';
import type { ReplicaState, RowsMessage } from '../src/cluster/remote/messages.js';
import { paramsSha256 } from '../src/model/checksum.js';
import { makeSpec } from '../src/model/spec.js';
import { ADAM_DEFAULTS } from '../src/optim/adam.js';

/**
 * A replica of a 4→3→2 model at step 5 whose steps come by `plan`, the parameters every slice of its tests
 * carries (1, 2, 3, …), and slice(units): those units of them, packed.
 */
async function replicaOf(plan: 'replicated' | 'sharded' | 'server') {
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

/** A replica of the 4→3→2 model at step 5 whose steps are applied whole (replicated), from zero parameters. */
async function replicated() {
  const { replica } = await replicaOf('replicated');
  return replica;
}

/** A rows request of step 5 over `range` of a batch of 4 rows (fixed pixels; labels uneven, so that a step moves zero parameters). */
function rowsOf(range: [number, number], form: { compact?: boolean; lossOnly?: boolean } = {}): RowsMessage {
  const x = Float32Array.from({ length: 4 * 4 }, (_, i) => ((i * 7) % 11) / 11);
  return { t: 'rows', step: 5, batch: 4, range, x, labels: Uint8Array.from([0, 1, 1, 1]), compact: form.compact ?? false, lossOnly: form.lossOnly ?? false };
}

describe('a replica of a replicated run', () => {
  it('returns the rows it was asked for: every layer\'s activations and deltas, the last delta only when compact, the losses only when asked so', async () => {
    const replica = await replicated();
    const whole = await replica.rows(rowsOf([1, 3]));
    expect([whole.step, whole.range, whole.rowLoss.length]).toEqual([5, [1, 3], 2]);
    // Two rows: 3 hidden units and then 3 and 2 deltas each.
    expect(whole.hidden.map((h) => h.length)).toEqual([6]);
    expect(whole.deltas.map((d) => d.length)).toEqual([6, 4]);
    // Zero parameters: both classes equally likely, each row's loss ln 2.
    for (const loss of whole.rowLoss) expect(loss).toBeCloseTo(Math.LN2, 6);
    expect((await replica.rows(rowsOf([1, 3], { compact: true }))).deltas.map((d) => d.length)).toEqual([4]);
    const losses = await replica.rows(rowsOf([1, 3], { lossOnly: true }));
    expect([losses.hidden, losses.deltas, losses.rowLoss.length]).toEqual([[], [], 2]);
    await replica.close();
  });

  it('refuses rows of another step than its own, and dataset indices outside its copy of the data', async () => {
    const replica = await replicated();
    await expect(replica.rows({ ...rowsOf([0, 4]), step: 6 })).rejects.toThrow("rows: step 6 does not follow this replica's step 5");
    const { x: _pixels, ...byIndex } = rowsOf([0, 4]);
    await expect(replica.rows({ ...byIndex, index: Int32Array.from([0, 1, 2, 3]) })).rejects.toThrow('rows: sample 0 is outside the local dataset of 0');
    await replica.close();
  });

  it('ends on the same bits whether it computed every row or took half of them from another replica, whole or compact', async () => {
    const alone = await replicated();
    await alone.rows(rowsOf([0, 4]));
    expect(await alone.applyIfComplete()).toBe(true);
    const expected = await alone.checksumAt(6);
    for (const compact of [false, true]) {
      const [half, other] = [await replicated(), await replicated()];
      await half.rows(rowsOf([0, 2], { compact }));
      // Not every row here yet: it waits.
      expect(await half.applyIfComplete()).toBe(false);
      await half.received(await other.rows(rowsOf([2, 4], { compact })));
      expect(await half.applyIfComplete()).toBe(true);
      expect(await half.checksumAt(6), compact ? 'compact' : 'whole').toBe(expected);
      await Promise.all([half.close(), other.close()]);
    }
    await alone.close();
  });

  it('keeps the state before a step it applied early until the update confirms it, and refuses an update resending rows it had', async () => {
    const replica = await replicated();
    const before = paramsSha256(replica.state.params);
    await replica.rows(rowsOf([0, 4]));
    await replica.applyIfComplete();
    expect(replica.step).toBe(6);
    // The coordinator may still ask for the state or checksum of step 5.
    expect(await replica.checksumAt(5)).toBe(before);
    expect(await replica.checksumAt(6)).not.toBe(before);
    expect(((await replica.stateAt(5)) as ReplicaState).step).toBe(5);
    await expect(replica.stateAt(4)).rejects.toThrow('snapshot: asked for step 4, this replica is at step 6');
    const part = { range: [0, 4] as [number, number], x: new Float32Array(16), hidden: [], deltas: [] };
    await expect(replica.update({ t: 'update', step: 5, batch: 4, parts: [part] })).rejects.toThrow('update: step 5 sends rows this replica already had');
    await replica.close();
  });

  it('names the rows of a step that never arrived instead of applying it on stale rows', async () => {
    const replica = await replicated();
    await replica.rows(rowsOf([0, 2]));
    await expect(replica.update({ t: 'update', step: 5, batch: 4, parts: [] })).rejects.toThrow('update: rows 2–3 of step 5 never arrived');
    expect(replica.step).toBe(5);
    await expect(replica.update({ t: 'update', step: 7, batch: 4, parts: [] })).rejects.toThrow("update: step 7 does not follow this replica's step 5");
    await replica.close();
  });

  it('refuses slices (its steps are applied whole), and fits a new state only of the same model and batch', async () => {
    const replica = await replicated();
    expect(() => replica.slice({ t: 'slice', step: 5, units: [[0, 3], [0, 2]], params: new Float32Array(0) })).toThrow('slice: sent to a replica whose state said its steps come replicated');
    const { spec } = replica.memory;
    const state = { t: 'state' as const, spec, batchSize: 4, adam: ADAM_DEFAULTS, step: 9, generation: 1, params: new Float32Array(23), m: new Float32Array(23), v: new Float32Array(23), useLocalData: false, plan: 'replicated' as const };
    expect(replica.fits(state)).toBe(true);
    expect(replica.fits({ ...state, batchSize: 8 })).toBe(false);
    expect(replica.fits({ ...state, spec: makeSpec(4, [3], 2, 'relu') })).toBe(false);
    await replica.close();
  });
});
