#!/usr/bin/env node
/**
 * The dtrain command line: option tables turned into commander flags, thin actions that lazily import
 * the programmatic API, one error banner and process.exitCode.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import { hostname } from 'node:os';
import type { WorkerEvent } from './cluster/remote/client.js';
import { COMMAND_TABLES, parseOptionValue, type CommandTable, resolveWorkerConfig, TRAIN_OPTIONS, type RunConfig, type TrainConfig, type WorkerConfig } from './config.js';
import { show } from './errors.js';
import { packageRoot } from './paths.js';
import type { WorkerPlan } from './launch/run.js';
import type { TrainOptions } from './train/events.js';

function addOptions(command: Command, { options, defaults }: CommandTable): Command {
  for (const spec of options) {
    // Defaults are shown, not set: the config file and the resolvers must see which flags were given.
    const d = (defaults as Record<string, unknown>)[spec.key];
    const shown = d === null || d === undefined || d === false ? '' : ` (default: ${Array.isArray(d) ? d.join(',') : String(d)})`;
    const option = new Option(spec.flag, `${spec.description}${shown}`);
    if (spec.kind.type === 'enum') option.choices(spec.kind.choices);
    if (spec.kind.type !== 'bool') option.argParser((raw: string) => parseOptionValue(spec, raw));
    command.addOption(option);
    // Commander gives a lone --no-X flag the value true by default, which would override a config file's
    // "X": false and a resumed run's checkpoint as if given: unset, as every other default is.
    if (option.negate) command.setOptionValueWithSource(option.attributeName(), undefined, 'default');
  }
  return command;
}

async function coordinator(flags: Record<string, unknown>): Promise<void> {
  const { readConfigFile } = await import('./index.js');
  const fromFile = typeof flags.config === 'string' ? readConfigFile(flags.config) : {};
  const fromFlags: Partial<TrainConfig> = {};
  for (const spec of TRAIN_OPTIONS) {
    if (flags[spec.key] !== undefined) (fromFlags as Record<string, unknown>)[spec.key] = flags[spec.key];
  }
  // A token in the environment keeps it out of the process list.
  if (fromFlags.token === undefined && fromFile.token === undefined && process.env.DTRAIN_TOKEN) fromFlags.token = process.env.DTRAIN_TOKEN;
  await trainOnConsole(withDashboardToken({ ...fromFile, ...fromFlags }));
}

/** The viewer token from the environment (out of the process list) when no flag or file gave one. */
function withDashboardToken<C extends { dashboardToken?: string | null }>(config: C): C {
  const fromEnv = process.env.DTRAIN_DASHBOARD_TOKEN;
  return config.dashboardToken === undefined || config.dashboardToken === null ? { ...config, ...(fromEnv ? { dashboardToken: fromEnv } : {}) } : config;
}

/** Trains with the console reporter; the first Ctrl-C stops after the current step, the second at once. */
async function trainOnConsole(config: Partial<TrainConfig>, options: Pick<TrainOptions, 'expectedRanks'> = {}): Promise<void> {
  const { train } = await import('./index.js');
  const { consoleReporter } = await import('./console.js');
  const tty = process.stderr.isTTY;
  const report = consoleReporter({
    line: (text) => console.log(text),
    status: tty ? (text) => process.stderr.write(`\r\x1b[2K${text}`) : undefined,
  });
  await untilSignalled(
    (signal) => train(config, { ...options, onEvent: report, signal }),
    () => process.stderr.write('\ndtrain: stopping after the current step (Ctrl-C again to quit now)\n'),
  );
}

/**
 * Runs `work` with a signal that SIGINT or SIGTERM aborts (a second one exits at once). SIGTERM too: it is
 * what scancel, a Slurm time limit and a Kubernetes pod deletion send, and a coordinator stopped by it
 * still writes its summary and final state.
 */
async function untilSignalled(work: (signal: AbortSignal) => Promise<unknown>, onFirst: () => void = () => {}): Promise<void> {
  const abort = new AbortController();
  const onSignal = () => {
    if (abort.signal.aborted) process.exit(130);
    onFirst();
    abort.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await work(abort.signal);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** `dtrain eval`: the model's accuracy and loss, and the confusion matrix, on the console. */
async function evaluate(flags: { model: string; data?: string }): Promise<void> {
  const { evaluateSavedModel } = await import('./inference.js');
  const report = await evaluateSavedModel(flags.model, flags.data);
  console.log(`Test result: Accuracy: ${report.accuracy.toFixed(2)}%, Avg loss: ${report.avgLoss.toFixed(6)}  (${report.samples} samples)`);
  console.log('confusion matrix (rows: label, columns: predicted):');
  const width = Math.max(5, String(report.samples).length + 1);
  console.log(`${' '.repeat(6)}${report.confusion.map((_, k) => String(k).padStart(width)).join('')}`);
  report.confusion.forEach((row, label) => console.log(`${String(label).padStart(5)} ${row.map((n) => String(n).padStart(width)).join('')}`));
}

/** `dtrain predict`: the digit in a PNG, and every class's probability. */
async function predict(file: string, flags: { model: string; invert?: boolean }): Promise<void> {
  const { predictImage } = await import('./inference.js');
  const { predicted, probabilities } = await predictImage(flags.model, file, flags.invert);
  console.log(`${file}: ${predicted}  (p = ${probabilities[predicted].toFixed(4)})`);
  console.log(probabilities.map((p, k) => `${k}: ${p.toFixed(4)}`).join('  '));
}

/** `dtrain plot`: the run's plot.svg; with --serve, also its dashboard page until a signal stops it. */
async function plot(runDir: string, flags: { serve?: string; dashboardToken?: string; tlsCert?: string; tlsKey?: string }): Promise<void> {
  const { plotRun } = await import('./report/plot.js');
  if (flags.serve === undefined) return void console.log(plotRun(runDir));
  const { dashboardSettings } = await import('./config.js');
  const { serveRunFolder } = await import('./index.js');
  const settings = dashboardSettings(withDashboardToken({ dashboard: flags.serve, dashboardToken: flags.dashboardToken, tlsCert: flags.tlsCert, tlsKey: flags.tlsKey }));
  const served = await serveRunFolder(runDir, settings);
  // The SVG too, for those who read files; a run stopped before its first epoch has none to draw.
  try {
    console.log(plotRun(runDir));
  } catch (e) {
    console.log(`no plot.svg: ${(e as Error).message}`);
  }
  console.log(`dashboard: ${served.url}${settings.token ? '?token=… (the --dashboard-token)' : ''} (Ctrl-C to stop)`);
  await untilSignalled((signal) => new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true })));
  await served.close();
}

