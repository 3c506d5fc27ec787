/**
 * The chaos run's short version (scripts/chaos.ts, docs/chaos.md): one round of ~45 s with every kind of
 * fault at once, on one plan. The seed is the day's number (or DTRAIN_CHAOS_SEED), so the plan and the
 * schedule change from one day to the next; a failure names the seed and the file that replays it.
 */
import { describe, expect, it } from 'vitest';
import { LINK_FAULTS, PEER_FAULTS, PLANS, checkLife, kindsFor, makeSchedule, runChaos } from '../scripts/chaos.js';
import { TestNetwork } from '../scripts/netns.js';

const SEED = Number(process.env.DTRAIN_CHAOS_SEED ?? Math.floor(Date.now() / 86_400_000));
const PLAN = PLANS[SEED % PLANS.length];
const unavailable = TestNetwork.unavailable();
if (unavailable) console.warn(`test/chaos.test.ts runs its workers on loopback, without link cuts or rate limits: ${unavailable}`);

describe('a process life as the chaos run judges it', () => {
  /** 60 samples a second apart; `at(i)` gives the i-th one's RSS (MB), descriptors and timers. */
  const life = (at: (i: number) => [number, number, number]) =>
    Array.from({ length: 60 }, (_, i) => {
      const [rss, fds, timers] = at(i);
      return { t: 1000 * i, sample: { rss: rss * 2 ** 20, heap: 0, fds, resources: { Timeout: timers, TCPSocketWrap: 1 } } };
    });
  const always = () => true;

  it('passes a flat life with spikes and a warm-up growth in its first half, and fails a leak per reconnection or growing memory', () => {
    const flat = checkLife('flat', life((i) => [i < 20 ? 115 : i % 7 === 0 ? 150 : 132, 25, 1]), 0, 20, 4, always);
    expect(flat.failures).toEqual([]);
    // One descriptor and one timer more at every reconnection, one every 5 s.
    const leaking = checkLife('leaking', life((i) => [130, 25 + Math.floor(i / 5), 1 + Math.floor(i / 5)]), 0, 12, 4, always);
    expect(leaking.failures).toEqual(['leaking: fds grew from 26 to 33 over 12 connections (slack 4)', 'leaking: timers grew from 2 to 9 over 12 connections (slack 4)']);
    const growing = checkLife('growing', life((i) => [120 + i, 25, 1]), 0, 12, 4, always);
    expect(growing.failures).toEqual([expect.stringMatching(/^growing: RSS grew from 153 MB \(highest of the first half\) to 171 MB \(median of the last third\) \(bound ×1\.1, at least \+16 MB\)$/)]);
    // Counts are compared at quiet moments only: a stranger's connections in between do not count.
    const noisy = checkLife('noisy', life((i) => [130, i % 10 < 5 ? 25 : 225, 1]), 0, 12, 4, (t) => t / 1000 % 10 < 5);
    expect(noisy.failures).toEqual([]);
    expect(checkLife('short', life(() => [130, 25, 1]).slice(0, 25), 0, 0, 4, always).line).toBe('short: 24 s, not judged (no quiet moments 20 s apart)');
  });
});

describe('the chaos schedule', () => {
  it('gives the peer-links round the faults of the links between workers and no liar, and the --verify rounds the liar and no peer faults', () => {
    const schedule = makeSchedule(11, 2.5, ['sharded', 'sharded-peers'], 3);
    const [verified, peers] = schedule.rounds.map((r) => new Set(r.faults.map((f) => f.kind)));
    expect(verified.has('liar')).toBe(true);
    expect(PEER_FAULTS.filter((k) => verified.has(k))).toEqual([]);
    expect(peers.has('liar')).toBe(false);
    expect(PEER_FAULTS.filter((k) => peers.has(k))).toEqual(PEER_FAULTS);
    expect([...peers].sort()).toEqual(kindsFor('sharded-peers').sort());
  });
});

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
    for (const kind of kindsFor(PLAN)) {
      const faults = round.faults.filter((f) => f.kind === kind);
      expect(faults.length, `${kind}\n${report}`).toBeGreaterThan(0);
      if (!unavailable || !LINK_FAULTS.includes(kind)) expect(faults.some((f) => !f.skipped) || faults.every((f) => f.skipped === 'not running' || f.skipped === 'no connection between them'), `${kind}\n${report}`).toBe(true);
    }
    // The coordinator was killed and resumed.
    expect(round.faults.find((f) => f.kind === 'coordinator-kill')!.skipped, report).toBeUndefined();
    // Without --verify the steps went between the workers, over the links the peer faults broke.
    if (PLAN === 'sharded-peers') expect(round.peers!.steps, report).toBeGreaterThan(0);
  }, 150_000);
});
