/**
 * The chaos run (docs/chaos.md): a `--threads 0` coordinator and 3–4 `dtrain worker` processes, each worker
 * in a network namespace of its own where the host allows (scripts/netns.ts), under a seeded random
 * schedule of every fault at once: workers SIGKILLed and restarted, workers and the coordinator
 * SIGSTOPped and continued, links cut for less and for more than the step deadline, a rate-limited link,
 * a worker joining mid-epoch, the coordinator SIGKILLed and resumed with --resume, junk and flood
 * strangers, a proxy in front of worker 0 that damages frames, a worker that lies under --verify 1,
 * and, in the sharded-peers round (no --verify: the workers link to each other), the link between two
 * workers cut silently or reset.
 * One round per plan; each ends with the coordinator stopped (SIGTERM) after a calm stretch, and must end
 * on the paramsSha256 of a threads-only run of the same configuration and step count. Every process
 * reports what it holds (scripts/chaos_probe.ts): memory must stay flat after warm-up, and descriptors and
 * timers must not grow with reconnections.
 *
 *   npm run build && npm run chaos -- [--seed N] [--minutes M] [--plans replicated,sharded,server,auto,sharded-peers]
 *                                     [--workers 3] [--replay FILE] [--logs DIR] [--keep-logs] [--loopback]
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, type WriteStream } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { train } from '../src/index.js';
import { packageRoot } from '../src/paths.js';
import { scriptArgsOrExit } from './args.js';
import { TestNetwork } from './netns.js';
import { proxy, random, randomDamage, type Proxy } from './hostile_network.js';
import { heldCounts, PROBE_PREFIX, stamp, type ProbeSample } from './chaos_probe.js';

/**
 * The rounds' plans. `sharded-peers` is `--plan sharded` without `--verify`, so that the coordinator hands out
 * peer links and the steps go between the workers (under --verify every row takes the coordinator's path).
 */
export const PLANS = ['replicated', 'sharded', 'server', 'auto', 'sharded-peers'] as const;
export type Plan = (typeof PLANS)[number];
/** Whether a round's coordinator checks rows (--verify 1): every plan but sharded-peers. */
const verifies = (plan: Plan): boolean => plan !== 'sharded-peers';
/** The coordinator's --plan for a round's plan. */
const coordinatorPlan = (plan: Plan): string => (plan === 'sharded-peers' ? 'sharded' : plan);

const FAULT_KINDS = [
  'worker-kill',
  'worker-stop',
  'coordinator-stop',
  'cut-short',
  'cut-long',
  'rate-limit',
  'join',
  'coordinator-kill',
  'strangers',
  'corrupt',
  'liar',
  'peer-cut-short',
  'peer-cut-long',
  'peer-reset',
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];
/** Faults of the link between two workers (worker `worker` and the next one): only where they are linked. */
export const PEER_FAULTS: readonly FaultKind[] = ['peer-cut-short', 'peer-cut-long', 'peer-reset'];
/** Faults on a link: they need the workers in network namespaces. */
export const LINK_FAULTS: readonly FaultKind[] = ['cut-short', 'cut-long', 'rate-limit', ...PEER_FAULTS];
/**
 * The kinds a round of this plan injects: the liar only under --verify (without it nothing would catch its
 * rows), the peer faults only without it (under --verify the workers hold no links to each other).
 */
export function kindsFor(plan: Plan): FaultKind[] {
  return FAULT_KINDS.filter((kind) => (verifies(plan) ? !PEER_FAULTS.includes(kind) : kind !== 'liar'));
}
/** The other end of a peer fault's link: the next worker. */
const peerOf = (worker: number, workers: number): number => (worker + 1) % workers;

/** One fault: `at` ms after the round's first step, on worker `worker` (where it applies), lasting `ms`. */
export interface Fault {
  at: number;
  kind: FaultKind;
  worker: number;
  ms: number;
}
export interface Round {
  plan: Plan;
  /** From the first step to the SIGTERM that ends the round. */
  ms: number;
  faults: Fault[];
}
export interface Schedule {
  seed: number;
  workers: number;
  rounds: Round[];
}

/**
 * The run every round trains: small, so that steps are quick and many, and it never ends by itself (the
 * round stops it). The step deadline sits between the short and the long cuts; the heartbeat outlasts a
 * short cut, so that only a long one drops the worker.
 */
const SETTINGS = {
  trainSamples: 1920,
  testSamples: 200,
  hidden: [32, 16],
  epochs: 100_000,
  stepTimeoutMs: 2000,
  heartbeatMs: 2500,
  checkpointEvery: 10,
  verify: 1,
  logEvery: 1,
};
const TOKEN = 'chaos-run-token-of-16+-bytes';
/**
 * A round is quiet for its first WARM_MS (the baseline), for MID_CALM_MS in its middle, and for its last
 * CALM_MS (every fault is healed by then): what processes hold is compared at quiet moments, when no fault
 * is active nor healed less than QUIET_AFTER_MS ago.
 */
const WARM_MS = 12_000;
const MID_CALM_MS = 8000;
const CALM_MS = 10_000;
const QUIET_AFTER_MS = 4000;
/** Steps the run must make in its last calm (after QUIET_AFTER_MS): fewer is a stall. */
const MIN_CALM_STEPS = 20;
/** After a fault heals, how long its effects (a rejoin, a state transfer) are still counted as its own. */
const RECOVERY_MS = 2000;
/** How long a peer-reset waits for a connection between its two workers before it is skipped. */
const PEER_RESET_WAIT_MS = 5000;
const RATE_LIMIT_BITS = 4e6;
const CORRUPT_RATE = 1 / 8;
/** How often each process reports what it holds. */
const PROBE_MS = 1000;
/**
 * Memory may grow this much over a life: the median RSS of its last third against the highest of its first
 * half, ×RSS_BOUND but at least RSS_FLOOR more (a worker's RSS swings by ±15 MB from one second to the next).
 */