async function worker(flags: Partial<WorkerConfig>): Promise<void> {
  // A token in the environment keeps it out of the process list.
  await workOnConsole(resolveWorkerConfig({ ...flags, token: flags.token ?? (process.env.DTRAIN_TOKEN || undefined) }));
}

/** Runs a remote worker that logs its events (each line after `prefix`) until the run ends or a signal stops it. */
async function workOnConsole(
  { data, ...config }: Omit<WorkerPlan, 'data'> & { data?: string },
  prefix = '',
): Promise<void> {
  const { runWorker } = await import('./cluster/remote/client.js');
  const { loadDataset } = await import('./data/datasets.js');
  const dataset = data === undefined ? undefined : loadDataset(data === 'embedded' ? undefined : data);
  await untilSignalled((signal) => runWorker({ ...config, dataset, signal, onEvent: (e) => logWorkerEvent(e, prefix) }));
}

/** `dtrain run`: this rank's role from the launcher's environment, then the coordinator's or a worker's run. */
async function launched(flags: Partial<RunConfig>): Promise<void> {
  const { planLaunch } = await import('./launch/run.js');
  // Kubernetes containers export HOSTNAME (the pod's, <job>-<index>); elsewhere it may be a shell variable only.
  const plan = planLaunch(withDashboardToken(flags), { HOSTNAME: hostname(), ...process.env });
  console.log(plan.summary);
  if (plan.role === 'coordinator') await trainOnConsole(plan.train, { expectedRanks: plan.expectedRanks });
  else await workOnConsole(plan.worker, `rank ${plan.launch.rank}: `);
}

function logWorkerEvent(e: WorkerEvent, prefix: string): void {
  const log = (text: string) => console.log(`[${new Date().toISOString().slice(11, 19)}] ${prefix}${text}`);
  if (e.type === 'device') log(`computing on ${e.description}`);
  else if (e.type === 'connected') log(`connected to ${e.url} as worker ${e.workerId}`);
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
    .description('Distributed data-parallel MLP trainer: coordinator, local threads (main + pool threads) and remote workers')
    .version(version(), '-V, --version', 'print the version')
    .showHelpAfterError()
    .configureOutput({ outputError: (text, write) => write(text) });
  const coord = program
    .command('coordinator')
    .description('train (by default: the tutorial MLP on the embedded MNIST, on all cores)')
    .option('--config <file>', 'read options from a JSON file such as cluster.config.json (flags override it)');
  addOptions(coord, COMMAND_TABLES.coordinator).action((flags) => coordinator(flags));
  program
    .command('eval')
    .description('accuracy, average loss and confusion matrix of an exported model (RUN_DIR/model) on a test set')
    .requiredOption('--model <dir>', 'the model directory a run exported (RUN_DIR/model)')
    .option('--data <dir>', 'IDX dataset directory whose t10k files to use (default: the embedded MNIST)')
    .action((flags: { model: string; data?: string }) => evaluate(flags));
  program
    .command('predict')
    .description('classify a 28×28 PNG (light digit on a dark background, like MNIST) with an exported model')
    .requiredOption('--model <dir>', 'the model directory a run exported (RUN_DIR/model)')
    .option('--invert', 'the image is dark on light: invert it first')
    .argument('<file>', 'a PNG with as many pixels as the model has inputs')
    .action((file: string, flags: { model: string; invert?: boolean }) => predict(file, flags));
  program
    .command('plot')
    .description('write RUN_DIR/plot.svg (loss and accuracy per epoch) from RUN_DIR/metrics.jsonl; with --serve, also show the run\'s dashboard page')
    .argument('<run-dir>', 'a run directory (--out of dtrain coordinator)')
    .option('--serve <[host:]port>', 'serve the run\'s dashboard page (as --dashboard shows a live run) on this port, 127.0.0.1 unless a host is given, until Ctrl-C')
    .option('--dashboard-token <secret>', 'the viewers\' secret, required with --serve beyond loopback (or env DTRAIN_DASHBOARD_TOKEN)')
    .option('--tls-cert <file>', 'PEM certificate: serve https (required with --serve beyond loopback)')
    .option('--tls-key <file>', 'PEM private key of --tls-cert')
    .action((runDir: string, flags: Parameters<typeof plot>[1]) => plot(runDir, flags));
  const work = program.command('worker').description('join a coordinator\'s run as a remote worker');
  addOptions(work, COMMAND_TABLES.worker).action((flags) => worker(flags));
  const run = program
    .command('run')
    .description('one command for every rank under mpirun, srun, torchrun or a Kubernetes Indexed Job: rank 0 trains, the others join it');
  addOptions(run, COMMAND_TABLES.run).action((flags) => launched(flags));
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
