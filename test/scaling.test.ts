import { describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runScaling } from '../scripts/scaling.js';

describe('scaling experiment', () => {
  it('runs a tiny matrix end to end: every run ends with the same parameters, table and plot written', async () => {
    const out = mkdtempSync(join(tmpdir(), 'dtrain-scaling-'));
    const result = await runScaling({ threads: [1, 2], remote: [1], microBatch: [16, 32], steps: 4, trainSamples: 256, out });
    expect(result.rows).toHaveLength(6);
    expect(result.identical).toBe(true);
    expect(result.table).toMatch(/^\| remote workers \| 1 \| 32 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| \d+ \| [\d.]+ \| [\d.]+ MB \| \d+% \|$/m);
    expect(result.table).toContain('Every dtrain run ended with paramsSha256 ');
    expect(existsSync(join(out, 'scaling.md')) && existsSync(join(out, 'scaling.svg'))).toBe(true);
    expect(result.svg.match(/<circle class="point" data-series="local threads"/g)).toHaveLength(4);
  });
});
