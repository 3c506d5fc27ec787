import { describe, expect, it } from 'vitest';
import { createRequire } from 'node:module';
import { cruise } from 'dependency-cruiser';

const require = createRequire(import.meta.url);
const ruleSet = require('../.dependency-cruiser.cjs');

async function violations(baseDir: string): Promise<string[]> {
  // The options the rules file states (tsPreCompilationDeps, exclude, doNotFollow), not a copy of them.
  const { output } = await cruise(['src'], { validate: true, ruleSet, baseDir, ...ruleSet.options });
  if (typeof output === 'string') throw new Error('expected a cruise result object');
  return output.summary.violations.map((v) => `${v.rule.name}: ${v.from} -> ${v.to}`);
}

describe('the layer rules (.dependency-cruiser.cjs)', () => {
  it('hold for src/', async () => {
    expect(await violations(new URL('..', import.meta.url).pathname)).toEqual([]);
  });

  it('refuse an upward import and a circle', async () => {
    const found = await violations(new URL('./fixtures/layers', import.meta.url).pathname);
    expect(found).toContain('foundation-imports-upward: src/model/low.ts -> src/train/high.ts');
    expect(found.some((v) => v.startsWith('no-circular: '))).toBe(true);
  });
});