const RSS_BOUND = 1.1;
const RSS_FLOOR = 16 * 2 ** 20;

const cli = join(packageRoot, 'dist', 'src', 'cli.js');
const probe = join(packageRoot, 'dist', 'scripts', 'chaos_probe.js');
const peerScript = join(packageRoot, 'dist', 'scripts', 'chaos_peer.js');

/** How long a fault of this kind lasts (for a kill: how long until the restart), given the round's fault window. */
function duration(kind: FaultKind, window: number, between: (lo: number, hi: number) => number): number {
  const long = (lo: number, hi: number) => between(lo, Math.max(lo, Math.min(hi, window / 3)));
  switch (kind) {
    case 'worker-kill':
      return between(200, 3000);
    case 'worker-stop':
      return between(500, 5000);
    case 'coordinator-stop':
      return between(500, 4000);
    case 'cut-short':
    case 'peer-cut-short':
      // TCP's retransmission backoff (200, 400, 800 ms…) adds up to the cut again: 800 ms + 600 ms < the deadline.
      return between(300, 800);
    case 'cut-long':
    case 'peer-cut-long':
      return between(3000, 6000);
    case 'coordinator-kill':
      return between(200, 1500);
    case 'peer-reset':
      // A reset is at once; its window is the time its effects (a step redone, links made anew) count as its own.
      return between(500, 2000);
    case 'strangers':
      return between(2000, 6000);
    case 'rate-limit':
    case 'corrupt':
      return long(3000, 15_000);
    case 'liar':
      // Long enough to start, join and be caught.
      return long(5000, 15_000);
    case 'join':
      return long(4000, 20_000);
  }
}

/**
 * A seeded schedule: one round per plan, `minutes` in all. Each round's faults fall in two halves around a
 * quiet middle: every kind at least once (one every ~4 s on longer rounds), at random times, overlapping as
 * they fall; the coordinator is killed once a round, in the first half, so that the coordinator resumed
 * lives through the second half's reconnections between two quiet stretches.
 */
export function makeSchedule(seed: number, minutes: number, plans: readonly Plan[], workers: number): Schedule {
  const next = random(seed);
  const between = (lo: number, hi: number) => Math.round(lo + next() * (hi - lo));
  const roundMs = Math.round((minutes * 60_000) / plans.length);
  const quiet = WARM_MS + MID_CALM_MS + CALM_MS;
  if (roundMs < quiet + 10_000) throw new Error(`--minutes ${minutes}: each of the ${plans.length} rounds needs at least ${(quiet + 10_000) / 1000} s`);
  const half = (roundMs - quiet) / 2;
  const halves = [
    [WARM_MS, WARM_MS + half],
    [WARM_MS + half + MID_CALM_MS, roundMs - CALM_MS],
  ];
  const rounds = plans.map((plan) => {
    const others = kindsFor(plan).filter((k) => k !== 'coordinator-kill');
    const count = Math.max(others.length + 1, Math.round((2 * half) / 4000));
    const kinds: FaultKind[] = [...others].sort(() => next() - 0.5);
    while (kinds.length < count - 1) kinds.push(others[Math.floor(next() * others.length)]);
    const faults = ['coordinator-kill' as const, ...kinds].map((kind, i) => {
      const [from, to] = halves[i % 2];
      const ms = Math.min(duration(kind, half, between), to - from);
      return { at: between(from, to - ms), kind, worker: kind === 'corrupt' ? 0 : between(0, workers - 1), ms };
    });
    return { plan, ms: roundMs, faults: faults.sort((a, b) => a.at - b.at) };
  });
  return { seed, workers, rounds };
}

/**
 * Holds `key` for `ms` among overlapping holders counted in `counts`: `on` when the first begins, `off` when
 * the last ends (overlapping stops, cuts or damage of one thing heal once, when the last of them does).
 */
async function nested<K>(counts: Map<K, number>, key: K, ms: number, on: () => void, off: () => void): Promise<void> {
  const before = counts.get(key) ?? 0;
  counts.set(key, before + 1);
  if (before === 0) on();
  await sleep(ms);
  const left = counts.get(key)! - 1;
  counts.set(key, left);
  if (left === 0) off();
}

/** Faults on one worker (its process or its own link); the peer faults name a pair, the others no worker. */
const WORKER_FAULTS: readonly FaultKind[] = ['worker-kill', 'worker-stop', 'cut-short', 'cut-long', 'rate-limit', 'corrupt'];

/** What a fault hits, as the logs and the printed schedule name it: a worker, two linked workers, or '' (the coordinator, newcomers). */
function faultTarget(f: Fault, workers: number): string {
  if (PEER_FAULTS.includes(f.kind)) return `workers ${f.worker}⇆${peerOf(f.worker, workers)}`;
  return WORKER_FAULTS.includes(f.kind) ? `worker ${f.worker}` : '';
}

