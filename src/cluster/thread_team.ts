/**
 * Local worker threads: the coordinator's main thread computes slot 0 itself and a team of threads - 1
 * piscina threads computes the others, so N threads keep exactly N cores busy. Each pool thread runs one
 * long piscina task, a loop over the passes published in a shared control block (team_control.ts).
 *
 * Tasks are idempotent (a step reads generation g and writes g ^ 1), so the task of a thread that threw
 * or died is simply computed again by the main thread, with the same result; piscina replaces a dead
 * thread and it rejoins the team at the next pass.
 */
import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import { releaseTurnsOnExit } from '../engine/webgpu/turns.js';
import { compiled } from '../paths.js';
import type { Task, TaskResult, SlotInit } from './slot_runner.js';
import { TeamControl } from './team_control.js';
import type { TeamThreadInit } from './team_thread.js';
import { MainSlot, type Team } from './team.js';

/** A slot whose thread died this many times in a row is not given a thread again. */
const MAX_REJOINS = 3;

export interface ThreadTeamOptions {
  /** Compute threads in all, the coordinator's main thread included (at least 2). */
  threads: number;
}

export class ThreadTeam implements Team {
  /** Tasks computed again by the main thread after their pool thread threw or died. */
  retries = 0;
  /** Tasks the main thread took because their pool thread had not started them when its own was done. */
  taken = 0;
  /** Slots whose pool thread is running its team loop. */
  private readonly alive: boolean[];
  /** Deaths of each slot's thread in a row; after MAX_REJOINS the main thread keeps the slot's work. */
  private readonly deaths: number[];
  private passes: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly local: MainSlot,
    private readonly pool: Piscina,
    private readonly team: TeamControl,
    readonly size: number,
  ) {
    this.alive = Array.from({ length: size }, (_, s) => s > 0);
    this.deaths = new Array<number>(size).fill(0);
  }

  static async create(init: SlotInit, options: ThreadTeamOptions): Promise<ThreadTeam> {
    const team = new TeamControl(options.threads, init.memory.spec.sizes.length - 1);
    // Tutorial MLP, 2 threads on 2 vCPUs, 600 steps, five interleaved pairs: median of the runs' mean steps
    // 1.32 against 1.38 ms with the short spin (a small gain, within this machine's spread of ±15 %).
    if (options.threads <= availableParallelism()) team.mainSpins = 200_000;
    const poolThreads = options.threads - 1;
    const pool = new Piscina({
      // Under vitest this module is TypeScript; worker threads always load the build.
      filename: compiled('cluster/team_thread.js'),
      minThreads: poolThreads,
      maxThreads: poolThreads,
      idleTimeout: Number.MAX_SAFE_INTEGER,
      concurrentTasksPerWorker: 1,
      workerData: { ...init, team: team.buffer, slots: options.threads } satisfies TeamThreadInit,
    });
    // A thread that dies on the GPU gives its turn back, or the others would wait for it for ever.
    const turnWord = init.engine.webgpu?.turns;
    if (turnWord) releaseTurnsOnExit(turnWord, pool);
    const workers = new ThreadTeam(await MainSlot.create(init), pool, team, options.threads);
    // Every slot's engine is started before the first step, so that it does not pay for session creation.
    const joined = team.signal;
    for (let slot = 1; slot < options.threads; slot++) workers.join(slot, 0);
    while (team.signal - joined < poolThreads) await team.awaitSignal(team.signal);
    return workers;
  }

  /** Starts a slot's team loop on a pool thread; it handles passes published after `startSeq`. */
  private join(slot: number, startSeq: number): void {
    this.alive[slot] = true;
    this.pool.run({ slot, startSeq }).then(
      () => undefined,
      () => {
        this.alive[slot] = false;
        this.deaths[slot]++;
        this.team.wake();
      },
    );
  }

  get capabilities() {
    return this.local.worker.capabilities;
  }

  get description(): string {
    return `${this.size} threads (main + ${this.size - 1} piscina) × ${this.local.worker.backend}`;
  }

  runPass(tasks: Task[]): Promise<TaskResult[]> {
    // One pass at a time: the control block holds a single pass.
    const result = this.passes.then(() => this.pass(tasks));
    this.passes = result.catch(() => undefined);
    return result;
  }

  private async pass(tasks: Task[]): Promise<TaskResult[]> {
    for (let slot = 1; slot < this.size; slot++) {
      if (!this.alive[slot] && this.deaths[slot] <= MAX_REJOINS) this.join(slot, this.team.seq);
      this.team.write(slot, tasks[slot]);
    }
    const seq = this.team.publish();
    const results: (TaskResult | undefined)[] = [await this.local.run(tasks[0])];
    for (let slot = 1; slot < this.size; slot++) {
      // Before waiting on this slot: every task still unstarted, this one's or a later one's, is taken here
      // (its thread descheduled, or still waking), with the same result.
      for (let later = slot; later < this.size; later++) {
        if (results[later] || !this.team.claim(later, seq)) continue;
        this.taken++;
        results[later] = tasks[later] ? await this.local.run(tasks[later]) : { nonFiniteLayers: [] };
      }
      if (results[slot]) continue;
      for (;;) {
        const seen = this.team.signal;
        const outcome = this.team.outcome(slot, seq);
        if (outcome && outcome !== 'failed') {
          results[slot] = outcome;
          this.deaths[slot] = 0;
          break;
        }
        if (outcome === 'failed' || !this.alive[slot]) {
          // The thread threw or died: compute its task here, with the same result.
          this.retries++;
          results[slot] = await this.local.run(tasks[slot]);
          break;
        }
        await this.team.awaitSignal(seen);
      }
    }
    return results as TaskResult[];
  }

  async close(): Promise<void> {
    await this.passes;
    for (let slot = 1; slot < this.size; slot++) this.team.write(slot, { kind: 'exit' });
    this.team.publish();
    await Promise.all([this.pool.destroy(), this.local.dispose()]);
  }
}
