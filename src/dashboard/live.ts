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
import { DashboardThread } from './dashboard_thread.js';
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
  let outDir = '';
  let batchSize = 0;
  const onEvent = (event: TrainEvent) => {
    dashboard.post({ type: 'event', event });
    if (event.type === 'start') {
      outDir = event.outDir;
      batchSize = typeof event.config.batchSize === 'number' ? event.config.batchSize : 0;
    }
    if (event.type === 'checkpoint' && event.action === 'resumed') dashboard.post({ type: 'history', runDir: outDir, batchSize, throughStep: event.step });
    report(event);
  };
  report({ type: 'dashboard', url: dashboard.url, token: config.dashboardToken !== undefined && config.dashboardToken !== null });
  try {
    return await train(config, { ...options, onEvent });
  } finally {
    await dashboard.close();
  }
}

/** `dtrain plot RUN_DIR --serve [HOST:]PORT`: the same page over a finished run's folder, until stopped. */
export async function serveRunFolder(runDir: string, settings: DashboardSettings): Promise<{ url: string; close: () => Promise<void> }> {
  const server = new DashboardServer(openRunFolder(runDir), settings);
  const url = await server.start();
  return { url, close: () => server.close() };
}