/** A TCP port free on `host` now (the coordinator is restarted on it after a SIGKILL). */
function freePortOn(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** A process of the run: its log, what its probe reported, and how it ended. */
class Proc {
  readonly samples: { t: number; sample: ProbeSample }[] = [];
  readonly started = performance.now();
  readonly exited: Promise<number | string | null>;
  done = false;
  /** Connections made (a worker's "connected" lines; a coordinator's joins). */
  reconnections = 0;
  private readonly log: WriteStream;
  private logOpen = true;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
    logFile: string,
    onLine: (line: string) => void = () => {},
  ) {
    this.log = createWriteStream(logFile, { flags: 'a' });
    const lines = (stream: NodeJS.ReadableStream | null) => {
      let rest = '';
      stream?.on('data', (data: Buffer) => {
        const parts = (rest + String(data)).split('\n');
        rest = parts.pop()!;
        for (const line of parts) {
          if (line.startsWith(PROBE_PREFIX)) {
            const sample = JSON.parse(line.slice(PROBE_PREFIX.length)) as ProbeSample;
            this.samples.push({ t: performance.now(), sample });
            const { timers, sockets } = heldCounts(sample);
            this.log.write(`${stamp()} [probe] rss ${(sample.rss / 2 ** 20).toFixed(1)} MB, heap ${(sample.heap / 2 ** 20).toFixed(1)} MB, fds ${sample.fds}, timers ${timers}, sockets ${sockets}\n`);
            continue;
          }
          this.log.write(`${stamp()} ${line}\n`);
          if (/connected to .* as worker|liar connected|^\+ .* joined/.test(line)) this.reconnections++;
          onLine(line);
        }
      });
    };
    lines(child.stdout);
    lines(child.stderr);
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        this.done = true;
        resolve(signal ?? code);
      }),
    );
    // Its output may still come after it exited: the log ends once its pipes are closed.
    child.once('close', (code, signal) => {
      this.logOpen = false;
      this.log.end(`${stamp()} [chaos] exited: ${signal ?? code}\n`);
    });
  }

  /** Sends a signal; false if the process is gone. */
  signal(signal: NodeJS.Signals): boolean {
    if (this.done || this.child.pid === undefined) return false;
    try {
      process.kill(this.child.pid, signal);
      return true;
    } catch {
      return false;
    }
  }

  /** SIGKILLs it (if still running) and waits until it is gone. */
  async kill(): Promise<void> {
    this.signal('SIGCONT');
    this.signal('SIGKILL');
    await this.exited;
  }

  /** Stops it with SIGTERM, and SIGKILL after `graceMs`. */
  async stop(graceMs: number): Promise<number | string | null> {
    this.signal('SIGCONT');
    this.signal('SIGTERM');
    const timer = setTimeout(() => this.signal('SIGKILL'), graceMs);
    const how = await this.exited;
    clearTimeout(timer);
    return how;
  }

  note(text: string): void {
    if (this.logOpen) this.log.write(`${stamp()} [chaos] ${text}\n`);
  }
}

/** What one fault cost, as measured from the coordinator's lines. */
export interface FaultOutcome extends Fault {
  skipped?: string;
  /** Workers dropped, rows redone elsewhere, steps replayed or lost (a coordinator killed) in its window. */
  dropped: number;
  rowsRedone: number;
  stepsRedone: number;
  lostMs: number;
}

/** How one process's life went: memory, descriptors and timers after warm-up. */
export interface LifeCheck {
  name: string;
  seconds: number;
  reconnections: number;
  line: string;
  failures: string[];
}

export interface RoundResult {
  plan: Plan;
  network: string;
  steps: number;
  paramsSha256?: string;
  reference?: string;
  stepMs: number;
  /** Workers rejected by --verify; peers rejected or dropped for anything else (damage, junk, deadlines). */
  liesCaught: number;
  refused: number;
  /** Without --verify (sharded-peers): the steps that went between peers, and the routes back through the coordinator. */
  peers?: { steps: number; throughCoordinator: number };
  faults: FaultOutcome[];
  lives: LifeCheck[];
  failures: string[];
  logDir: string;
}

/** The step count as the coordinator's lines tell it, over time, and what they say went wrong. */
class CoordinatorLog {
  step = 0;
  /** [time, step] at each change. */
  readonly progress: [number, number][] = [];
  readonly redone: number[] = [];
  readonly replayed: [number, number][] = [];
  readonly left: number[] = [];
  /** [time, steps lost] for each resume: the steps past its checkpoint that were computed again. */
  readonly resumed: [number, number][] = [];
  /** Rejections by --verify, and other rejections (damaged frames, deadlines). */
  liesCaught = 0;
  refused = 0;
  /** Called at the next step, once. */
  onStep?: () => void;
  private stepAtKill = 0;
  /**
   * Steps made between peers: after the coordinator's `⇆ … every member linked to every other` and before
   * anything that may change the route (a `⇆` through the coordinator, a join, a leave, a resume). A lower
   * bound: steps of a new admission that linked again without a line of their own are not counted.
   */
  stepsBetweenPeers = 0;
  /** The `⇆` lines that sent the steps through the coordinator (a link missing, or lost mid-step). */
  routesThroughCoordinator = 0;
  private betweenPeers = false;

  /** Whether the steps go between peers now (as far as the coordinator's lines tell). */
  get linked(): boolean {
    return this.betweenPeers;
  }

  line = (text: string): void => {
    const now = performance.now();
    if (text.startsWith('⇆ ')) {
      this.betweenPeers = /every member linked to every other/.test(text);
      if (!this.betweenPeers) this.routesThroughCoordinator++;
    } else if (/^[+-] |^resumed from /.test(text)) this.betweenPeers = false;
    if (text.startsWith('loss:')) {
      if (this.betweenPeers) this.stepsBetweenPeers++;
      this.progress.push([now, ++this.step]);
      const onStep = this.onStep;
      this.onStep = undefined;
      onStep?.();
    }
    const resumed = /^resumed from .* \(step (\d+)\)/.exec(text);
    if (resumed) {
      this.step = Number(resumed[1]);
      this.progress.push([now, this.step]);
      this.resumed.push([now, Math.max(0, this.stepAtKill - this.step)]);
    }
    if (text.startsWith('↻ rows')) this.redone.push(now);
    const replay = /replaying steps (\d+)–(\d+)/.exec(text);
    if (replay) this.replayed.push([now, Number(replay[2]) - Number(replay[1]) + 1]);
    if (/^- .* left: /.test(text) && !text.endsWith('coordinator finished')) this.left.push(now);
    if (/^! .* rejected: --verify: /.test(text)) this.liesCaught++;
    else if (/^! .* rejected: |^- .* left: worker reported: /.test(text)) this.refused++;
  };

  killed(): void {
    this.betweenPeers = false;
    this.stepAtKill = this.step;
  }

