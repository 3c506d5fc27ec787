/**
 * A run folder read into a dashboard's store: metrics.jsonl's steps, epochs and participant records (what a
 * resumed run's page continues, or a finished run's page shows), and summary.json (a finished run's identity,
 * plans and end).
 */
import { existsSync } from 'node:fs';
import { runDirUnreadable } from '../errors.js';
import { describeSpec, type ModelSpec } from '../model/spec.js';
import { metricsFile, readMetrics } from '../report/metrics.js';
import { readSummary, summaryFile, type RunSummary } from '../report/summary.js';
import { epochView, RunStore } from './run_store.js';

/**
 * Adds metrics.jsonl's records to the store, those up to `throughStep` only when given (a resumed run drops
 * what its killed predecessor logged after the checkpoint, as MetricsLog does). Steps carry no sample count:
 * `batchSize` stands for it.
 */
export function loadHistory(store: RunStore, runDir: string, batchSize: number, throughStep = Infinity): void {
  if (!existsSync(metricsFile(runDir))) return;
  for (const record of readMetrics(runDir)) {
    if (record.type === 'step' && record.step <= throughStep) store.addStep(record.step, record.loss, record.ms, batchSize, false);
    else if (record.type === 'epoch' && record.steps <= throughStep) store.addEpoch(epochView(record, record.shares));
    else if (record.type === 'participants' && record.step <= throughStep) store.addParticipants(record);
  }
}

/** A finished run's folder as a store: summary.json (required) and metrics.jsonl. */
export function openRunFolder(runDir: string): RunStore {
  if (!existsSync(summaryFile(runDir))) throw runDirUnreadable(runDir, 'no summary.json');
  let summary: RunSummary;
  try {
    summary = readSummary(runDir);
  } catch (e) {
    throw runDirUnreadable(runDir, `summary.json: ${(e as Error).message}`);
  }
  const store = new RunStore();
  const batchSize = typeof summary.config.batchSize === 'number' ? summary.config.batchSize : 0;
  loadHistory(store, runDir, batchSize);
  store.finish(summary);
  store.setFinished({
    model: describeSpec(summary.model as ModelSpec),
    parameters: summary.model.parameters,
    dataset: summary.dataset.name,
    datasetSha256: summary.dataset.sha256,
    trainSamples: summary.dataset.trainSamples,
    testSamples: summary.dataset.testSamples,
    workers: `${summary.workers}; devices: ${summary.devices.join(', ')}`,
    outDir: summary.outDir ?? runDir,
    config: summary.config,
  });
  return store;
}
