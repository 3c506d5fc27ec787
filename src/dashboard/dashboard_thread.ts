/**
 * The live dashboard runs on a thread of its own: a training step may hold the main thread's event loop for
 * as long as it computes (a local slot runs synchronously), and pages must be served meanwhile; and whatever
 * the pages do (many, slow, stalled) costs the step nothing but posting it the run's events. This is the main
 * thread's handle; dashboard_worker.ts is the thread.
 */
import { Worker } from 'node:worker_threads';
import type { DashboardSettings } from '../config.js';
import { DtrainError } from '../errors.js';
import { compiled } from '../paths.js';
import type { TrainEvent } from '../train/events.js';

/** What the main thread tells the dashboard's thread. */
export type ToDashboard =
  | { type: 'event'; event: TrainEvent }
  /** A resumed run: metrics.jsonl's records up to the checkpoint's step are the curves so far. */
  | { type: 'history'; runDir: string; batchSize: number; throughStep: number }
  | { type: 'close' };

/** What it answers: its URL once it listens, or why it could not; `closed` once its pages are told. */
export type FromDashboard = { type: 'listening'; url: string } | { type: 'failed'; message: string; code?: string } | { type: 'closed' };

export class DashboardThread {
  private exited = false;

  private constructor(
    private readonly worker: Worker,
    readonly url: string,
  ) {
    worker.once('exit', () => (this.exited = true));
  }

  /**
   * Starts the thread and its server; a port in use rejects with its one-line error. Should the thread fail
   * later, `onFailure` is told and the run goes on without it.
   */
  static async start(settings: DashboardSettings, onFailure: (message: string) => void): Promise<DashboardThread> {
    const worker = new Worker(compiled('dashboard/dashboard_worker.js'), { workerData: settings });
    const first = await new Promise<FromDashboard>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    if (first.type === 'listening') {
      // The thread must not keep a finished process alive.
      worker.unref();
      worker.on('error', (e) => onFailure(e.message));
      return new DashboardThread(worker, first.url);
    }
    await worker.terminate();
    throw first.type === 'failed' && first.code ? new DtrainError(first.message, first.code) : new Error(first.type === 'failed' ? first.message : 'the dashboard closed at once');
  }

  post(message: ToDashboard): void {
    this.worker.postMessage(message);
  }

  /** Sends the pages what is left and that the run ended, then stops the thread. */
  async close(): Promise<void> {
    if (this.exited) return;
    const closed = new Promise<void>((resolve) => {
      this.worker.on('message', (m: FromDashboard) => m.type === 'closed' && resolve());
      this.worker.once('exit', () => resolve());
    });
    this.post({ type: 'close' });
    await closed;
    await this.worker.terminate();
  }
}
