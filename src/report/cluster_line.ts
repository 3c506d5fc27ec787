/** One line for each cluster event: what the console prints and the dashboard lists. */
import type { ClusterEvent } from '../cluster/scheduler.js';

/** The scheduler's events, and the run's own finding that replicas differ (after an epoch's hash check). */
export type RunClusterEvent = ClusterEvent | { type: 'diverged'; workers: string[] };

export function clusterLine(e: RunClusterEvent): string {
  switch (e.type) {
    case 'joined':
      return `+ ${e.worker} joined (${e.backend}, ${e.threads} thread${e.threads === 1 ? '' : 's'})`;
    case 'left':
      return `- ${e.worker} left: ${e.reason}`;
    case 'rejected':
      return `! ${e.peer} rejected: ${e.reason}`;
    case 'refused':
      return `! refused ${e.count} connection${e.count === 1 ? '' : 's'}: ${e.reason}`;
    case 'waiting':
      return `… ${e.reason}`;
    case 'peers':
      return `⇆ ${e.message}`;
    case 'redo':
      return `↻ rows ${e.rows[0]}–${e.rows[1] - 1} redone elsewhere: ${e.reason}`;
    case 'replay':
      return `↻ no replica can give the state (none left, or a sharded owner lost): replaying steps ${e.from}–${e.to - 1} here from the last state taken`;
    case 'plan': {
      const estimates = e.estimates.map((x) => `${x.plan} ${x.ms.toFixed(1)} ms`).join(', ');
      return `⇄ step ${e.step}: plan ${e.plan} (${e.reason}${estimates ? `; estimated a step: ${estimates}` : ''})`;
    }
    case 'diverged':
      return `! replicas of ${e.workers.join(', ')} differ from the coordinator's parameters: resynchronising`;
  }
}
