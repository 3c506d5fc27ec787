#!/usr/bin/env node
/**
 * The dtrain command line: option tables turned into commander flags, thin actions that lazily import
 * the programmatic API, one error banner and process.exitCode.
 */
import { Command, Option } from 'commander';
import { DEFAULTS, parseOptionValue, TRAIN_OPTIONS, type OptionSpec, type TrainConfig } from './config.js';
import { show } from './errors.js';

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