  stepAt(t: number): number {
    let step = 0;
    for (const [when, s] of this.progress) {
      if (when > t) break;
      step = s;
    }
    return step;
  }

  /** The median time between two steps that end at moments `counted` (quiet ones: what a step costs without faults). */
  medianStepMs(counted: (t: number) => boolean): number {
    const gaps = this.progress
      .slice(1)
      .map(([t], i) => (counted(t) ? t - this.progress[i][0] : 0))
      .filter((g) => g > 0)
      .sort((a, b) => a - b);
    return gaps.length ? gaps[Math.floor(gaps.length / 2)] : 0;
  }
}

/** Sums over a window [from, to) of times. */
const within = (times: number[], from: number, to: number) => times.filter((t) => t >= from && t < to).length;

/** A process's own warm-up: loading the engine, joining, the first steps. */
const PROCESS_WARM_MS = 8000;

/**
 * Checks a process's life after its warm-up (PROCESS_WARM_MS), between its first and last quiet moments
 * (`quiet`), 20 s apart at least (else it is too short to judge, and said so). Memory: the median RSS of
 * the last third stays within RSS_BOUND of the highest RSS of the first half (which is warm-up too: the
 * first rejoin, state transfer or redo grows a process once, and a worker on standby grows when it computes
 * again; a leak keeps growing it; the median, because a step's buffers come and go). Descriptors, timers and
 * sockets: the fewest at the quiet moments of the last third are at most `slack` above the fewest at those
 * of the first third (a leak of one per reconnection passes the slack after `slack` reconnections).
 */
export function checkLife(
  name: string,
  samples: { t: number; sample: ProbeSample }[],
  started: number,
  reconnections: number,
  slack: number,
  quiet: (t: number) => boolean,
): LifeCheck {
  const end = samples.length ? samples[samples.length - 1].t : started;
  const seconds = (end - started) / 1000;
  const warm = samples.filter((s) => s.t >= started + PROCESS_WARM_MS);
  const calm = warm.filter((s) => quiet(s.t));
  const span = calm.length ? calm[calm.length - 1].t - calm[0].t : 0;
  if (span < 20_000) return { name, seconds, reconnections, line: `${name}: ${seconds.toFixed(0)} s, not judged (no quiet moments 20 s apart)`, failures: [] };
  const early = calm.filter((s) => s.t <= calm[0].t + span / 3).map((s) => s.sample);
  const late = calm.filter((s) => s.t >= calm[calm.length - 1].t - span / 3).map((s) => s.sample);
  const failures: string[] = [];
  const middle = calm[0].t + span / 2;
  const rssBase = Math.max(...warm.filter((s) => s.t <= middle).map((s) => s.sample.rss));
  const lateRss = warm.filter((s) => s.t >= calm[calm.length - 1].t - span / 3).map((s) => s.sample.rss).sort((a, b) => a - b);
  const rssLate = lateRss[Math.floor(lateRss.length / 2)];
  const rssPeak = Math.max(...warm.map((s) => s.sample.rss));
  const mb = (b: number) => (b / 2 ** 20).toFixed(0);
  if (rssLate > Math.max(RSS_BOUND * rssBase, rssBase + RSS_FLOOR)) {
    failures.push(`${name}: RSS grew from ${mb(rssBase)} MB (highest of the first half) to ${mb(rssLate)} MB (median of the last third) (bound ×${RSS_BOUND}, at least +${mb(RSS_FLOOR)} MB)`);
  }
  const counts = (s: ProbeSample) => ({ fds: s.fds, ...heldCounts(s) });
  const parts = [`RSS ${mb(rssBase)}→${mb(rssLate)} MB (first half's highest → last third's median; peak ${mb(rssPeak)})`];
  for (const key of ['fds', 'timers', 'sockets'] as const) {
    const before = Math.min(...early.map((s) => counts(s)[key]));
    const after = Math.min(...late.map((s) => counts(s)[key]));
    parts.push(`${key} ${before}→${after}`);
    if (after - before > slack) failures.push(`${name}: ${key} grew from ${before} to ${after} over ${reconnections} connections (slack ${slack})`);
  }
  return { name, seconds, reconnections, line: `${name}: ${seconds.toFixed(0)} s, ${reconnections} connections, ${parts.join(', ')}`, failures };
}

export interface ChaosOptions {
  schedule: Schedule;
  /** Where every process's log goes (a folder per round); kept when a round fails, or with keepLogs. */
  logDir?: string;
  keepLogs?: boolean;
  /** Workers on loopback even where network namespaces can be made (the fallback, tried on purpose). */
  loopback?: boolean;
  /** Where progress lines go (console.log by default). */
  say?: (line: string) => void;
}

export interface ChaosResult {
  rounds: RoundResult[];
  failures: string[];
  logDir: string;
  table: string;
}

/** One round: the processes, the network, the faults as scheduled, then the checks. */
class ChaosRound {
  private readonly net?: TestNetwork;
  private readonly address: string;
  private port = 0;
  private coordinator?: Proc;
  private coordinatorDown = false;
  private readonly workers: (Proc | undefined)[] = [];
  private readonly lives: { proc: Proc; slack: number }[] = [];
  private proxy?: Proxy;
  /** Whether the proxy in front of worker 0 damages frames now (while a `corrupt` fault lasts). */
  private damaging = false;
  private readonly corruptions = new Map<number, number>();
  private readonly cuts = new Map<number, number>();
  private readonly shaped = new Map<number, number>();
  /** Peer cuts in force, by pair (the lower worker × 1000 + the higher). */
  private readonly peerCuts = new Map<number, number>();
  private readonly stops = new Map<Proc, number>();
  private readonly log = new CoordinatorLog();
  private readonly runDir: string;
  private readonly failures: string[] = [];
  private counter = 0;
  private t0 = 0;
  /** Each fault's [start, end] (end Infinity while it lasts): what is not quiet. */
  private readonly windows: [number, number][] = [];

