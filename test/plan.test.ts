/** The row and unit arithmetic every plan shares (src/cluster/plan.ts). */
import { describe, expect, it } from 'vitest';
import { missingRanges } from '../src/cluster/plan.js';

describe('rows a replica still lacks', () => {
  it('are the parts of the batch that its own and the forwarded rows do not cover', () => {
    expect(missingRanges(64, [])).toEqual([[0, 64]]);
    expect(missingRanges(64, [[16, 32]])).toEqual([[0, 16], [32, 64]]);
    expect(missingRanges(64, [[32, 64], [0, 32]])).toEqual([]);
    expect(missingRanges(64, [[0, 16], [8, 24], [40, 48]])).toEqual([[24, 40], [48, 64]]);
  });
});
