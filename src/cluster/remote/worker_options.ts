/** What a remote worker is started with, and what it reports (client.ts runs it, worker_session.ts uses both). */
import type { Dataset } from '../../data/datasets.js';
import type { Device, EngineName } from '../../engine/engine.js';
import type { RowsDone } from './messages.js';

export interface WorkerOptions {
  connect: string;
  token?: string;
  /** PEM file of a private CA that signed the coordinator's certificate (wss://). */
  ca?: string;
  threads: number;
  engine: EngineName;
  device: Device;
  /** A local copy of the dataset: the coordinator then sends row indices instead of pixels. */
  dataset?: Dataset;
  /** Give up after this many failed connection attempts in a row (0 = never). */
  maxRetries: number;
  /** Largest frame accepted from the coordinator (a state snapshot of the model must fit). */
  maxFrameBytes: number;
  onEvent?: (event: WorkerEvent) => void;
  /**
   * Fault injection (tests): what this worker sends instead of the rows it computed, as a faulty or
   * dishonest machine would (its own replica keeps the right ones).
   */
  tamperRows?: (rows: RowsDone) => RowsDone;
  signal?: AbortSignal;
}

export type WorkerEvent =
  | { type: 'connected'; url: string; workerId: number }
  | { type: 'synced'; step: number; parameters: number }
  | { type: 'disconnected'; reason: string; retryInMs: number }
  | { type: 'step'; step: number }
  | { type: 'error'; message: string }
  | { type: 'finished' };
