import { describe, expect, it } from 'vitest';
import { SlotRunner } from '../src/cluster/slot_runner.js';
import { createTrainingMemory } from '../src/cluster/training_memory.js';
import { TrainingState } from '../src/cluster/training_state.js';
import { makeSpec } from '../src/model/spec.js';
import { initParams } from '../src/model/init.js';
import { ADAM_DEFAULTS } from '../src/optim/adam.js';
import { syntheticDataset } from './helpers.js';

describe('a slot', () => {
  // tfjs keeps its own copy of the parameters (onnxruntime's C API path reads them in place), so a stale
  // cache shows in its outputs.
  it('reloads its engine\'s parameters when a state is loaded at the step and generation it cached', async () => {
    const dataset = syntheticDataset(16, 32, 20, 4);
    const memory = createTrainingMemory(makeSpec(20, [8], 4, 'sigmoid'), dataset, 16, 1);
    const state = new TrainingState(memory);
    initParams(memory.spec, 1, state.params);
    const runner = await SlotRunner.create({ memory, engine: { engine: 'tfjs', device: 'cpu' }, adam: ADAM_DEFAULTS });
    const evaluate = async () => {
      await runner.run({ kind: 'eval', step: 0, generation: 0, range: [0, 32] });
      return Float32Array.from(memory.evalLoss);
    };
    const before = await evaluate();
    // A resynchronisation: other parameters, loaded as the state of the same step and generation.
    const other = { ...state.arrays() };
    const params = Float32Array.from(other.params);
    initParams(memory.spec, 2, params);
    state.load({ params, m: other.m.slice(), v: other.v.slice() }, 0, 0);
    const after = await evaluate();
    expect(after).not.toEqual(before);
    const fresh = await SlotRunner.create({ memory, engine: { engine: 'tfjs', device: 'cpu' }, adam: ADAM_DEFAULTS });
    await fresh.run({ kind: 'eval', step: 0, generation: 0, range: [0, 32] });
    expect(Float32Array.from(memory.evalLoss)).toEqual(after);
    await Promise.all([runner.dispose(), fresh.dispose()]);
  });
});
