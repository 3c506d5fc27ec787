/**
 * Slurm's compressed host lists (SLURM_JOB_NODELIST and friends), such as `node[01-04,07],gpu3` or
 * `rack[1-2]-n[1-2]`: expanded in Slurm's order, so that the first host is where task 0 runs. Numbers keep
 * the zero padding of the range they come from (`[08-10]` is 08, 09, 10), as Slurm writes them.
 */

/** Every host of a compressed list, in order; throws a plain Error naming what is malformed. */
export function expandHostList(list: string): string[] {
  const hosts = splitTopLevel(list).flatMap(expandItem);
  if (hosts.length === 0) throw new Error('no host in the list');
  return hosts;
}

/**
 * The first host of a compressed list (task 0's, rank 0's): the first item with each bracket group at its
 * first value, without expanding the rest (a list such as `a[0-999999]-[0-999999]` would be 10^12 names).
 */
export function firstHost(list: string): string {
  const first = splitTopLevel(list)[0];
  if (first === undefined) throw new Error('no host in the list');
  return expandItem(first.replace(/\[([^\]]*)\]/g, (_, inside: string) => `[${inside.split(',')[0].trim()}]`).replace(/\[(\d+)-\d+\]/g, '[$1]'))[0];
}

/** Splits at the commas outside brackets: `a[1,2],b` is `a[1,2]` and `b`. */
function splitTopLevel(list: string): string[] {
  const items: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < list.length; i++) {
    const c = list[i];
    if (c === '[') depth++;
    else if (c === ']') depth--;
    if (depth < 0 || depth > 1) throw new Error(`unbalanced "${c}" at character ${i + 1}`);
    if (c === ',' && depth === 0) {
      items.push(list.slice(start, i));
      start = i + 1;
    }
  }
  if (depth !== 0) throw new Error('a "[" is never closed');
  items.push(list.slice(start));
  return items.map((s) => s.trim()).filter((s) => s.length > 0);
}

/** One item: literal text and bracket groups, expanded as their cartesian product (left to right). */
function expandItem(item: string): string[] {
  let hosts = [''];
  for (const part of item.split(/(\[[^\]]*\])/)) {
    if (part === '') continue;
    const choices = part.startsWith('[') ? expandGroup(part.slice(1, -1)) : [part];
    hosts = hosts.flatMap((prefix) => choices.map((c) => prefix + c));
  }
  return hosts;
}

/** The inside of one bracket group: `01-04,07` is 01, 02, 03, 04, 07. */
function expandGroup(group: string): string[] {
  return group.split(',').flatMap((range) => {
    const match = /^\s*(\d+)(?:-(\d+))?\s*$/.exec(range);
    if (!match) throw new Error(`"[${group}]" is not a list of numbers and ranges`);
    const [, from, to = from] = match;
    const [a, b] = [Number(from), Number(to)];
    if (b < a) throw new Error(`range "${range}" runs backwards`);
    if (b - a >= 1 << 20) throw new Error(`range "${range}" is too long`);
    return Array.from({ length: b - a + 1 }, (_, i) => String(a + i).padStart(from.length, '0'));
  });
}
