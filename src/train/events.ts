/** What a run reports as it goes (it never prints), and the hooks a caller may give it. */
import type { WorkShares } from '../cluster/work_ledger.js';
import type { ParticipantsRecord } from '../cluster/participant_stats.js';
import type { Team } from '../cluster/team.js';
import type { AdmissionStats } from '../cluster/remote/admission.js';
import type { Dataset } from '../data/datasets.js';
import type { EpochResult, RunSummary } from '../report/summary.js';
import type { RunClusterEvent } from '../report/cluster_line.js';

export type TrainEvent =
  | {
      type: 'start';
      spec: string;
      parameters: number;
      dataset: string;
      trainSamples: number;
      testSamples: number;
      workers: string;
      listening?: string;
      datasetSha256: string;
      /** The run folder (metrics.jsonl, summary.json, checkpoints/). */
      outDir: string;
      /** The resolved configuration, secrets shown only as "(set)". */
      config: Record<string, unknown>;
    }
  /** A step taken: its loss, the batch's samples and the step's wall time (ms). */
  | { type: 'step'; step: number; epoch: number; batch: number; batches: number; loss: number; samples: number; ms: number }
  /** Every participant's rows and times in this step (issue 21: dashboard, metrics.jsonl, TensorBoard). */
  | { type: 'participants'; record: ParticipantsRecord }
  | { type: 'log'; epoch: number; loss: number; current: number; size: number }
  | { type: 'epoch'; result: EpochResult; shares: WorkShares }
  | { type: 'cluster'; event: RunClusterEvent }
  /** The live dashboard serves at this URL (its viewer token, if any, is not in it). */
  | { type: 'dashboard'; url: string; token: boolean }
  /** A risk the run takes knowingly (listening beyond loopback without TLS): one line, printed with "!". */
  | { type: 'warning'; message: string }
  | { type: 'checkpoint'; action: 'written' | 'resumed'; file: string; step: number }
  | { type: 'checkpoint'; action: 'skipped'; file: string; reason: string }
  /** A resumed run whose steps or epochs were all done already: nothing is trained. */
  | { type: 'finished-already'; step: number; epochs: number }
  | { type: 'done'; summary: RunSummary };

export interface TrainOptions {
  onEvent?: (event: TrainEvent) => void;
  /** Stops cleanly after the step in flight. */
  signal?: AbortSignal;
  /** A dataset already in memory (tests); otherwise config.data or the embedded MNIST is loaded. */
  dataset?: Dataset;
  /** Called once the local workers are up, with the set (tests use it to inject faults). */
  onTeam?: (workers: Team) => void;
  /**
   * Called once the coordinator listens, with its address (tests connect workers to it) and its live
   * connection counts (how many authenticate now, the most at once, how many were turned away).
   */
  onListening?: (address: { host: string; port: number; connections: AdmissionStats }) => void;
  /**
   * Awaited before every step, with the step about to run (to pace or coordinate a run from outside); the
   * time it takes is not counted as training time.
   */
  beforeStep?: (step: number) => Promise<void> | void;
  /**
   * The ranks of the remote workers --min-workers waits for, when they come from a launcher (dtrain run:
   * 1 … world size − 1), so that a run that gives up waiting names which ranks are missing.
   */
  expectedRanks?: readonly number[];
  /** Fault injection (tests): pool threads die in the middle of this step's weight pass, `times` times. */
  faults?: { threadExitAtStep?: number; times?: number; threadStallAtStep?: number; stallMs?: number };
}