  constructor(
    private readonly round: Round,
    private readonly workerCount: number,
    private readonly dir: string,
    private readonly say: (line: string) => void,
    loopback: boolean,
    /** The damage's own seed: the run's seed and the round's index, so that a replay damages the same frames. */
    private readonly damageSeed: number,
  ) {
    this.runDir = join(dir, 'run');
    if (!loopback) {
      // Namespaces: the workers 0..n-1, the joiner, the liar, the strangers.
      this.net = new TestNetwork(workerCount + 3);
      this.address = this.net.address;
    } else this.address = '127.0.0.1';
  }

  private get url(): string {
    return `ws://${this.address}:${this.port}`;
  }

  /** Namespace of a role (undefined on loopback). */
  private ns(role: 'joiner' | 'liar' | 'strangers' | number): number | undefined {
    if (!this.net) return undefined;
    return typeof role === 'number' ? role : this.workerCount + { joiner: 0, liar: 1, strangers: 2 }[role];
  }

  private spawn(name: string, ns: number | undefined, args: string[], onLine?: (line: string) => void, slack = 4): Proc {
    const options: SpawnOptions = { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DTRAIN_CHAOS_PROBE_MS: String(PROBE_MS), DTRAIN_TOKEN: TOKEN } };
    const argv = ['--import', pathToFileURL(probe).href, ...args];
    const child = this.net && ns !== undefined ? this.net.spawnIn(ns, process.execPath, argv, options) : spawn(process.execPath, argv, options);
    const proc = new Proc(`${name}#${++this.counter}`, child, join(this.dir, `${name}-${this.counter}.log`), onLine);
    this.lives.push({ proc, slack });
    return proc;
  }

  private startCoordinator(resume: boolean): void {
    // --plan is the session's, not the checkpoint's; --no-export too, as `dtrain coordinator` always gives it.
    const session = ['--listen', `${this.address}:${this.port}`, '--token', TOKEN, '--plan', coordinatorPlan(this.round.plan), '--no-export'];
    const verify = verifies(this.round.plan) ? ['--verify', String(SETTINGS.verify)] : [];
    const args = resume
      ? ['coordinator', '--resume', this.runDir, ...session]
      : ['coordinator', '--threads', '0', '--min-workers', String(this.workerCount), '--out', this.runDir, ...session,
          '--train-samples', String(SETTINGS.trainSamples), '--test-samples', String(SETTINGS.testSamples), '--hidden', SETTINGS.hidden.join(','),
          '--epochs', String(SETTINGS.epochs), '--step-timeout-ms', String(SETTINGS.stepTimeoutMs), '--heartbeat-ms', String(SETTINGS.heartbeatMs),
          '--checkpoint-every', String(SETTINGS.checkpointEvery), ...verify, '--log-every', String(SETTINGS.logEvery)];
    // The coordinator's slack: a worker still rejoining at a quiet moment, and a few timers of a step in flight.
    this.coordinator = this.spawn('coordinator', undefined, [cli, ...args], this.log.line, this.workerCount + 4);
    this.coordinatorDown = false;
  }

  private startWorker(i: number): void {
    // Worker 0 connects through the proxy, which damages frames while a `corrupt` fault lasts.
    const connect = i === 0 ? this.proxy!.url : this.url;
    this.workers[i] = this.spawn(`worker-${i}`, this.ns(i), [cli, 'worker', '--connect', connect, '--max-retries', '0']);
  }

  /** Ctrl-C or SIGTERM of the chaos run: its processes and network go with it. */
  private readonly onSignal = (signal: NodeJS.Signals) => {
    for (const { proc } of this.lives) proc.child.kill('SIGKILL');
    this.net?.remove();
    process.exit(signal === 'SIGINT' ? 130 : 143);
  };

  async run(): Promise<RoundResult> {
    const started = performance.now();
    process.on('SIGINT', this.onSignal);
    process.on('SIGTERM', this.onSignal);
    try {
      this.port = await freePortOn(this.address);
      const { policy } = randomDamage(CORRUPT_RATE, this.damageSeed, true);
      this.proxy = await proxy(this.url, (frame, toWorker) => (this.damaging ? policy(frame, toWorker) : frame), this.address);
      this.startCoordinator(false);
      for (let i = 0; i < this.workerCount; i++) this.startWorker(i);
      await this.firstStep();
      this.say(`  first step after ${((performance.now() - started) / 1000).toFixed(1)} s; faults for ${(this.round.ms / 1000).toFixed(0)} s`);
      const faults = await Promise.all(this.round.faults.map((f) => sleep(f.at).then(() => this.apply(f))));
      const left = this.t0 + this.round.ms - performance.now();
      if (left > 0) await sleep(left);
      return await this.finish(faults);
    } finally {
      process.off('SIGINT', this.onSignal);
      process.off('SIGTERM', this.onSignal);
      await Promise.all(this.lives.map(({ proc }) => proc.kill()));
      this.proxy?.close();
      this.net?.remove();
    }
  }

  private firstStep(): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no step within 120 s of the start')), 120_000);
      this.log.onStep = () => {
        clearTimeout(timer);
        this.t0 = performance.now();
        resolve();
      };
      void this.coordinator!.exited.then((how) => reject(new Error(`the coordinator exited (${how}) before its first step`)));
    });
  }

  /** Stops `proc` for `ms` (nested stops of one process: it continues when the last ends). */
  private async pause(proc: Proc | undefined, ms: number): Promise<string | undefined> {
    if (!proc || !proc.signal('SIGSTOP')) return 'not running';
    await nested(this.stops, proc, ms, () => {}, () => proc.signal('SIGCONT'));
    return undefined;
  }

  /** Applies a link fault for `ms`: `on` once the first of overlapping ones begins, `off` when the last ends. */
  private async linkFault(counts: Map<number, number>, i: number, ms: number, on: () => void, off: () => void): Promise<string | undefined> {
    if (!this.net) return 'needs network namespaces';
    await nested(counts, i, ms, on, off);
    return undefined;
  }

  /** Runs one fault to its end (its heal included); returns why it was skipped, if it was. */
  private async inject(f: Fault): Promise<string | undefined> {
    const net = this.net!;
    switch (f.kind) {
      case 'worker-kill': {
        const worker = this.workers[f.worker];
        if (!worker || worker.done) return 'not running';
        this.workers[f.worker] = undefined;
        await worker.kill();
        await sleep(f.ms);
        this.startWorker(f.worker);
        return undefined;
      }
      case 'worker-stop':
        return this.pause(this.workers[f.worker], f.ms);
      case 'coordinator-stop':
        return this.coordinatorDown ? 'not running' : this.pause(this.coordinator, f.ms);
      case 'cut-short':
      case 'cut-long':
        return this.linkFault(this.cuts, f.worker, f.ms, () => net.cut(f.worker), () => net.restore(f.worker));
      case 'peer-cut-short':
      case 'peer-cut-long': {
        if (this.workerCount < 2) return 'needs two workers';
        const [i, j] = [f.worker, peerOf(f.worker, this.workerCount)].sort((a, b) => a - b);
        return this.linkFault(this.peerCuts, i * 1000 + j, f.ms, () => net.cutBetween(i, j), () => net.restoreBetween(i, j));
      }
      case 'peer-reset': {
        if (this.workerCount < 2) return 'needs two workers';
        if (!this.net) return 'needs network namespaces';
        const other = peerOf(f.worker, this.workerCount);
        // The link may be down or unused for now (a worker rejoining, a new admission linking): wait a while
        // for steps to go between peers again, so that the reset tears a link in use.
        for (let waited = 0; waited < PEER_RESET_WAIT_MS && !(this.log.linked && net.connectionsBetween(f.worker, other) > 0); waited += 100) await sleep(100);
        const reset = net.resetBetween(f.worker, other);
        this.coordinator?.note(`peer-reset: ${reset} connection(s) between workers ${f.worker} and ${other} reset`);
        await sleep(f.ms);
        return reset === 0 ? 'no connection between them' : undefined;
      }
      case 'rate-limit':
        return this.linkFault(this.shaped, f.worker, f.ms, () => net.shape(f.worker, RATE_LIMIT_BITS), () => net.unshape(f.worker));
      case 'join': {
        const joiner = this.spawn('joiner', this.ns('joiner'), [cli, 'worker', '--connect', this.url, '--max-retries', '0']);
        await sleep(f.ms);
        // Half of them leave politely, half die.
        if (f.ms % 2 === 0) await joiner.stop(5000);
        else await joiner.kill();
        return undefined;
      }
      case 'coordinator-kill': {
        if (this.coordinatorDown) return 'not running';
        this.coordinatorDown = true;
        this.log.killed();
        await this.coordinator!.kill();
        await sleep(f.ms);
        this.startCoordinator(true);
        // Its window lasts until the resumed coordinator takes a step again (or a minute).
        await Promise.race([new Promise<void>((resolve) => (this.log.onStep = resolve)), sleep(60_000)]);
        return undefined;
      }
      case 'strangers': {
        // On loopback they come from another address, so that admission control tells them from the workers.
        const from = this.net ? [] : ['--local-address', '127.0.0.2'];
        const strangers = this.spawn('strangers', this.ns('strangers'), [peerScript, 'strangers', '--connect', this.url, '--for-ms', String(f.ms), '--flood', '200', ...from]);
        await Promise.race([strangers.exited, sleep(f.ms + 10_000)]);
        await strangers.kill();
        return undefined;
      }
      case 'corrupt':
        await nested(this.corruptions, f.worker, f.ms, () => (this.damaging = true), () => (this.damaging = false));
        return undefined;
      case 'liar': {
        const liar = this.spawn('liar', this.ns('liar'), [peerScript, 'liar', '--connect', this.url]);
        await sleep(f.ms);
        await liar.kill();
        return undefined;
      }
    }
  }

  private async apply(f: Fault): Promise<{ fault: Fault; skipped?: string; from: number; to: number }> {
    const from = performance.now();
    const window: [number, number] = [from, Infinity];
    this.windows.push(window);
    const target = faultTarget(f, this.workerCount);
    const describe = `${f.kind}${target ? ` ${target}` : ''} for ${f.ms} ms`;
    this.coordinator?.note(`fault: ${describe}`);
    let skipped: string | undefined;
    try {
      skipped = await this.inject(f);
    } catch (e) {
      this.failures.push(`${describe}: could not be injected: ${(e as Error).message}`);
      skipped = 'failed';
    }
    window[1] = performance.now();
    return { fault: f, skipped, from, to: window[1] };
  }

  private async finish(applied: { fault: Fault; skipped?: string; from: number; to: number }[]): Promise<RoundResult> {
    // Everything is healed (each fault awaited its end) and the round was calm for its last CALM_MS: every
    // worker should be running.
    for (let i = 0; i < this.workerCount; i++) if (!this.workers[i] || this.workers[i]!.done) this.startWorker(i);
    const coordinator = this.coordinator!;
    const how = await coordinator.stop(60_000);
    if (how !== 0) this.failures.push(`the coordinator stopped with ${how} instead of 0 after SIGTERM (see ${coordinator.name}'s log)`);
    const summaryFile = join(this.runDir, 'summary.json');
    const summary = existsSync(summaryFile) ? (JSON.parse(readFileSync(summaryFile, 'utf8')) as { paramsSha256: string; steps: number }) : undefined;
    await Promise.all(this.workers.map((w) => w?.stop(5000)));
    const quiet = (t: number) => this.windows.every(([from, to]) => t < from || t > to + QUIET_AFTER_MS);
    const stepMs = this.log.medianStepMs(quiet);
    this.checkProgress();
    const faults = applied.map(({ fault, skipped, from, to }) => this.outcome(fault, skipped, from, to, stepMs));
    const lives = this.lives.map(({ proc, slack }) => checkLife(proc.name, proc.samples, proc.started, proc.reconnections, slack, quiet));
    for (const life of lives) this.failures.push(...life.failures);
    const result: RoundResult = {
      plan: this.round.plan,
      network: this.net ? 'network namespaces' : 'loopback',
      steps: summary?.steps ?? 0,
      paramsSha256: summary?.paramsSha256,
      stepMs,
      liesCaught: this.log.liesCaught,
      refused: this.log.refused,
      ...(verifies(this.round.plan) ? {} : { peers: { steps: this.log.stepsBetweenPeers, throughCoordinator: this.log.routesThroughCoordinator } }),
      faults,
      lives,
      failures: this.failures,
      logDir: this.dir,
    };
    if (!summary) this.failures.push(`no summary.json in ${this.runDir}`);
    else result.reference = await this.compareWithReference(summary);
    return result;
  }

  /** Healed, the run must go on (a hang, a step waiting for ever on a peer, ends on the right hash too); without --verify it must have used the peer links. */
  private checkProgress(): void {
    const calmFrom = this.t0 + this.round.ms - CALM_MS + QUIET_AFTER_MS;
    const calmSteps = this.log.stepAt(this.t0 + this.round.ms) - this.log.stepAt(calmFrom);
    if (!verifies(this.round.plan) && this.log.stepsBetweenPeers < MIN_CALM_STEPS) {
      this.failures.push(`only ${this.log.stepsBetweenPeers} steps went between peers (at least ${MIN_CALM_STEPS} expected): the peer links were not exercised`);
    }
    if (calmSteps < MIN_CALM_STEPS) this.failures.push(`only ${calmSteps} steps in the ${(CALM_MS - QUIET_AFTER_MS) / 1000} s of calm before the end (at least ${MIN_CALM_STEPS} expected): the run stalled`);
  }

  /** The same configuration on one local thread, for as many steps: its paramsSha256, which the round's must equal. */
  private async compareWithReference(summary: { paramsSha256: string; steps: number }): Promise<string> {
    const reference = await train({ ...SETTINGS, verify: 0, threads: 1, steps: summary.steps, export: false, out: join(this.dir, 'reference') });
    if (reference.paramsSha256 !== summary.paramsSha256) {
      this.failures.push(`step ${summary.steps}: paramsSha256 ${summary.paramsSha256} differs from the threads-only ${reference.paramsSha256}`);
    }
    return reference.paramsSha256;
  }

  /** What a fault cost: what the coordinator reported in its window (and RECOVERY_MS after), and the time lost. */
  private outcome(fault: Fault, skipped: string | undefined, from: number, to: number, stepMs: number): FaultOutcome {
    const end = to + RECOVERY_MS;
    const log = this.log;
    const replayed = log.replayed.filter(([t]) => t >= from && t < end).reduce((n, [, steps]) => n + steps, 0);
    const lost = log.resumed.filter(([t]) => t >= from && t < end).reduce((n, [, steps]) => n + steps, 0);
    const progress = log.stepAt(end) - log.stepAt(from);
    return {
      ...fault,
      skipped,
      dropped: within(log.left, from, end),
      rowsRedone: within(log.redone, from, end),
      stepsRedone: replayed + lost,
      lostMs: skipped ? 0 : Math.max(0, end - from - Math.max(0, progress) * stepMs),
    };
  }
}

