/**
 * Builds the local team for N compute threads: this process alone for 1 (or 0: it still applies the
 * optimizer and evaluates), else main + piscina. Apart from team.ts so that the thread team, which builds
 * on team.ts, is loaded only when asked for, and imports stay one way.
 */
import type { SlotInit } from './slot_runner.js';
import { SoloTeam, type Team } from './team.js';

export async function createTeam(init: SlotInit, threads: number): Promise<Team> {
  if (threads <= 1) return SoloTeam.create(init);
  const { ThreadTeam } = await import('./thread_team.js');
  return ThreadTeam.create(init, { threads });
}
