/** What a remote worker is started with, and what it reports (client.ts runs it, worker_session.ts uses both). */
import type { Dataset } from '../../data/datasets.js';
import type { WorkerConfig } from '../../config.js';
import type { EngineOptions } from '../../engine/engine.js';
import type { ReplicaState, RowsDone, SliceMessage } from './messages.js';
import type { PeerLinks } from './peer_links.js';

/**
 * runWorker()'s options: what a user chooses (WorkerConfig, the `dtrain worker` table, with the data as
 * loaded rather than its path) and what the program adds.
 */
export interface WorkerOptions extends Omit<WorkerConfig, 'data'> {
  /** Set by runWorker at start for --device webgpu (engine/create.ts prepareEngine): the adapter its replica computes on. */
  webgpu?: EngineOptions['webgpu'];
  /** A local copy of the dataset: the coordinator then sends row indices instead of pixels. */
  dataset?: Dataset;
  /**
   * Give up when no connection has synchronised for this long (0 or absent = never): a launched rank
   * (dtrain run) waits for rank 0 no longer than rank 0 waits for it, so a job whose rank 0 is gone ends.
   */
  retryForMs?: number;
  /**
   * Compute with the engine and device the coordinator's challenge names rather than `engine` and `device`:
   * a launched rank of a resumed run (dtrain run --resume), whose options are in rank 0's checkpoint.
   */
  engineFromCoordinator?: boolean;
  /** This process's rank in a launched job (dtrain run), sent in the hello: a coordinator then names missing ranks. */
  rank?: number;
  onEvent?: (event: WorkerEvent) => void;
  /**
   * Fault injection (tests): what this worker sends instead of the rows it computed, as a faulty or
   * dishonest machine would (its own replica keeps the right ones).
   */
  tamperRows?: (rows: RowsDone) => RowsDone;
  /** Fault injection (tests): what this worker sends instead of its units' new parameters (its replica keeps the right ones). */
  tamperSlice?: (slice: SliceMessage) => SliceMessage;
  /**
   * Fault injection (tests): milliseconds added to its compute of each row it is asked for, as a slower
   * machine would take (its reported compute time includes them).
   */
  rowDelayMs?: number;
  /** Fault injection (tests): what this worker sends instead of its replica's state when asked (its replica keeps the right one). */
  tamperState?: (state: ReplicaState) => ReplicaState;
  /** Fault injection (tests): called as this worker starts its units of a sharded step (it may stop the worker there). */
  onUnits?: (step: number) => void;
  /** Fault injection (tests): its peer links once they exist (a test may cut them: PeerLinks.cut). */
  onPeerLinks?: (links: PeerLinks) => void;
  signal?: AbortSignal;
}

/** What a worker's replica is built with: its compute settings, and its own copy of the data if any. */
export type ReplicaOptions = Pick<WorkerOptions, 'threads' | 'engine' | 'device' | 'allowSoftwareGpu' | 'webgpu' | 'dataset'>;

export type WorkerEvent =
  /** At start: what this worker computes on (for --device webgpu, the adapter). */
  | { type: 'device'; description: string }
  | { type: 'connected'; url: string; workerId: number }
  | { type: 'synced'; step: number; parameters: number }
  | { type: 'disconnected'; reason: string; retryInMs: number }
  | { type: 'step'; step: number }
  | { type: 'error'; message: string }
  | { type: 'finished' };
