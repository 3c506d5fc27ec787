/**
 * Whether an emulation measured the emulated machines or the host: every group's CPU used and time throttled
 * per step, and the host's idle share, over the timed steps of a run. A sampler reads the groups' counters
 * and /proc/stat every few tens of ms; a run's window is then cut out of the samples by time (its end when
 * the last step was seen, its start that end less the timed steps' duration), values between samples
 * interpolated. Mininet-HiFi's rule: the quotas must leave the host idle, or it measures the host.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import type { CpuGroup, GroupCounters } from './emulation.js';

/** The share of the host's cores the quotas may add up to (mininet kept its hosts well under the machine). */
export const MAX_QUOTA_SHARE = 0.6;

/** One group's fidelity over a run's timed steps. */
export interface GroupFidelity {
  group: string;
  cores: number;
  cpuMsPerStep: number;
  throttledMsPerStep: number;
}

export interface Fidelity {
  groups: GroupFidelity[];
  /** The host's idle share (idle + iowait over all its CPU time) over the window; NaN where not sampled. */
  hostIdleShare: number;
  /** The quotas added up, in cores, and whether that is over MAX_QUOTA_SHARE of the host's. */
  quotaCores: number;
  oversubscribed: boolean;
}

interface Sample {
  t: number;
  groups: GroupCounters[];
  hostIdle: number;
  hostTotal: number;
}

/** Idle (idle + iowait) and total jiffies of all CPUs, from /proc/stat's first line (guest time is in user's already). */
export function hostCpu(stat: string = readFileSync('/proc/stat', 'utf8')): { idle: number; total: number } {
  const [, user, nice, system, idle, iowait, irq, softirq, steal] = stat.split('\n')[0].trim().split(/\s+/).map(Number);
  return { idle: idle + iowait, total: user + nice + system + idle + iowait + irq + softirq + steal };
}

/** The quotas of one run added up, and whether they leave less than 1 − MAX_QUOTA_SHARE of the host idle. */
export function quotaLoad(cores: number[], hostCores = availableParallelism()): { quotaCores: number; oversubscribed: boolean } {
  const quotaCores = cores.reduce((a, b) => a + b, 0);
  return { quotaCores, oversubscribed: quotaCores > MAX_QUOTA_SHARE * hostCores + 1e-9 };
}

export class FidelitySampler {
  private readonly samples: Sample[] = [];
  private timer: NodeJS.Timeout | undefined;
  /** When `endWhen` first held: the end of the run's window. */
  endedAt: number | undefined;

  /**
   * Samples `groups` every `everyMs`; `endWhen`, asked at every sample, says whether the run's last timed
   * step is done (the sample that first sees it closes the window).
   */
  constructor(
    private readonly groups: CpuGroup[],
    private readonly endWhen: () => boolean,
    private readonly everyMs = 50,
  ) {}

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.everyMs);
  }

  /** Takes the last sample (once: later calls do nothing, so that clean-up may call it again). */
  stop(): void {
    if (this.timer === undefined) return;
    clearInterval(this.timer);
    this.timer = undefined;
    this.sample();
  }

  /** Each group's CPU and throttled time per step over [end − windowMs, end], and the host's idle share. */
  fidelity(windowMs: number, steps: number, hostCores = availableParallelism()): Fidelity {
    const end = this.endedAt ?? this.samples.at(-1)!.t;
    const [from, to] = [this.at(end - windowMs), this.at(end)];
    const load = quotaLoad(this.groups.map((g) => g.cores), hostCores);
    return {
      groups: this.groups.map((g, i) => ({
        group: g.label,
        cores: g.cores,
        cpuMsPerStep: (to.groups[i].cpuNs - from.groups[i].cpuNs) / 1e6 / steps,
        throttledMsPerStep: (to.groups[i].throttledNs - from.groups[i].throttledNs) / 1e6 / steps,
      })),
      hostIdleShare: to.hostTotal > from.hostTotal ? (to.hostIdle - from.hostIdle) / (to.hostTotal - from.hostTotal) : NaN,
      ...load,
    };
  }

  private sample(): void {
    const t = Date.now();
    for (const g of this.groups) g.follow();
    const host = hostCpu();
    this.samples.push({ t, groups: this.groups.map((g) => g.counters()), hostIdle: host.idle, hostTotal: host.total });
    if (this.endedAt === undefined && this.endWhen()) this.endedAt = t;
  }

  /** The counters at time t, interpolated between the samples around it (the first or last outside them). */
  private at(t: number): Sample {
    const s = this.samples;
    const j = s.findIndex((x) => x.t >= t);
    if (j < 0) return s.at(-1)!;
    if (j === 0) return s[0];
    const [a, b] = [s[j - 1], s[j]];
    const f = b.t === a.t ? 1 : (t - a.t) / (b.t - a.t);
    const mix = (x: number, y: number) => x + f * (y - x);
    return {
      t,
      groups: a.groups.map((g, i) => ({ cpuNs: mix(g.cpuNs, b.groups[i].cpuNs), throttledNs: mix(g.throttledNs, b.groups[i].throttledNs) })),
      hostIdle: mix(a.hostIdle, b.hostIdle),
      hostTotal: mix(a.hostTotal, b.hostTotal),
    };
  }
}
