/** Replica (src/cluster/remote/replica.ts): the state a worker mirrors, and how it takes each plan's steps. */
import { describe, expect, it } from 'vitest';

/**
 * A replica of a 4→3→2 model at step 5 whose steps come by `plan`, the parameters every slice of its tests
 * carries (1, 2, 3, …), and slice(units): those units of them, packed.
 */
async function replicaOf(plan: 'sharded' | 'server') {
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
