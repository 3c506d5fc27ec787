/** The programmatic API: everything the CLI does can be done from code. */
// train() with the live dashboard when config.dashboard is set (train/run.ts's train() knows nothing of it).
export { trainWithDashboard as train, serveRunFolder } from './dashboard/live.js';
export { Trainer, type EvalResult } from './train/trainer.js';
export type { TrainEvent, TrainOptions } from './train/events.js';
export { resolveConfig, readConfigFile, DEFAULTS, TRAIN_OPTIONS, type TrainConfig } from './config.js';
export { loadDataset, embeddedMnistDir, toSplit, type Dataset, type Split } from './data/datasets.js';
export { readIdxFile, parseIdx } from './data/idx.js';
export { makeSpec, paramLayout, type ModelSpec } from './model/spec.js';
export { initParams } from './model/init.js';
export { createEngine } from './engine/create.js';
export type { Engine } from './engine/engine.js';
export {  type RunSummary  } from './report/summary.js';
export { paramsSha256 } from './model/checksum.js';
export { DtrainError } from './errors.js';
