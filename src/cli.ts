#!/usr/bin/env node
/**
 * The dtrain command line: option tables turned into commander flags, thin actions that lazily import
 * the programmatic API, one error banner and process.exitCode.
 */
import { Command, Option } from 'commander';
import { DEFAULTS, parseOptionValue, TRAIN_OPTIONS, type OptionSpec, type TrainConfig } from './config.js';
import { show, workerNeedsConnect } from './errors.js';

function addOptions(command: Command, options: readonly OptionSpec[], defaults: Record<string, unknown>): Command {
  for (const spec of options) {
    // Defaults are shown, not set: the config file and resolveConfig() must see which flags were given.
    const d = defaults[spec.key];
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
  const { consoleReporter } = await import('./report/console.js');
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

async function worker(flags: Record<string, unknown>): Promise<void> {
  const { runWorker } = await import('./cluster/remote/client.js');
  const abort = new AbortController();
  const onSigint = () => {
    if (abort.signal.aborted) process.exit(130);
    abort.abort();
  };
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  let dataset;
  if (typeof flags.data === 'string') {
    const { loadDataset } = await import('./data/datasets.js');
    dataset = loadDataset(flags.data === 'embedded' ? undefined : flags.data);
  }
  const log = (text: string) => console.log(`[${new Date().toISOString().slice(11, 19)}] ${text}`);
  try {
    await runWorker({
      connect: flags.connect as string,
      token: (flags.token as string | undefined) ?? process.env.DTRAIN_TOKEN,
      ca: flags.ca as string | undefined,
      threads: (flags.threads as number | undefined) ?? 1,
      engine: (flags.engine as 'onnx' | 'tfjs' | undefined) ?? 'onnx',
      device: (flags.device as 'cpu' | 'cuda' | 'gpu' | undefined) ?? 'cpu',
      maxRetries: (flags.maxRetries as number | undefined) ?? 0,
      dataset,
      signal: abort.signal,
      onEvent: (e) => {
        if (e.type === 'connected') log(`connected to ${e.url} as worker ${e.workerId}`);
        else if (e.type === 'synced') log(`synchronised at step ${e.step} (${e.parameters.toLocaleString('en-US')} parameters)`);
        else if (e.type === 'disconnected') log(`disconnected: ${e.reason}; reconnecting in ${(e.retryInMs / 1000).toFixed(1)} s`);
        else if (e.type === 'error') log(`error: ${e.message}`);
        else if (e.type === 'finished') log('the coordinator finished the run');
      },
    });
  } finally {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigint);
  }
}

const WORKER_OPTIONS: readonly OptionSpec[] = [
  { key: 'connect' as never, flag: '--connect <url>', description: 'the coordinator, ws://HOST:PORT or wss://HOST:PORT', kind: { type: 'string' } },
  { key: 'token' as never, flag: '--token <secret>', description: 'the shared secret of the run (or env DTRAIN_TOKEN)', kind: { type: 'string' } },
  { key: 'ca' as never, flag: '--ca <file>', description: 'PEM certificate of a private CA that signed the coordinator\'s TLS certificate', kind: { type: 'string' } },
  { key: 'threads' as never, flag: '--threads <n>', description: 'compute threads on this machine', kind: { type: 'int', min: 1 } },
  { key: 'engine' as never, flag: '--engine <name>', description: 'compute engine (must match the coordinator\'s)', kind: { type: 'enum', choices: ['onnx', 'tfjs'] } },
  { key: 'device' as never, flag: '--device <name>', description: 'where the engine computes', kind: { type: 'enum', choices: ['cpu', 'cuda', 'gpu'] } },
  { key: 'data' as never, flag: '--data <dir>', description: 'a local copy of the dataset ("embedded" for the built-in MNIST); used only if its checksum matches the coordinator\'s', kind: { type: 'string' } },
  { key: 'maxRetries' as never, flag: '--max-retries <n>', description: 'give up after n failed connection attempts in a row (0 = keep trying)', kind: { type: 'int', min: 0 } },
];

export function buildProgram(): Command {
  const program = new Command('dtrain')
    .description('Distributed data-parallel MLP trainer: coordinator, local worker threads and remote workers')
    .showHelpAfterError()
    .configureOutput({ outputError: (text, write) => write(text) });
  const coord = program
    .command('coordinator')
    .description('train (by default: the tutorial MLP on the embedded MNIST, on all cores)')
    .option('--config <file>', 'read options from a JSON file such as cluster.config.json (flags override it)');
  addOptions(coord, TRAIN_OPTIONS, DEFAULTS as unknown as Record<string, unknown>).action((flags) => coordinator(flags));
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
  addOptions(work, WORKER_OPTIONS, { threads: 1, engine: 'onnx', device: 'cpu', maxRetries: 0 }).action((flags) => {
    if (typeof flags.connect !== 'string') throw workerNeedsConnect();
    return worker(flags);
  });
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
