/** The dashboard's thread (see dashboard_thread.ts): a store fed by the main thread's messages, and the server. */
import { parentPort, workerData } from 'node:worker_threads';
import type { DashboardSettings } from '../config.js';
import { DtrainError } from '../errors.js';
import type { FromDashboard, ToDashboard } from './dashboard_thread.js';
import { loadHistory } from './run_folder.js';
import { RunStore } from './run_store.js';
import { DashboardServer } from './server.js';

const port = parentPort!;
const reply = (message: FromDashboard) => port.postMessage(message);
const store = new RunStore();
const server = new DashboardServer(store, workerData as DashboardSettings);

try {
  reply({ type: 'listening', url: await server.start() });
} catch (e) {
  reply({ type: 'failed', message: (e as Error).message, code: e instanceof DtrainError ? e.code : undefined });
  process.exit(0);
}

port.on('message', (message: ToDashboard) => {
  if (message.type === 'event') store.apply(message.event);
  else if (message.type === 'history') loadHistory(store, message.runDir, message.batchSize, message.throughStep);
  else if (message.type === 'close') void server.close().then(() => reply({ type: 'closed' }));
});
