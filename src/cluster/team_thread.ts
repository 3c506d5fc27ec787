/**
 * The entry point of each piscina worker thread. Its SlotRunner is built once from the shared memory in
 * workerData; then the thread joins the team: it runs the task its slot is given in each pass published
 * in the team's control block (team_control.ts), until told to exit. A task carries only step numbers and ranges.
 */
import { workerData } from 'node:worker_threads';
import { SlotRunner, type SlotInit } from './slot_runner.js';
import { TeamControl } from './team_control.js';
import { GpuTurns } from '../engine/webgpu/turns.js';

export interface TeamThreadInit extends SlotInit {
  team: SharedArrayBuffer;
  slots: number;
}

let worker: Promise<SlotRunner> | undefined;

/** Fault injection (SlotInit.faults): sleeps before claiming the weights task of the stall step, once. */
function stallIfAsked(faults: Int32Array, task: ReturnType<TeamControl['read']>): void {
  if (task?.kind !== 'weights' || task.step !== faults[2]) return;
  const ms = Atomics.exchange(faults, 3, 0);
  if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export default async function runTeamSlot({ slot, startSeq }: { slot: number; startSeq: number }): Promise<string> {
  const init = workerData as TeamThreadInit;
  worker ??= SlotRunner.create(init);
  const w = await worker;
  const team = new TeamControl(init.slots, init.memory.spec.sizes.length - 1, init.team);
  team.wake();
  for (let seen = startSeq; ; ) {
    seen = team.awaitPass(seen);
    if (init.faults) stallIfAsked(init.faults, team.read(slot));
    // The main thread may have taken this pass's task already (this thread came late to it).
    if (!team.claim(slot, seen)) continue;
    const task = team.read(slot);
    if (task?.kind === 'exit') return w.backend;
    if (!task) {
      team.finish(slot, seen, { nonFiniteLayers: [] });
      continue;
    }
    const faults = init.faults;
    if (faults && task.kind === 'weights' && task.step === faults[0] && Atomics.sub(faults, 1, 1) > 0) {
      // Die in the middle of the step, as a crashed thread would: at once, whatever the engine. (A timer's
      // callback never runs here with the C API path, whose calls never yield to the event loop.) On a GPU,
      // on the device: holding the turn the process's threads take on it (engine/webgpu/turns.ts).
      const turns = init.engine.webgpu?.turns;
      if (turns) await new GpuTurns(turns).take(() => process.exit(1));
      process.exit(1);
    }
    try {
      team.finish(slot, seen, await w.run(task));
    } catch {
      team.finish(slot, seen, 'failed');
    }
  }
}
