#!/usr/bin/env node
/**
 * The dtrain command line: option tables turned into commander flags, thin actions that lazily import
 * the programmatic API, one error banner and process.exitCode.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import type { WorkerEvent } from './cluster/remote/client.js';
import {
  DEFAULTS,
  parseOptionValue,
  resolveWorkerConfig,
  TRAIN_OPTIONS,
  WORKER_DEFAULTS,
  WORKER_OPTIONS,
  type OptionSpec,
  type TrainConfig,
  type WorkerConfig,
} from './config.js';
import { show } from './errors.js';
import { packageRoot } from './paths.js';

function addOptions(command: Command, options: readonly OptionSpec[], defaults: object): Command {
  for (const spec of options) {
    // Defaults are shown, not set: the config file and the resolvers must see which flags were given.
    const d = (defaults as Record<string, unknown>)[spec.key];
    const shown = d === null || d === undefined || d === false ? '' : ` (default: ${Array.isArray(d) ? d.join(',') : String(d)})`;
    const option = new Option(spec.flag, `${spec.description}${shown}`);
    if (spec.kind.type === 'enum') option.choices(spec.kind.choices);
    if (spec.kind.type !== 'bool') option.argParser((raw: string) => parseOptionValue(spec, raw));
    command.addOption(option);
  }
  return command;
}

async function coordinator(flags: Record<string, unknown>): Promise<void> {
  const { train, readConfigFile } = await import('./index.js');
  const { consoleReporter } = await import('./console.js');
  const fromFile = typeof flags.config === 'string' ? readConfigFile(flags.config) : {};
  const fromFlags: Partial<TrainConfig> = {};
  for (const spec of TRAIN_OPTIONS) {
    if (flags[spec.key] !== undefined) (fromFlags as Record<string, unknown>)[spec.key] = flags[spec.key];
  }
  // A token in the environment keeps it out of the process list.
  if (fromFlags.token === undefined && fromFile.token === undefined && process.env.DTRAIN_TOKEN) fromFlags.token = process.env.DTRAIN_TOKEN;
  const tty = process.stderr.isTTY;
  const report = consoleReporter({
    line: (text) => console.log(text),
    status: tty ? (text) => process.stderr.write(`\r\x1b[2K${text}`) : undefined,
  });
  const abort = new AbortController();
  const onSigint = () => {
    if (abort.signal.aborted) process.exit(130);
    process.stderr.write('\ndtrain: stopping after the current step (Ctrl-C again to quit now)\n');
    abort.abort();
  };
  process.on('SIGINT', onSigint);
  try {
    await train({ ...fromFile, ...fromFlags }, { onEvent: report, signal: abort.signal });
  } finally {
    process.off('SIGINT', onSigint);
  }
}

async function worker(flags: Partial<WorkerConfig>): Promise<void> {
  // A token in the environment keeps it out of the process list.
  const { data, ...config } = resolveWorkerConfig({ ...flags, token: flags.token ?? (process.env.DTRAIN_TOKEN || undefined) });
  const { runWorker } = await import('./cluster/remote/client.js');
  const abort = new AbortController();
  const onSigint = () => {
    if (abort.signal.aborted) process.exit(130);
    abort.abort();
  };
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  let dataset;
  if (data !== undefined) {
    const { loadDataset } = await import('./data/datasets.js');
    dataset = loadDataset(data === 'embedded' ? undefined : data);
  }
  try {
    await runWorker({ ...config, dataset, signal: abort.signal, onEvent: logWorkerEvent });
  } finally {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigint);
  }
}

function logWorkerEvent(e: WorkerEvent): void {
  const log = (text: string) => console.log(`[${new Date().toISOString().slice(11, 19)}] ${text}`);
  if (e.type === 'connected') log(`connected to ${e.url} as worker ${e.workerId}`);
  else if (e.type === 'synced') log(`synchronised at step ${e.step} (${e.parameters.toLocaleString('en-US')} parameters)`);
  else if (e.type === 'disconnected') log(`disconnected: ${e.reason}; reconnecting in ${(e.retryInMs / 1000).toFixed(1)} s`);
  else if (e.type === 'error') log(`error: ${e.message}`);
  else if (e.type === 'finished') log('the coordinator finished the run');
}

/** The version in dtrain's package.json (read, not imported: it sits outside the compiled tree). */
function version(): string {
  return (JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;
}

export function buildProgram(): Command {
  const program = new Command('dtrain')
    .description('Distributed data-parallel MLP trainer: coordinator, local worker threads and remote workers')
    .version(version(), '-V, --version', 'print the version')
    .showHelpAfterError()
    .configureOutput({ outputError: (text, write) => write(text) });
  const coord = program
    .command('coordinator')
    .description('train (by default: the tutorial MLP on the embedded MNIST, on all cores)')
    .option('--config <file>', 'read options from a JSON file such as cluster.config.json (flags override it)');
  addOptions(coord, TRAIN_OPTIONS, DEFAULTS).action((flags) => coordinator(flags));
  program
    .command('eval')
    .description('accuracy, average loss and confusion matrix of an exported model (RUN_DIR/model) on a test set')
    .requiredOption('--model <dir>', 'the model directory a run exported (RUN_DIR/model)')
    .option('--data <dir>', 'IDX dataset directory whose t10k files to use (default: the embedded MNIST)')
    .action(async (flags: { model: string; data?: string }) => {
      const { evaluateSavedModel } = await import('./inference.js');
      const report = await evaluateSavedModel(flags.model, flags.data);
      console.log(`Test result: Accuracy: ${report.accuracy.toFixed(2)}%, Avg loss: ${report.avgLoss.toFixed(6)}  (${report.samples} samples)`);
      console.log('confusion matrix (rows: label, columns: predicted):');
      const width = Math.max(5, String(report.samples).length + 1);
      console.log(`${' '.repeat(6)}${report.confusion.map((_, k) => String(k).padStart(width)).join('')}`);
      report.confusion.forEach((row, label) => console.log(`${String(label).padStart(5)} ${row.map((n) => String(n).padStart(width)).join('')}`));
    });
  program
    .command('predict')
    .description('classify a 28×28 PNG (light digit on a dark background, like MNIST) with an exported model')
    .requiredOption('--model <dir>', 'the model directory a run exported (RUN_DIR/model)')
    .option('--invert', 'the image is dark on light: invert it first')
    .argument('<file>', 'a PNG with as many pixels as the model has inputs')
    .action(async (file: string, flags: { model: string; invert?: boolean }) => {
      const { predictImage } = await import('./inference.js');
      const { predicted, probabilities } = await predictImage(flags.model, file, flags.invert);
      console.log(`${file}: ${predicted}  (p = ${probabilities[predicted].toFixed(4)})`);
      console.log(probabilities.map((p, k) => `${k}: ${p.toFixed(4)}`).join('  '));
    });
  program
    .command('plot')
    .description('write RUN_DIR/plot.svg (loss and accuracy per epoch) from RUN_DIR/metrics.jsonl')
    .argument('<run-dir>', 'a run directory (--out of dtrain coordinator)')
    .action(async (runDir: string) => {
      const { plotRun } = await import('./report/plot.js');
      console.log(plotRun(runDir));
    });
  const work = program.command('worker').description('join a coordinator\'s run as a remote worker');
  addOptions(work, WORKER_OPTIONS, WORKER_DEFAULTS).action((flags) => worker(flags));
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    const message = e instanceof Error ? e.message : show(e);
    process.stderr.write(`dtrain: error: ${message}\n`);
    process.exitCode = 1;
  }
}

// Run only as the program, not when imported (tests import buildProgram).
const invoked = process.argv[1] ?? '';
if (/(?:^|[/\\])(?:cli\.[jt]s|dtrain)$/.test(invoked)) void main(process.argv);
