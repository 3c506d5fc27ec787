import { describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runScaling } from '../scripts/scaling.js';
import { parseRate } from '../scripts/rates.js';
import { TestNetwork } from '../scripts/netns.js';

const tiny = { hidden: [32, 16], trainSamples: 256, steps: 4, warmup: 1 };
const unavailable = TestNetwork.unavailable();
if (unavailable) console.warn(`test/scaling.test.ts --link is skipped: ${unavailable}`);

describe('scaling experiment', () => {
  it('strong scaling of a tiny matrix: every run ends with the same parameters, table, rows and plot written', async () => {
    const out = mkdtempSync(join(tmpdir(), 'dtrain-scaling-'));
    const result = await runScaling({ ...tiny, batchSize: 32, threads: [1, 2], remote: [1], microBatch: [8, 16], out });
    expect(result.rows).toHaveLength(6);
    expect(result.rows.every((r) => r.globalBatch === 32 && r.model === '784-32-16-10')).toBe(true);
    expect(result.identical).toBe(true);
    expect(result.table).toMatch(/^\| remote workers \| auto: replicated \| 784-32-16-10 \| 32 \| loopback \| 1 \| 16 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| \d+ \| [\d.]+ \| [\d.]+ MB \| \d+% \| [\d.]+ \| – \|$/m);
    expect(result.table).toMatch(/^\| local threads \| – \| 784-32-16-10 \| 32 \| – \| 2 \| 8 \| /m);
    expect(result.table).toContain('Every dtrain run at global batch 32 ended with paramsSha256 ');
    expect(['md', 'json', 'svg'].every((ext) => existsSync(join(out, `scaling.${ext}`)))).toBe(true);
    expect(JSON.parse(readFileSync(join(out, 'scaling.json'), 'utf8')).rows).toHaveLength(6);
    // One series per kind, drawn for the first micro-batch: 2 points of local threads in each of the two panels.
    expect(result.svg.match(/<circle class="point" data-series="local threads"/g)).toHaveLength(4);
  });

  it('puts the cost model\'s estimate beside a remote run of two workers, in the table and the plot', async () => {
    const out = mkdtempSync(join(tmpdir(), 'dtrain-scaling-'));
    const result = await runScaling({ ...tiny, steps: 20, batchSize: 32, threads: [1], remote: [2], plans: ['replicated'], microBatch: [8], out });
    const remote = result.rows.find((r) => r.kind === 'remote workers')!;
    expect(remote.estimatedMs).toBeGreaterThan(0);
    expect(result.table).toMatch(/^\| remote workers \| replicated \|.* \| [\d.]+ \|$/m);
    expect(result.svg).toContain('remote workers, replicated, loopback (cost model)');
  });

  it('weak scaling: the global batch grows with the participants, one paramsSha256 per global batch', async () => {
    const out = mkdtempSync(join(tmpdir(), 'dtrain-scaling-'));
    const result = await runScaling({ ...tiny, batchSize: 16, weak: true, threads: [1, 2], remote: [2], plans: ['replicated', 'sharded'], microBatch: [8], out });
    expect(result.rows.map((r) => [r.kind, r.plan, r.participants, r.globalBatch])).toEqual([
      ['local threads', '–', 1, 16],
      ['local threads', '–', 2, 32],
      ['remote workers', 'replicated', 2, 32],
      ['remote workers', 'sharded', 2, 32],
    ]);
    expect(result.identical).toBe(true);
    expect(result.table).toContain('Weak scaling');
    expect(result.table).toMatch(/global batch 16 ended with paramsSha256 [0-9a-f]{64}\.\nEvery dtrain run at global batch 32 ended/);
  });

  it('--link: a rate tc understands, or a one-line refusal', async () => {
    expect(parseRate('1gbit')).toBe(1e9);
    expect(parseRate('100mbit')).toBe(1e8);
    await expect(runScaling({ ...tiny, link: '1gbyte', out: mkdtempSync(join(tmpdir(), 'dtrain-scaling-')) })).rejects.toThrow(/--link 1gbyte: expected a rate/);
  });

  it.skipIf(!!unavailable)(`--link: each remote worker behind a shaped veth, same parameters${unavailable ? ` (skipped: ${unavailable})` : ''}`, async () => {
    const out = mkdtempSync(join(tmpdir(), 'dtrain-scaling-'));
    const result = await runScaling({ ...tiny, batchSize: 32, threads: [1], remote: [1], microBatch: [16], link: '1gbit', out });
    expect(result.rows.map((r) => r.link)).toEqual(['–', '1gbit']);
    expect(result.identical).toBe(true);
    expect(result.table).toContain('each remote worker behind a 1gbit link');
  });
});
