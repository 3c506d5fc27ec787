/**
 * A private network on this machine for tests and experiments with remote workers: a bridge in the root
 * namespace holds the coordinator's address, and each worker gets a network namespace of its own joined
 * to the bridge by a veth pair, so that its link can be shaped (tc tbf), cut and restored while the
 * others' stay up. One bridge rather than a /30 per pair: the coordinator listens on one address that
 * every worker reaches over its own link, and that address belongs to no worker's link.
 *
 * Interface and namespace names are global to the machine: they carry this process's pid, and the
 * subnet (10.77.X.0/24) is one no address of this machine is in yet. Everything is removed by remove(),
 * and on process exit or SIGINT/SIGTERM for networks still standing. Needs root and iproute2 (`ip`, `tc`);
 * unavailable() says why a network cannot be made here.
 *
 * spawnIn runs a command through `ip netns exec`, which mounts a /sys of the namespace's own: the cgroup
 * hierarchies are not there. A process that must join a cgroup joins it first (scripts/machines.ts), or
 * enters only the network namespace (nsenter --net=/run/netns/NAME, as scripts/reference.ts runs DDP).
 *
 *   const net = new TestNetwork(2);           // coordinator listens on net.address
 *   net.spawnIn(0, 'node', ['dist/src/cli.js', 'worker', '--connect', `ws://${net.address}:7070`]);
 *   net.shape(1, 100e6);  net.cut(0);  net.restore(0);  net.remove();
 */
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { forget, removeOnExit } from './cleanup.js';

export interface WorkerLink {
  /** The worker's network namespace. */
  ns: string;
  /** The veth end in the root namespace (a port of the bridge): set down to cut the link. */
  hostEnd: string;
  /** The veth end inside the namespace. */
  nsEnd: string;
  /** The worker's address. */
  address: string;
}

/** Runs a command; its stderr becomes the error's message (what `ip` says is the useful part). */
function run(command: string, args: string[]): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const stderr = String((e as { stderr?: unknown }).stderr ?? '').trim();
    throw new Error(`${command} ${args.join(' ')}: ${stderr || (e as Error).message}`);
  }
}

/** Like run, for clean-up: what is already gone is not an error. */
function tryRun(command: string, args: string[]): void {
  try {
    run(command, args);
  } catch {
    // already removed (or never made)
  }
}

/** A third octet X such that no address of this machine is in 10.77.X.0/24; starts at a pid-given one. */
function freeSubnet(): number {
  const used = new Set([...run('ip', ['-4', '-o', 'addr', 'show']).matchAll(/inet 10\.77\.(\d+)\./g)].map((m) => Number(m[1])));
  for (let i = 0; i < 254; i++) {
    const x = ((process.pid + i) % 254) + 1;
    if (!used.has(x)) return x;
  }
  throw new Error('no free 10.77.X.0/24 subnet');
}

export class TestNetwork {
  /** The coordinator's address, on the bridge: listen on it, and workers connect to it. */
  readonly address: string;
  readonly links: WorkerLink[] = [];
  private readonly bridge: string;
  private readonly children = new Set<ChildProcess>();
  private removed = false;
  private static made = 0;

  /** Why a network cannot be made here (not root, no namespaces or bridges), or undefined if it can. */
  static unavailable(): string | undefined {
    if (process.getuid?.() !== 0) return 'needs root to create network namespaces';
    try {
      new TestNetwork(1).remove();
      return undefined;
    } catch (e) {
      return `cannot create a network namespace here (${(e as Error).message.split('\n')[0]})`;
    }
  }

  constructor(workers: number) {
    // Names are at most 15 characters: "dtn" + pid (≤ 7 digits) + a short suffix.
    const name = `dtn${process.pid}${String.fromCharCode(97 + (TestNetwork.made++ % 26))}`;
    const subnet = `10.77.${freeSubnet()}`;
    this.bridge = `${name}br`;
    this.address = `${subnet}.1`;
    removeOnExit(this);
    try {
      run('ip', ['link', 'add', this.bridge, 'type', 'bridge']);
      run('ip', ['addr', 'add', `${this.address}/24`, 'dev', this.bridge]);
      run('ip', ['link', 'set', this.bridge, 'up']);
      for (let i = 0; i < workers; i++) this.addWorker(`${name}${i}`, `${subnet}.${i + 2}`);
    } catch (e) {
      this.remove();
      throw e;
    }
  }

  /** A namespace joined to the bridge by a veth pair, with its address and loopback up. */
  private addWorker(name: string, address: string): void {
    const link = { ns: name, hostEnd: `${name}h`, nsEnd: `${name}n`, address };
    // Recorded first, so that remove() finds what a failure half-way left behind.
    this.links.push(link);
    run('ip', ['netns', 'add', link.ns]);
    run('ip', ['link', 'add', link.hostEnd, 'type', 'veth', 'peer', 'name', link.nsEnd, 'netns', link.ns]);
    run('ip', ['link', 'set', link.hostEnd, 'master', this.bridge, 'up']);
    run('ip', ['-n', link.ns, 'addr', 'add', `${address}/24`, 'dev', link.nsEnd]);
    run('ip', ['-n', link.ns, 'link', 'set', link.nsEnd, 'up']);
    run('ip', ['-n', link.ns, 'link', 'set', 'lo', 'up']);
  }

