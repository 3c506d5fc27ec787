/**
 * The command lines of the scripts (scaling, bench, plans): each declares its flags, and a flag it does not
 * declare is an error naming the ones it has (a misspelt --cpu must not run a benchmark without the limit).
 * Built on node:util parseArgs in strict mode; values stay strings, each script converts and checks its own.
 *
 *   const args = scriptArgs({ steps: 'value', weak: 'switch' });
 *   args.value('steps', '300');  args.has('weak');
 */
import { parseArgs } from 'node:util';

/** A flag takes a value (--steps 30) or is a switch (--weak). */
export type FlagKind = 'value' | 'switch';

export interface ScriptArgs {
  /** The flag's value, or `fallback` when it was not given. */
  value(name: string, fallback: string): string;
  /** Whether the flag was given (switches, or a value flag given at all). */
  has(name: string): boolean;
}

/**
 * Reads `argv` (by default this process's arguments) against the declared flags; throws one line naming
 * the unknown or malformed flag and the flags there are (the script prefixes its name when it prints it).
 */
export function scriptArgs(flags: Record<string, FlagKind>, argv: string[] = process.argv.slice(2)): ScriptArgs {
  const options = Object.fromEntries(Object.entries(flags).map(([name, kind]) => [name, { type: kind === 'value' ? ('string' as const) : ('boolean' as const) }]));
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false }));
  } catch (e) {
    const known = Object.entries(flags).map(([name, kind]) => `--${name}${kind === 'value' ? ' VALUE' : ''}`).join(', ');
    // parseArgs' own first sentence names the argument ("Unknown option '--cpu'").
    const said = (e as Error).message.split(/\.(?:\s|$)/)[0];
    throw new Error(`${said}; expected one of ${known}`);
  }
  return {
    value: (name, fallback) => {
      if (!(name in flags)) throw new Error(`--${name} is read but not declared`);
      const v = values[name];
      return typeof v === 'string' ? v : fallback;
    },
    has: (name) => values[name] !== undefined && values[name] !== false,
  };
}
