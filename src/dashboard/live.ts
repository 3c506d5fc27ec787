/**
 * The dashboard beside a run (`--dashboard`) and over a finished run's folder (`dtrain plot --serve`):
 * a store fed by the run's events (and, on resume, by metrics.jsonl up to the checkpoint, so the curves
 * continue), served by its own server (on its own thread for a live run), closed with the run.
 */
import { dashboardSettings, type DashboardSettings, type TrainConfig } from '../config.js';
import { dashboardFailed } from '../errors.js';
import type { RunSummary } from '../report/summary.js';
import type { TrainEvent, TrainOptions } from '../train/events.js';
import { train } from '../train/run.js';
import { DashboardThread, type ToDashboard } from './dashboard_thread.js';
import { openRunFolder } from './run_folder.js';
import { DashboardServer } from './server.js';

/**
 * train(), with the live dashboard when config.dashboard is set: it listens before the run starts (a port
 * in use fails the run at once) and closes when the run ends, however it ends.
 */
export async function trainWithDashboard(config: Partial<TrainConfig> = {}, options: TrainOptions = {}): Promise<RunSummary> {
  if (!config.dashboard) return train(config, options);
  const report = options.onEvent ?? (() => {});
  const dashboard = await DashboardThread.start(dashboardSettings(config), (message) => report({ type: 'warning', message: dashboardFailed(message) }));
  const feed = dashboardFeed((message) => dashboard.post(message));
  const onEvent = (event: TrainEvent) => {
    feed(event);
    report(event);
  };
  report({ type: 'dashboard', url: dashboard.url, token: config.dashboardToken !== undefined && config.dashboardToken !== null });
  try {
    return await train(config, { ...options, onEvent });
  } finally {
    await dashboard.close();
  }
}

/**
 * What the dashboard's thread is told of each event: the event, and for a resumed run its history. The run
 * rewrites metrics.jsonl (cut at the checkpoint) after it tells `resumed`: the thread reads the file once the
 * run steps (or ends), by when it is whole; throughStep drops what this session has appended by then.
 */
export function dashboardFeed(post: (message: ToDashboard) => void): (event: TrainEvent) => void {
  let outDir = '';
  let batchSize = 0;
  let historyThrough: number | undefined;
  return (event) => {
    if (historyThrough !== undefined && (event.type === 'step' || event.type === 'finished-already' || event.type === 'done')) {
      post({ type: 'history', runDir: outDir, batchSize, throughStep: historyThrough });
      historyThrough = undefined;
    }
    post({ type: 'event', event });
    if (event.type === 'start') {
      outDir = event.outDir;
      batchSize = typeof event.config.batchSize === 'number' ? event.config.batchSize : 0;
    }
    if (event.type === 'checkpoint' && event.action === 'resumed') historyThrough = event.step;
  };
}

/** `dtrain plot RUN_DIR --serve [HOST:]PORT`: the same page over a finished run's folder, until stopped. */
export async function serveRunFolder(runDir: string, settings: DashboardSettings): Promise<{ url: string; close: () => Promise<void> }> {
  const server = new DashboardServer(openRunFolder(runDir), settings);
  const url = await server.start();
  return { url, close: () => server.close() };
}
