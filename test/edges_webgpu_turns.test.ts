/**
 * The GPU turn (issue 23): a thread that dies while on the device gives its turn back, so the others do not
 * wait for ever. Tested on the turn word alone with real pool threads (piscina, as the thread team runs them):
 * the turn logic needs no device. And on a device (lavapipe, test/setup/software-gpu.ts): a pool thread of a
 * WebGPU run that dies holding the turn leaves the run to finish on the same parameters.
 */
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { afterEach, describe, expect, it } from 'vitest';
import { GpuTurns, newTurnWord, releaseTurnsOnExit } from '../src/engine/webgpu/turns.js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ThreadTeam } from '../src/cluster/thread_team.js';
import { probeWebGpuAdapter } from '../src/engine/webgpu/adapter.js';
import { train, type TrainConfig } from '../src/index.js';

const holder = fileURLToPath(new URL('./fixtures/turn_holder.mjs', import.meta.url));
const pools: Piscina[] = [];
afterEach(async () => void (await Promise.all(pools.splice(0).map((p) => p.destroy()))));

function pool(word: Int32Array): Piscina {
  const p = new Piscina({ filename: holder, minThreads: 1, maxThreads: 1 });
  releaseTurnsOnExit(word, p);
  pools.push(p);
  return p;
}

/** Resolves with what `take` returned, or 'still waiting' after `ms`. */
function takeWithin(turns: GpuTurns, ms: number): Promise<string> {
  return Promise.race([turns.take(() => 'taken'), new Promise<string>((resolve) => setTimeout(() => resolve('still waiting'), ms).unref())]);
}

/** Waits until the pool thread says it is on the device. */
async function onDevice(flag: Int32Array): Promise<void> {
  while (Atomics.load(flag, 0) === 0) await Atomics.waitAsync(flag, 0, 0, 10_000).value;
}

describe('the GPU turn', () => {
  it('is given back when the thread holding it dies on the device', async () => {
    const word = newTurnWord();
    const flag = new Int32Array(new SharedArrayBuffer(4));
    const died = pool(word).run({ word, flag, how: 'exit' }).then(() => 'returned', (e: Error) => e.message);
    await onDevice(flag);
    expect(await died).toMatch(/exit/i);
    expect(await takeWithin(new GpuTurns(word), 5000)).toBe('taken');
  }, 20_000);

  it('is still one at a time: a living holder keeps the others waiting until it lets go', async () => {
    const word = newTurnWord();
    const flag = new Int32Array(new SharedArrayBuffer(4));
    const done = pool(word).run({ word, flag, how: 'hold' });
    await onDevice(flag);
    const turns = new GpuTurns(word);
    expect(await takeWithin(turns, 300)).toBe('still waiting');
    Atomics.store(flag, 0, 2);
    Atomics.notify(flag, 0);
    expect(await done).toBe('released');
    expect(await takeWithin(turns, 5000)).toBe('taken');
  }, 20_000);

  it("a thread that dies off the device leaves another's turn alone", async () => {
    const word = newTurnWord();
    const flag = new Int32Array(new SharedArrayBuffer(4));
    const turns = new GpuTurns(word);
    let letGo = () => {};
    const mine = turns.take(() => new Promise<void>((resolve) => (letGo = resolve)));
    // The pool thread waits for the turn this thread holds, then is destroyed while waiting.
    const p = pool(word);
    const waiting = p.run({ word, flag, how: 'exit' }).catch(() => 'gone');
    await new Promise((resolve) => setTimeout(resolve, 200));
    await p.destroy();
    pools.splice(pools.indexOf(p), 1);
    await waiting;
    expect(Atomics.load(word, 0)).not.toBe(0);
    letGo();
    await mine;
    expect(Atomics.load(word, 0)).toBe(0);
  }, 20_000);
});

/** Why there is no WebGPU device, or undefined when there is one (as test/webgpu.test.ts). */
function noDevice(): string | undefined {
  if (process.env.DTRAIN_SOFTWARE_GPU_UNAVAILABLE) return `scripts/software-gpu.sh: ${process.env.DTRAIN_SOFTWARE_GPU_UNAVAILABLE}`;
  const probed = probeWebGpuAdapter();
  return 'missing' in probed ? `no WebGPU adapter: ${probed.detail}` : undefined;
}
const reason = noDevice();
if (reason) console.warn(`test/edges_webgpu_turns.test.ts: the WebGPU run is skipped: ${reason}`);

(reason ? describe.skip : describe)('a WebGPU run whose pool thread dies on the device', () => {
  it('finishes, the main thread computing the dead thread\'s task, with the parameters of a run without the death', async () => {
    const out = mkdtempSync(join(tmpdir(), 'dtrain-edges-turns-'));
    const config: Partial<TrainConfig> = { device: 'webgpu', allowSoftwareGpu: true, threads: 2, trainSamples: 640, testSamples: 100, epochs: 1, steps: 5, logEvery: 1000, export: false };
    const reference = await train({ ...config, out: join(out, 'reference') });
    let team: ThreadTeam | undefined;
    const run = train({ ...config, out: join(out, 'death') }, { faults: { threadExitAtStep: 2, times: 1 }, onTeam: (t: ThreadTeam) => (team = t) });
    const outcome = await Promise.race([run, new Promise<'blocked'>((resolve) => setTimeout(() => resolve('blocked'), 60_000).unref())]);
    expect(outcome).not.toBe('blocked');
    expect(team!.retries + team!.taken).toBeGreaterThanOrEqual(1);
    expect(outcome !== 'blocked' && outcome.paramsSha256).toBe(reference.paramsSha256);
  }, 120_000);
});
