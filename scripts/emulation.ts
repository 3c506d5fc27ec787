/**
 * Emulated machines' CPUs: one cgroup per emulated machine with a CFS bandwidth limit of C cores (quota =
 * C × period, as mininet's CPULimitedHost), so that N processes on one host each get the CPU time of a
 * machine of C cores. cgroup v1 (cpu.cfs_quota_us / cpu.cfs_period_us, with the cpuacct controller beside it
 * for CPU used, mounted with cpu or apart) or v2 (cpu.max, cpu.stat), whichever controller this host mounts.
 *
 * Names carry this process's pid and are removed by remove(), and on exit or SIGINT/SIGTERM for groups still
 * standing (their processes, all started by this one, are killed first: a cgroup with tasks cannot go).
 * Host-wide knobs (sched_cfs_bandwidth_slice_us) are left as found.
 *
 *   const g = new CpuGroup('machine-1', 0.25);        // 0.25 core, 10 ms period
 *   spawn(...g.wrap('node', ['worker.js']));          // the process is in the group from its first instruction
 *   g.counters();  g.remove();
 */
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { forget, removeOnExit } from './cleanup.js';

export const DEFAULT_PERIOD_US = 10_000;
/** The kernel's least quota (1 ms). */
const MIN_QUOTA_US = 1000;

/** Where this host's CPU controller is: v1 with its cpuacct hierarchy (the same folder when co-mounted), or v2. */
export type Hierarchy = { version: 1; cpu: string; cpuacct: string } | { version: 2; root: string };

/** Cumulative CPU used and time throttled by a group, in ns. */
export interface GroupCounters {
  cpuNs: number;
  throttledNs: number;
}

/**
 * This host's CPU controller from /proc/self/mountinfo, or why there is none. v1 is taken when the cpu
 * controller is mounted there (a controller lives in one hierarchy only); v2 needs cpu in its root's
 * subtree_control (enabling it would change the host for everyone: not done here).
 */
export function findHierarchy(mountinfo: string = readFileSync('/proc/self/mountinfo', 'utf8')): Hierarchy | string {
  const mounts = mountinfo
    .split('\n')
    .filter((line) => line.includes(' - '))
    .map((line) => {
      const [before, after] = line.split(' - ');
      const [fstype, , superOptions = ''] = after.split(' ');
      return { point: before.split(' ')[4], fstype, controllers: superOptions.split(',') };
    });
  const v1 = (controller: string) => mounts.find((m) => m.fstype === 'cgroup' && m.controllers.includes(controller))?.point;
  const cpu = v1('cpu');
  if (cpu) {
    const cpuacct = v1('cpuacct');
    return cpuacct ? { version: 1, cpu, cpuacct } : 'the cgroup v1 cpu controller is mounted without cpuacct (CPU used cannot be read)';
  }
  const v2 = mounts.find((m) => m.fstype === 'cgroup2')?.point;
  if (!v2) return 'no cgroup cpu controller is mounted (v1 cpu or v2 with cpu.max)';
  const enabled = (file: string) => existsSync(join(v2, file)) && readFileSync(join(v2, file), 'utf8').split(/\s+/).includes('cpu');
  if (!enabled('cgroup.controllers') || !enabled('cgroup.subtree_control')) return `the cgroup v2 hierarchy at ${v2} does not hand the cpu controller to its children`;
  return { version: 2, root: v2 };
}

const sleepSync = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
let made = 0;

/** A group name no other process's can be: this pid, a count, and the label's letters and digits. */
export function groupName(label: string): string {
  return `dtrain-emu-${process.pid}-${made++}-${label.replace(/[^a-z0-9]+/gi, '-')}`;
}

export class CpuGroup {
  /** The group's folders: in the cpu hierarchy first, then cpuacct's where it is a hierarchy of its own. */
  readonly dirs: string[];
  readonly quotaUs: number;
  private readonly hierarchy: Hierarchy;
  private removed = false;

  /** Why groups cannot be made here (not root, no controller, the kernel refuses), or undefined if they can. */
  static unavailable(): string | undefined {
    if (process.getuid?.() !== 0) return 'needs root to create cgroups';
    const hierarchy = findHierarchy();
    if (typeof hierarchy === 'string') return hierarchy;
    try {
      new CpuGroup('probe', 0.5).remove();
      return undefined;
    } catch (e) {
      return `cannot create a cgroup here (${(e as Error).message.split('\n')[0]})`;
    }
  }

