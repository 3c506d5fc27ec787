/**
 * The chaos run's short version (scripts/chaos.ts, docs/chaos.md): one round of ~45 s with every kind of
 * fault at once, on one plan. The seed is the day's number (or DTRAIN_CHAOS_SEED), so the plan and the
 * schedule change from one day to the next; a failure names the seed and the file that replays it.
 */
import { describe, expect, it } from 'vitest';
import { FAULT_KINDS, PLANS, makeSchedule, runChaos } from '../scripts/chaos.js';
import { TestNetwork } from '../scripts/netns.js';

const SEED = Number(process.env.DTRAIN_CHAOS_SEED ?? Math.floor(Date.now() / 86_400_000));
const PLAN = PLANS[SEED % PLANS.length];
const LINK_FAULTS = ['cut-short', 'cut-long', 'rate-limit'];
const unavailable = TestNetwork.unavailable();
if (unavailable) console.warn(`test/chaos.test.ts runs its workers on loopback, without link cuts or rate limits: ${unavailable}`);

describe('the chaos run (short)', () => {
  it(`ends on the threads-only hash under every fault at once, with memory, descriptors and timers flat (seed ${SEED}, --plan ${PLAN})`, async () => {
    const schedule = makeSchedule(SEED, 0.75, [PLAN], 3);
    const lines: string[] = [];
    const result = await runChaos({ schedule, say: (line) => lines.push(line) });
    const report = `${lines.join('\n')}\n(DTRAIN_KEEP_TEST_FILES=1 keeps the logs; DTRAIN_CHAOS_SEED=${SEED} runs this schedule again)`;
    expect(result.failures, report).toEqual([]);
    const [round] = result.rounds;
    expect(round.paramsSha256, report).toBe(round.reference);
    expect(round.steps, report).toBeGreaterThan(200);
    // Every kind of fault was injected, or skipped for a reason (its target was already down).
    for (const kind of FAULT_KINDS) {
      const faults = round.faults.filter((f) => f.kind === kind);
      expect(faults.length, `${kind}\n${report}`).toBeGreaterThan(0);
      if (!unavailable || !LINK_FAULTS.includes(kind)) expect(faults.some((f) => !f.skipped) || faults.every((f) => f.skipped === 'not running'), `${kind}\n${report}`).toBe(true);
    }
    // The coordinator was killed and resumed.
    expect(round.faults.find((f) => f.kind === 'coordinator-kill')!.skipped, report).toBeUndefined();
  }, 150_000);
});