  /**
   * Limits worker i's link to `bitsPerSecond` each way (tbf on both veth ends), with a burst of 10 ms of
   * traffic (at least 16 kB: tbf needs one full frame and more than the rate gives per timer tick).
   */
  shape(i: number, bitsPerSecond: number): void {
    const { ns, hostEnd, nsEnd } = this.links[i];
    const tbf = ['root', 'tbf', 'rate', `${Math.round(bitsPerSecond)}bit`, 'burst', String(Math.max(16384, Math.round(bitsPerSecond / 800))), 'latency', '100ms'];
    run('tc', ['qdisc', 'replace', 'dev', hostEnd, ...tbf]);
    run('tc', ['-n', ns, 'qdisc', 'replace', 'dev', nsEnd, ...tbf]);
  }

  /** Takes worker i's rate limit off again (shape); a no-op once the network is removed. */
  unshape(i: number): void {
    if (this.removed) return;
    const { ns, hostEnd, nsEnd } = this.links[i];
    tryRun('tc', ['qdisc', 'del', 'dev', hostEnd, 'root']);
    tryRun('tc', ['-n', ns, 'qdisc', 'del', 'dev', nsEnd, 'root']);
  }

  /**
   * Limits the loopback inside worker i's namespace to `bitsPerSecond` (tbf), for programs whose processes
   * all talk over 127.0.0.1 (PyTorch DDP's ranks): their traffic then crosses that one limit. The MTU
   * becomes a veth's 1500 bytes, as the workers' links have, and because tbf drops any frame larger than
   * its burst (loopback's are 64 KiB).
   */
  shapeLoopback(i: number, bitsPerSecond: number): void {
    const { ns } = this.links[i];
    run('ip', ['-n', ns, 'link', 'set', 'lo', 'mtu', '1500']);
    run('tc', ['-n', ns, 'qdisc', 'replace', 'dev', 'lo', 'root', 'tbf', 'rate', `${Math.round(bitsPerSecond)}bit`, 'burst', String(Math.max(16384, Math.round(bitsPerSecond / 800))), 'latency', '100ms']);
  }

  /**
   * Cuts worker i's link: its root-side end goes down, so nothing passes either way. Sockets are not
   * told: TCP keeps retransmitting, with backoff, until the link is restored or someone gives up.
   */
  cut(i: number): void {
    run('ip', ['link', 'set', this.links[i].hostEnd, 'down']);
  }

  /** Brings worker i's link back up; a no-op once the network is removed (a test may end mid-cut). */
  restore(i: number): void {
    if (this.removed) return;
    run('ip', ['link', 'set', this.links[i].hostEnd, 'up']);
  }

  /**
   * Cuts the link between workers i and j only (their links to the bridge address stay up): a blackhole
   * route to the other in each of the two namespaces drops what either sends the other, and nobody is told
   * (a route rather than a firewall rule: this host may have neither iptables, nft nor tc's drop action).
   */
  cutBetween(i: number, j: number): void {
    run('ip', ['-n', this.links[i].ns, 'route', 'add', 'blackhole', `${this.links[j].address}/32`]);
    run('ip', ['-n', this.links[j].ns, 'route', 'add', 'blackhole', `${this.links[i].address}/32`]);
  }

  /** Takes cutBetween(i, j) off again; a no-op once the network is removed. */
  restoreBetween(i: number, j: number): void {
    if (this.removed) return;
    run('ip', ['-n', this.links[i].ns, 'route', 'del', 'blackhole', `${this.links[j].address}/32`]);
    run('ip', ['-n', this.links[j].ns, 'route', 'del', 'blackhole', `${this.links[i].address}/32`]);
  }

  /** The established TCP connections between workers i and j (as `ss` lists them in i's namespace; `kill`: `ss -K`). */
  connectionsBetween(i: number, j: number, kill = false): number {
    return run('ip', ['netns', 'exec', this.links[i].ns, 'ss', ...(kill ? ['-K'] : []), '-t', '-n', 'state', 'established', 'dst', this.links[j].address])
      .trim()
      .split('\n')
      .slice(1)
      .filter((line) => line.trim() !== '').length;
  }

  /**
   * Resets every TCP connection between workers i and j (`ss -K` in i's namespace: the kernel aborts i's
   * sockets, and j gets a reset). Returns how many were reset; throws when the kernel would not (ss -K needs
   * CONFIG_INET_DIAG_DESTROY, and lists the sockets without closing them where it is missing).
   */
  resetBetween(i: number, j: number): number {
    const reset = this.connectionsBetween(i, j, true);
    const left = this.connectionsBetween(i, j);
    if (left > 0 && left >= reset) throw new Error(`ss -K left ${left} connection(s) open: this kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY)`);
    return reset;
  }

  /** `command args` run inside worker i's namespace (`ip netns exec` execs it: the pid is the same throughout); CpuGroup.wrap's twin. */
  wrap(i: number, command: string, args: string[]): [string, string[]] {
    return ['ip', ['netns', 'exec', this.links[i].ns, command, ...args]];
  }

  /** Starts `command` inside worker i's namespace (wrap); remove() kills it. */
  spawnIn(i: number, command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
    const child = spawn(...this.wrap(i, command, args), options);
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  /** Kills what runs in the namespaces, then removes them, the veth pairs and the bridge; safe to repeat. */
  remove(): void {
    this.removed = true;
    for (const child of this.children) child.kill('SIGKILL');
    this.children.clear();
    for (const link of this.links) {
      // Deleting one end of a veth pair deletes both, even while a dying process still holds the namespace.
      tryRun('ip', ['link', 'del', link.hostEnd]);
      tryRun('ip', ['netns', 'del', link.ns]);
    }
    tryRun('ip', ['link', 'del', this.bridge]);
    forget(this);
  }
}
