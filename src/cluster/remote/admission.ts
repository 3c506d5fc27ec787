/**
 * Who may start authenticating: the hub's admission control against floods of connections that never
 * prove the token. Three rules, all answered before a connection is upgraded to a WebSocket (listener.ts):
 *   - at most maxPendingAuth connections authenticate at once; past it, new ones are turned away at once
 *     (each authenticating peer holds a timer, a challenge and up to MAX_UNAUTHENTICATED_BYTES of input,
 *     so the cap bounds what strangers can make the coordinator hold);
 *   - at most maxPendingAuthPerAddress of them from one address, so that one address cannot take every
 *     slot. It counts only connections still authenticating (an honest worker holds a slot for the few
 *     milliseconds of its hello), and a connection turned away at it counts as no failure and is told to
 *     try again later: honest workers sharing an address (loopback, a NAT) get in on their next try;
 *   - an address whose connections fail to authenticate maxFailures times within failureWindowMs is
 *     refused for blockMs, twice as long at each repeat (up to maxBlockMs): guessing the token from one
 *     address is slowed down, and its connections stop taking the slots of the others.
 * "Address" is an IPv4 address, or an IPv6 /64 prefix: one host is commonly given a whole /64, so counting
 * its single addresses would let it take every slot and never be refused.
 * Pure bookkeeping with an injectable clock; the hub turns its answers into close frames and log lines.
 */

export interface AdmissionOptions {
  /** Connections authenticating at once; past it new ones are refused with a reason. */
  maxPendingAuth: number;
  /** Connections authenticating at once from one address (an IPv6 /64); past it new ones from there are refused. */
  maxPendingAuthPerAddress: number;
  /** Failed authentications from one address within failureWindowMs that get it refused for a while. */
  maxFailures: number;
  failureWindowMs: number;
  /** How long an address is refused the first time; each further time doubles it, up to maxBlockMs. */
  blockMs: number;
  maxBlockMs: number;
}

export const ADMISSION_DEFAULTS: AdmissionOptions = {
  maxPendingAuth: 64,
  maxPendingAuthPerAddress: 16,
  maxFailures: 3,
  failureWindowMs: 60_000,
  blockMs: 1000,
  maxBlockMs: 300_000,
};

/**
 * Bytes a connection may send before it authenticated: a hello is a few hundred. Without a limit a
 * stranger could send a frame as large as a state snapshot (megabytes) before any check.
 */
export const MAX_UNAUTHENTICATED_BYTES = 64 * 1024;

/** Addresses remembered at once; the least recently failing are forgotten first (a spoofed range cannot grow the table). */
const MAX_ADDRESSES = 4096;

/** Live counts, for the log and for tests. */
export interface AdmissionStats {
  readonly authenticating: number;
  readonly peakAuthenticating: number;
  /** Connections turned away (at the cap, or from a refused address). */
  readonly refused: number;
}

interface AddressRecord {
  /** When its recent failures happened (within the window). */
  failures: number[];
  blockedUntil: number;
  /** How many times it was refused for a while: the next time lasts twice as long. */
  blocks: number;
}

export class Admission {
  private readonly counts = { authenticating: 0, peakAuthenticating: 0, refused: 0 };
  private readonly addresses = new Map<string, AddressRecord>();
  /** Connections authenticating now, by address (only addresses with some). */
  private readonly pending = new Map<string, number>();

  constructor(
    private readonly options: AdmissionOptions,
    private readonly now: () => number = () => performance.now(),
  ) {}

  get stats(): AdmissionStats {
    return this.counts;
  }

