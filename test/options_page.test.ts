/**
 * docs/options.md is generated (scripts/options-page.ts); these tests fail when an option table changed and
 * the page was not made again, and check the page against what `--help` prints for every command.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { buildProgram } from '../src/cli.js';
import { OPTIONS_PAGE, optionsPage } from '../scripts/options-page.js';

const page = readFileSync(OPTIONS_PAGE, 'utf8');

/** The page's sections: command name → the first cell (the flags) and last cell (the description) of each row. */
function sections(text: string): Map<string, { flags: string; description: string }[]> {
  const found = new Map<string, { flags: string; description: string }[]>();
  let rows: { flags: string; description: string }[] | undefined;
  for (const line of text.split('\n')) {
    const heading = /^## dtrain (\S+)$/.exec(line);
    if (heading) found.set(heading[1], (rows = []));
    const row = /^\| `([^`]+)` \| (?:.* \| )?(.*?) \|$/.exec(line);
    if (row && rows) rows.push({ flags: row[1], description: row[2] });
  }
  return found;
}

/** The flags `--help` lists (as commander writes them: two spaces, the flags, two or more spaces, the help). */
function helpFlags(help: string): string[] {
  return [...help.matchAll(/^ {2}(-[^ ].*?)(?: {2,}|$)/gm)].map((m) => m[1]).filter((f) => f !== '-h, --help');
}

const words = (text: string) => text.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/\\\|/g, '|').replace(/\s+/g, ' ').trim();

describe('docs/options.md', () => {
  it('is what scripts/options-page.ts makes of the option tables now (if not: npm run options-page)', () => {
    expect(page, 'docs/options.md is stale: run npm run options-page').toBe(optionsPage());
  });

  it('has a section for every command, listing exactly the flags its --help lists, with the same help text', () => {
    const documented = sections(page);
    const commands = buildProgram().commands;
    expect([...documented.keys()]).toEqual(commands.map((c) => c.name()));
    for (const command of commands) {
      const help = command.helpInformation();
      const rows = documented.get(command.name())!;
      expect(rows.map((r) => r.flags), `dtrain ${command.name()}`).toEqual(helpFlags(help));
      const helpText = words(help);
      for (const row of rows) {
        const description = words(row.description).replace(/ \(required\)$/, '');
        expect(helpText, `dtrain ${command.name()} ${row.flags}`).toContain(description);
      }
    }
  });

  it('gives each default as --help does', () => {
    const help = new Map(buildProgram().commands.map((c) => [c.name(), words(c.helpInformation())]));
    let command = '';
    let checked = 0;
    for (const line of page.split('\n')) {
      command = /^## dtrain (\S+)$/.exec(line)?.[1] ?? command;
      // | `--flag <x>` | `key` | `default` | accepts | what it does |: a default in a code span is a value; --help leaves false out.
      const row = /^\| `([^`]+)` \| `[^`]+`(?: \(false\))? \| `([^`]+)` \|/.exec(line);
      if (!row || row[2] === 'false') continue;
      // --help puts an option's shown default after its help text, so the first one after the flag is its own.
      const after = help.get(command)!.split(`${row[1]} `)[1] ?? '';
      expect(after.slice(after.indexOf('(default: ')), `dtrain ${command} ${row[1]}`).toMatch(new RegExp(`^\\(default: ${row[2].replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\)`));
      checked++;
    }
    expect(checked).toBeGreaterThan(40);
  });

  it('shows no default that depends on the machine it was made on', () => {
    expect(page).toMatch(/\| `--threads <n>` \| `threads` \| this machine's cores/);
  });
});
