/**
 * Every relative link of README.md and docs/**.md resolves: the file (or folder) exists, and an anchor names
 * a heading of its page, slugged as GitHub slugs them. Links inside code (fenced or inline) are not links.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../src/paths.js';

/** README.md and every Markdown file under docs/. */
function pages(): string[] {
  const found = [join(packageRoot, 'README.md')];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (name.endsWith('.md')) found.push(path);
    }
  };
  walk(join(packageRoot, 'docs'));
  return found;
}

/** The text outside fenced code blocks and inline code spans. */
function prose(markdown: string): string {
  return markdown.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '').replace(/`[^`\n]*`/g, '');
}

/** GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, -, _ and spaces kept), spaces as hyphens. */
export function slug(heading: string): string {
  const text = heading
    .replace(/`/g, '')
    .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
    .replace(/<[^>]+>/g, '')
    .trim()
    .toLowerCase();
  return text.replace(/[^\p{L}\p{N}\p{M}\- _]/gu, '').replace(/ /g, '-');
}

/** The anchors of a page: its headings' slugs (a repeated one gets -1, -2, …) and explicit ids. */
function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const found = new Set<string>();
  const outsideFences = markdown.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '');
  for (const m of outsideFences.matchAll(/^#{1,6}[ \t]+(.+?)[ \t#]*$/gm)) {
    const base = slug(m[1]);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    found.add(n === 0 ? base : `${base}-${n}`);
  }
  for (const m of outsideFences.matchAll(/<a\s+(?:id|name)="([^"]+)"/g)) found.add(m[1]);
  return found;
}

/** Relative link targets of a page: [text](target) and ![alt](target), without titles. */
function links(markdown: string): string[] {
  return [...prose(markdown).matchAll(/!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)]
    .map((m) => m[1])
    .filter((target) => !/^[a-z][a-z0-9+.-]*:/i.test(target));
}

describe('links in README.md and docs/', () => {
  it('slugs headings as GitHub does', () => {
    expect(slug('Plans: replicated, sharded or server')).toBe('plans-replicated-sharded-or-server');
    expect(slug('GPU (WebGPU)')).toBe('gpu-webgpu');
    expect(slug('`dtrain run` under launchers')).toBe('dtrain-run-under-launchers');
    expect(slug('Checkpoints, resume, exported models, metrics')).toBe('checkpoints-resume-exported-models-metrics');
    expect(slug('What travels — and why')).toBe('what-travels--and-why');
  });

  it('finds links in prose, not in code, and anchors with their repeats', () => {
    expect(links('see [a](a.md#x) and ![i](img/p.svg "t") but `[b](b.md)` or\n```\n[c](c.md)\n```\n[web](https://x.org)')).toEqual(['a.md#x', 'img/p.svg']);
    expect([...anchors('# A\n## A\n```\n# not a heading\n```\n### B: c')]).toEqual(['a', 'a-1', 'b-c']);
  });

  const all = pages();
  it('covers README.md and the docs pages', () => {
    expect(all.length).toBeGreaterThan(5);
  });

  it.each(all.map((page) => [relative(packageRoot, page), page]))('%s: every relative link resolves, anchors included', (_, page) => {
    const text = readFileSync(page, 'utf8');
    const broken: string[] = [];
    for (const target of links(text)) {
      const [path, anchor] = target.split('#', 2) as [string, string | undefined];
      const file = path === '' ? page : join(dirname(page), decodeURIComponent(path));
      if (!existsSync(file)) {
        broken.push(`${target}: no ${relative(packageRoot, file)}`);
        continue;
      }
      if (anchor === undefined || anchor === '') continue;
      if (!file.endsWith('.md')) {
        broken.push(`${target}: an anchor into a file that is not Markdown`);
        continue;
      }
      if (!anchors(readFileSync(file, 'utf8')).has(anchor)) broken.push(`${target}: no heading with the anchor #${anchor} in ${relative(packageRoot, file)}`);
    }
    expect(broken).toEqual([]);
  });
});