  /**
   * A group limited to `cores` cores: quota = cores × periodUs each period. Throws when the quota would
   * be under the kernel's 1 ms (a longer period allows a smaller share).
   */
  constructor(
    readonly label: string,
    readonly cores: number,
    readonly periodUs: number = DEFAULT_PERIOD_US,
    name: string = groupName(label),
  ) {
    if (!(cores > 0)) throw new Error(`${label}: ${cores} cores: expected a positive number`);
    this.quotaUs = Math.round(cores * periodUs);
    if (this.quotaUs < MIN_QUOTA_US) throw new Error(`${cores} cores of a ${periodUs} µs period is a quota under the kernel's ${MIN_QUOTA_US} µs: choose a longer period`);
    const hierarchy = findHierarchy();
    if (typeof hierarchy === 'string') throw new Error(hierarchy);
    this.hierarchy = hierarchy;
    this.dirs =
      hierarchy.version === 2 ? [join(hierarchy.root, name)] : [...new Set([join(hierarchy.cpu, name), join(hierarchy.cpuacct, name)])];
    removeOnExit(this);
    try {
      for (const dir of this.dirs) mkdirSync(dir);
      if (hierarchy.version === 2) {
        writeFileSync(join(this.dirs[0], 'cpu.max'), `${this.quotaUs} ${periodUs}`);
      } else {
        writeFileSync(join(this.dirs[0], 'cpu.cfs_period_us'), String(periodUs));
        writeFileSync(join(this.dirs[0], 'cpu.cfs_quota_us'), String(this.quotaUs));
      }
    } catch (e) {
      this.remove();
      throw e;
    }
  }

  /** The group's cgroup.procs in the cpu hierarchy: the file a process writes its pid to (DTRAIN_DDP_CGROUP's folder). */
  get cpuDir(): string {
    return this.dirs[0];
  }

  /**
   * `command args` run through sh, which puts itself into the group and then execs the command: nothing the
   * command does, its threads and children included, runs outside the group. Paths hold no quotes (names above).
   */
  wrap(command: string, args: string[]): [string, string[]] {
    const procs = this.dirs.map((d) => `'${join(d, 'cgroup.procs')}'`).join(' ');
    return ['sh', ['-c', `for f in ${procs}; do echo $$ > "$f" || exit 97; done; exec "$@"`, 'sh', command, ...args]];
  }

  /** The pids in the group (its cpu hierarchy). */
  tasks(): number[] {
    return this.readProcs(this.dirs[0]);
  }

  /**
   * For processes that moved themselves into the cpu hierarchy's group only (DDP's ranks, through
   * DTRAIN_DDP_CGROUP), moves them into cpuacct's group too, so that their CPU is counted from then on.
   */
  follow(): void {
    if (this.dirs.length < 2 || this.removed) return;
    const counted = new Set(this.readProcs(this.dirs[1]));
    for (const pid of this.tasks()) {
      if (counted.has(pid)) continue;
      try {
        writeFileSync(join(this.dirs[1], 'cgroup.procs'), String(pid));
      } catch {
        // the process has ended in between
      }
    }
  }

  /** CPU used and time throttled so far (v1: cpuacct.usage and cpu.stat throttled_time; v2: cpu.stat). */
  counters(): GroupCounters {
    const stat = (dir: string) =>
      Object.fromEntries(
        readFileSync(join(dir, 'cpu.stat'), 'utf8')
          .split('\n')
          .filter(Boolean)
          .map((l) => l.split(' '))
          .map(([k, v]) => [k, Number(v)]),
      );
    if (this.hierarchy.version === 2) {
      const s = stat(this.dirs[0]);
      return { cpuNs: s.usage_usec * 1000, throttledNs: (s.throttled_usec ?? 0) * 1000 };
    }
    return { cpuNs: Number(readFileSync(join(this.dirs.at(-1)!, 'cpuacct.usage'), 'utf8')), throttledNs: stat(this.dirs[0]).throttled_time };
  }

  /**
   * Kills what is left in the group (processes this one started), then removes its folders, waiting up to
   * 2 s for the kernel to let dying tasks go; safe to repeat.
   */
  remove(): void {
    if (this.removed) return;
    this.removed = true;
    for (const dir of this.dirs) {
      for (let waited = 0; existsSync(dir); waited += 20) {
        for (const pid of this.readProcs(dir)) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
        try {
          rmdirSync(dir);
        } catch (e) {
          if (waited >= 2000) throw new Error(`cannot remove cgroup ${dir}: ${(e as Error).message}`);
          sleepSync(20);
        }
      }
    }
    forget(this);
  }

  private readProcs(dir: string): number[] {
    try {
      return readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
    } catch {
      return [];
    }
  }
}
