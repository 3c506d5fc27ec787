/** Link rates as tc writes them (1gbit, 100mbit), for the scripts that shape links. */

/** Bits per second of a tc rate: 1gbit, 100mbit, 500kbit, 1000000bit. */
export function parseRate(rate: string): number {
  const m = /^(\d+(?:\.\d+)?)([kmg]?)bit$/i.exec(rate);
  if (!m) throw new Error(`--link ${rate}: expected a rate such as 1gbit or 100mbit`);
  return Number(m[1]) * { '': 1, k: 1e3, m: 1e6, g: 1e9 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
}