/** The report: per kind of fault, how many, and what they cost. */
function faultTable(rounds: RoundResult[]): string {
  const rows = FAULT_KINDS.map((kind) => {
    const all = rounds.flatMap((r) => r.faults.filter((f) => f.kind === kind));
    const done = all.filter((f) => !f.skipped);
    const sum = (key: 'dropped' | 'rowsRedone' | 'stepsRedone' | 'lostMs') => done.reduce((n, f) => n + f[key], 0);
    return [kind, String(done.length), String(all.length - done.length), String(sum('dropped')), String(sum('rowsRedone')), String(sum('stepsRedone')), (sum('lostMs') / 1000).toFixed(1)];
  });
  const header = ['fault', 'injected', 'skipped', 'workers dropped', 'row sets redone', 'steps redone', 'time lost (s)'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  return [line(header), `|${widths.map((w, i) => (i === 0 ? ':' : '') + '-'.repeat(w + 1) + (i === 0 ? '' : ':')).join('|')}|`, ...rows.map(line)].join('\n');
}

/** One line per fault, for the printed schedule. */
function describeSchedule(schedule: Schedule): string {
  return schedule.rounds
    .map((r, i) => {
      const head = verifies(r.plan)
        ? `round ${i + 1}: --plan ${r.plan} --verify 1, ${(r.ms / 1000).toFixed(0)} s (no peer faults: under --verify workers hold no links to each other)`
        : `round ${i + 1}: --plan ${coordinatorPlan(r.plan)} without --verify (peer links), ${(r.ms / 1000).toFixed(0)} s (no liar: nothing would check its rows)`;
      return [head, ...r.faults.map((f) => `  +${(f.at / 1000).toFixed(1).padStart(6)} s  ${f.kind.padEnd(16)} ${faultTarget(f, schedule.workers).padEnd(14)}  ${f.ms} ms`)].join('\n');
    })
    .join('\n');
}

/** Runs every round of a schedule; the logs of a failed round are kept (and all of them with keepLogs). */
export async function runChaos({ schedule, logDir, keepLogs = false, loopback = false, say = console.log }: ChaosOptions): Promise<ChaosResult> {
  const dir = logDir ?? mkdtempSync(join(tmpdir(), `dtrain-chaos-${schedule.seed}-`));
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'schedule.json'), `${JSON.stringify(schedule, null, 1)}\n`);
  const unavailable = loopback ? 'asked for (--loopback)' : TestNetwork.unavailable();
  if (unavailable) say(`! chaos: workers on loopback, so ${LINK_FAULTS.join(', ')} are skipped: ${unavailable}`);
  say(`chaos: seed ${schedule.seed}, ${schedule.workers} workers, ${schedule.rounds.length} round(s); logs in ${dir}`);
  say(describeSchedule(schedule));
  say(`replay: npm run chaos -- --replay ${join(dir, 'schedule.json')}`);
  const rounds: RoundResult[] = [];
  for (const [i, round] of schedule.rounds.entries()) {
    const roundDir = join(dir, `round-${i + 1}-${round.plan}`);
    mkdirSync(roundDir, { recursive: true });
    say(`round ${i + 1}/${schedule.rounds.length}: --plan ${round.plan}`);
    let result: RoundResult;
    try {
      result = await new ChaosRound(round, schedule.workers, roundDir, say, !!unavailable, schedule.seed * 1000 + i).run();
    } catch (e) {
      result = { plan: round.plan, network: unavailable ? 'loopback' : 'network namespaces', steps: 0, stepMs: 0, liesCaught: 0, refused: 0, faults: [], lives: [], failures: [`round ${i + 1}: ${(e as Error).message}`], logDir: roundDir };
    }
    rounds.push(result);
    const checked = verifies(round.plan) ? `${result.liesCaught} lies caught by --verify` : 'no --verify (peer links)';
    say(`  ${result.steps} steps (median ${result.stepMs.toFixed(1)} ms at quiet moments); ${checked}, ${result.refused} other rejections`);
    if (result.peers) say(`  ${result.peers.steps} steps between peers (counted after the coordinator's "⇆ every member linked" lines); the route went back through the coordinator ${result.peers.throughCoordinator} time(s)`);
    say(`  paramsSha256 ${result.paramsSha256 ?? '-'}, threads-only ${result.reference ?? '-'}`);
    for (const life of result.lives) say(`  ${life.line}`);
    for (const failure of result.failures) say(`  FAILED: ${failure}`);
    if (result.failures.length > 0) say(`  logs kept: ${roundDir}`);
    else if (!keepLogs) rmSync(roundDir, { recursive: true, force: true });
  }
  const failures = rounds.flatMap((r, i) => r.failures.map((f) => `round ${i + 1} (${r.plan}): ${f}`));
  const table = faultTable(rounds);
  say(table);
  say('(time lost: a fault\'s window and 2 s after it, less the steps made in it at the median step time of quiet moments; overlapping faults each count the overlap)');
  if (failures.length === 0 && !keepLogs) rmSync(dir, { recursive: true, force: true });
  say(failures.length === 0 ? `chaos: every round ended on the threads-only hash, memory, descriptors and timers flat (seed ${schedule.seed})` : `chaos: ${failures.length} failure(s); replay: npm run chaos -- --replay ${join(dir, 'schedule.json')}`);
  return { rounds, failures, logDir: dir, table };
}