  /**
   * Whether a new connection from `address` may authenticate: undefined if so (it then holds a slot
   * until settle), or why not.
   */
  admit(ip: string): string | undefined {
    const address = addressOf(ip);
    const record = this.addresses.get(address);
    const waitMs = record ? record.blockedUntil - this.now() : 0;
    const pending = this.pending.get(address) ?? 0;
    let refusal: string | undefined;
    if (waitMs > 0) refusal = `too many failed authentications from ${address}: refused for another ${seconds(waitMs)}`;
    else if (this.counts.authenticating >= this.options.maxPendingAuth) {
      refusal = `too many connections authenticating (${this.options.maxPendingAuth}): try again later`;
    } else if (pending >= this.options.maxPendingAuthPerAddress) {
      refusal = `too many connections authenticating from ${address} (${this.options.maxPendingAuthPerAddress}): try again later`;
    }
    if (refusal) {
      this.counts.refused++;
      return refusal;
    }
    this.pending.set(address, pending + 1);
    this.counts.authenticating++;
    this.counts.peakAuthenticating = Math.max(this.counts.peakAuthenticating, this.counts.authenticating);
    return undefined;
  }

  /**
   * A connection admitted from `address` authenticated, or ended without doing so (a wrong token,
   * junk, silence until the deadline, a hang-up): its slot is freed. Returns a line for the log when
   * this failure gets the address refused for a while.
   */
  settle(ip: string, authenticated: boolean): string | undefined {
    const address = addressOf(ip);
    this.counts.authenticating--;
    const pending = (this.pending.get(address) ?? 1) - 1;
    if (pending > 0) this.pending.set(address, pending);
    else this.pending.delete(address);
    if (authenticated) {
      this.addresses.delete(address);
      return undefined;
    }
    return this.failed(address);
  }

  private failed(address: string): string | undefined {
    const now = this.now();
    const { maxFailures, failureWindowMs, blockMs, maxBlockMs } = this.options;
    const record = this.addresses.get(address) ?? { failures: [], blockedUntil: 0, blocks: 0 };
    // Re-inserted so that the map's order is that of the last failure: the oldest is forgotten first.
    this.addresses.delete(address);
    this.addresses.set(address, record);
    if (this.addresses.size > MAX_ADDRESSES) this.addresses.delete(this.addresses.keys().next().value!);
    record.failures = record.failures.filter((t) => now - t < failureWindowMs);
    record.failures.push(now);
    if (record.failures.length < maxFailures) return undefined;
    const ms = Math.min(maxBlockMs, blockMs * 2 ** record.blocks);
    record.blocks++;
    record.blockedUntil = now + ms;
    record.failures = [];
    return `${maxFailures} failed authentications from ${address} within ${seconds(failureWindowMs)}: refusing its connections for ${seconds(ms)}`;
  }
}

/**
 * What admission counts a connection's IP by: an IPv4 address (also when written IPv4-mapped, ::ffff:a.b.c.d),
 * or an IPv6 address's /64 prefix, written "2001:db8:1:2::/64".
 */
export function addressOf(ip: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped) return mapped[1];
  if (!ip.includes(':')) return ip;
  const [head, tail = ''] = ip.split('%')[0].toLowerCase().split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  // An embedded IPv4 tail (…:a.b.c.d) is two groups; only the first four groups matter here anyway.
  const groups = ip.includes('::') ? [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right] : left;
  return `${groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, '')).join(':')}::/64`;
}

function seconds(ms: number): string {
  return `${Math.ceil(ms / 100) / 10} s`;
}

/**
 * Refusals reported without flooding the log: the first at once, then those of each following period
 * as one line with their count (a flood of connections must not become a flood of log lines).
 */
export class RefusalLog {
  private held = 0;
  private lastReason = '';
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly report: (count: number, reason: string) => void,
    private readonly periodMs = 1000,
  ) {}

  add(reason: string): void {
    if (this.timer) {
      this.held++;
      this.lastReason = reason;
      return;
    }
    this.report(1, reason);
    this.startPeriod();
  }

  /** Reports what is held now (the hub closes). */
  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.flush();
  }

  private startPeriod(): void {
    this.timer = setTimeout(() => {
      this.timer = undefined;
      // A flood still going on gets one line a period; a quiet period ends the aggregation.
      if (this.flush()) this.startPeriod();
    }, this.periodMs);
    this.timer.unref();
  }

  private flush(): boolean {
    if (this.held === 0) return false;
    this.report(this.held, this.lastReason);
    this.held = 0;
    return true;
  }
}