/** A schedule.json that a chaos run wrote. */
function readSchedule(file: string): Schedule {
  let schedule: Schedule;
  try {
    schedule = JSON.parse(readFileSync(file, 'utf8')) as Schedule;
  } catch (e) {
    throw new Error(`--replay ${file}: ${(e as Error).message}`);
  }
  const ok = Number.isInteger(schedule?.seed) && Number.isInteger(schedule.workers) && Array.isArray(schedule.rounds) &&
    schedule.rounds.every((r) => PLANS.includes(r.plan) && r.ms > 0 && Array.isArray(r.faults) && r.faults.every((f) => FAULT_KINDS.includes(f.kind)));
  if (!ok) throw new Error(`--replay ${file}: not a schedule a chaos run wrote (expected seed, workers and rounds of a plan, ms and faults)`);
  return schedule;
}

async function main(): Promise<void> {
  const args = scriptArgsOrExit('chaos', {
    seed: 'value', minutes: 'value', plans: 'value', workers: 'value', replay: 'value', logs: 'value', 'keep-logs': 'switch', loopback: 'switch',
  });
  const replay = args.has('replay') ? args.value('replay', '') : undefined;
  let schedule: Schedule;
  if (replay !== undefined) {
    schedule = readSchedule(replay);
    console.log(`chaos: replaying ${replay} (--seed, --minutes, --plans and --workers are the file's)`);
  } else {
    const plans = args.value('plans', PLANS.join(',')).split(',');
    const bad = plans.find((p) => !(PLANS as readonly string[]).includes(p));
    if (bad) throw new Error(`--plans: "${bad}" is not a plan (expected some of ${PLANS.join(', ')})`);
    const [minutesGiven, seedGiven, workersGiven] = [args.value('minutes', '4'), args.value('seed', String(Date.now() % 100_000)), args.value('workers', '3')];
    const minutes = Number(minutesGiven);
    if (!(minutes > 0)) throw new Error(`--minutes: expected a positive number, got ${minutesGiven}`);
    const seed = Number(seedGiven);
    if (!Number.isInteger(seed)) throw new Error(`--seed: expected an integer, got ${seedGiven}`);
    const workers = Number(workersGiven);
    if (!(workers >= 1 && workers <= 8)) throw new Error(`--workers: expected 1 to 8, got ${workersGiven}`);
    schedule = makeSchedule(seed, minutes, plans as Plan[], workers);
  }
  const logDir = args.has('logs') ? args.value('logs', '') : undefined;
  const { failures } = await runChaos({ schedule, logDir, keepLogs: args.has('keep-logs'), loopback: args.has('loopback') });
  process.exit(failures.length === 0 ? 0 : 1);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: Error) => {
    console.error(`chaos: ${e.message}`);
    process.exit(2);
  });
}
