/**
 * Emulated machines for the scaling tool: dtrain's coordinator and remote workers, or PyTorch DDP's ranks,
 * each a process of its own in a CPU group of its own (scripts/emulation.ts), and with a link rate each
 * dtrain process in a network namespace of its own behind its shaped veth (scripts/netns.ts) — the
 * coordinator too, on a namespace of the same bridge. DDP's ranks rendezvous on 127.0.0.1 (torch_ddp.py):
 * they cannot be split over namespaces, so under a link they share one namespace whose loopback carries
 * world × RATE. Fidelity is sampled while each run goes (scripts/fidelity.ts).
 *
 * Layouts of a dtrain run of N machines:
 *   apart: the coordinator on a machine of its own (--coordinator-cpus), computing nothing (--threads 0),
 *          and N machines of remote workers: N × C + the coordinator's cores.
 *   rank0: as `dtrain run` places rank 0: machine 0 coordinates and computes (--threads 1), N − 1 remote
 *          workers: N × C, no extra core (DDP's count).
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import type { RunSummary } from '../src/index.js';
import { readMetrics, type MetricsRecord, type StepRecord } from '../src/report/metrics.js';
import { CpuGroup, groupName } from './emulation.js';
import { FidelitySampler, type Fidelity } from './fidelity.js';
import { TestNetwork } from './netns.js';
import { parseRate } from './rates.js';
import { projectRoot, torchDdpRun, type DdpRun } from './reference.js';

export type Layout = 'apart' | 'rank0';
export const LAYOUTS: readonly Layout[] = ['apart', 'rank0'];

export interface MachineSettings {
  /** Cores of each emulated machine; null: unconstrained (calibration's reference). */
  cpus: number | null;
  /** Cores of the coordinator's own machine (layout apart). */
  coordinatorCpus: number;
  periodUs: number;
  /** Each dtrain process's link, as tc writes a rate; null: loopback. */
  link: string | null;
}

/** Beyond loopback the coordinator requires a token; the workers read it from DTRAIN_TOKEN. */
export const TOKEN = 'dtrain-scaling-link-token';
/** The built CLI the emulated machines run. */
export const cli = join(projectRoot, 'dist/src/cli.js');

/** A child's end: resolves on exit 0, rejects with the last line of its stderr otherwise. */
function ended(child: ChildProcess, name: string): Promise<void> {
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr = (stderr + String(d)).slice(-4000)));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) =>
      code === 0 ? resolve() : reject(new Error(`${name} ended with ${signal ?? `code ${code}`}: ${stderr.trim().split('\n').pop() ?? ''}`)),
    );
  });
}

/**
 * How many step records a growing metrics.jsonl holds, each call reading only the bytes appended since the
 * last (the sampler asks every few tens of ms: re-reading the whole file would load the host it measures).
 */
function stepCounter(file: string): () => number {
  const decoder = new StringDecoder('utf8');
  let offset = 0;
  let steps = 0;
  let partial = '';
  return () => {
    let fd: number;
    try {
      fd = openSync(file, 'r');
    } catch {
      return steps; // not written yet
    }
    try {
      const size = fstatSync(fd).size;
      if (size > offset) {
        const bytes = Buffer.alloc(size - offset);
        offset += readSync(fd, bytes, 0, bytes.length, offset);
        const lines = (partial + decoder.write(bytes)).split('\n');
        partial = lines.pop()!;
        steps += lines.filter((line) => line.includes('"type":"step"')).length;
      }
    } finally {
      closeSync(fd);
    }
    return steps;
  };
}

/**
 * Where a machine's process starts: in its group, then in its namespace. In that order: `ip netns exec`
 * mounts a /sys of the namespace's own, without the cgroup hierarchies, so the process joins its group
 * first (the sh of CpuGroup.wrap), then execs into the namespace, its pid the same throughout.
 */
export function starter(net: TestNetwork | undefined) {
  const children: ChildProcess[] = [];
  return {
    children,
    start(group: CpuGroup | undefined, ns: number | undefined, command: string, args: string[], options: SpawnOptions): ChildProcess {
      const [inNs, nsArgs] = net && ns !== undefined ? net.wrap(ns, command, args) : [command, args];
      const [c, a] = group ? group.wrap(inNs, nsArgs) : [inNs, nsArgs];
      const child = spawn(c, a, options);
      children.push(child);
      return child;
    },
  };
}

export interface MachinesRun {
  summary: RunSummary;
  /** Every record of the run's metrics.jsonl, and its steps among them. */
  metrics: MetricsRecord[];
  steps: StepRecord[];
  /** Over the timed steps (those after `warmup`); undefined for an unconstrained run. */
  fidelity: Fidelity | undefined;
}

/** What one dtrain run is: the coordinator's flags but for --listen, --min-workers and --out (its --steps are `steps`), the workers' but for --connect. */
export interface DtrainRun {
  coordinatorArgs: string[];
  workerArgs: string[];
  /** The run's folder (--out). */
  out: string;
  steps: number;
  /** Steps left out of the fidelity's window at the start. */
  warmup: number;
}

/** One dtrain run on `machines` emulated machines in `layout`. */
export async function runDtrainMachines(machines: number, layout: Layout, s: MachineSettings, { coordinatorArgs, workerArgs, out, steps, warmup }: DtrainRun): Promise<MachinesRun> {
  const workers = layout === 'apart' ? machines : machines - 1;
  const groups: CpuGroup[] = [];
  let net: TestNetwork | undefined;
  let children: ChildProcess[] = [];
  let sampler: FidelitySampler | undefined;
  try {
    if (s.cpus !== null) {
      groups.push(new CpuGroup(layout === 'apart' ? 'coordinator' : 'machine 0 (coordinator)', layout === 'apart' ? s.coordinatorCpus : s.cpus, s.periodUs));
      for (let i = 0; i < workers; i++) groups.push(new CpuGroup(`machine ${layout === 'apart' ? i : i + 1}`, s.cpus, s.periodUs));
    }
    // The coordinator's namespace is the last of the bridge's: workers 0…workers−1 come first.
    if (s.link && workers > 0) {
      net = new TestNetwork(workers + 1);
      for (let i = 0; i <= workers; i++) net.shape(i, parseRate(s.link));
    }
    const run = starter(net);
    children = run.children;
    // Fidelity is of the groups: an unconstrained run (no groups) samples nothing.
    if (groups.length) {
      const stepsLogged = stepCounter(join(out, 'metrics.jsonl'));
      sampler = new FidelitySampler(groups, () => stepsLogged() >= steps);
    }
    const env = { ...process.env, ...(net ? { DTRAIN_TOKEN: TOKEN } : {}) };
    const listen = workers === 0 ? [] : ['--listen', `${net ? net.links[workers].address : '127.0.0.1'}:0`, '--min-workers', String(workers), '--join-timeout-ms', '60000'];
    sampler?.start();
    const coordinator = run.start(
      groups[0],
      net ? workers : undefined,
      process.execPath,
      [cli, 'coordinator', ...coordinatorArgs, '--steps', String(steps), ...listen, '--out', out],
      { stdio: ['ignore', 'pipe', 'pipe'], env },
    );
    const done = ended(coordinator, 'the coordinator');
    // Awaited below; until then a failure must not count as unhandled (a worker may fail to start first).
    done.catch(() => {});
    if (workers > 0) {
      const url = await new Promise<string>((resolve, reject) => {
        let text = '';
        coordinator.stdout!.on('data', (d: Buffer) => {
          const m = /listening for remote workers on (\S+)/.exec((text += String(d)));
          if (m) resolve(m[1]);
        });
        done.then(() => reject(new Error('the coordinator ended before it listened')), reject);
      });
      for (let i = 0; i < workers; i++) {
        run.start(groups[i + 1], net ? i : undefined, process.execPath, [cli, 'worker', '--connect', url, '--max-retries', '2', ...workerArgs], { stdio: 'ignore', env });
      }
    } else {
      coordinator.stdout!.resume();
    }
    await done;
    sampler?.stop();
    const metrics = readMetrics(out);
    const records = metrics.flatMap((r) => (r.type === 'step' ? [r] : []));
    const timed = records.slice(warmup);
    const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8')) as RunSummary;
    const windowMs = timed.reduce((a, r) => a + r.ms, 0);
    return { summary, metrics, steps: records, fidelity: sampler?.fidelity(windowMs, timed.length) };
  } finally {
    sampler?.stop();
    for (const child of children) child.kill('SIGKILL');
    net?.remove();
    groups.forEach((g) => g.remove());
  }
}

/**
 * PyTorch DDP over gloo, each rank in a group of `s.cpus` cores (DTRAIN_DDP_CGROUP, read by torch_ddp.py);
 * under a link, all ranks in one namespace whose loopback carries world × RATE. The window of the fidelity
 * ends at the last sample in which every rank was in its group, and lasts the timed steps (rank 0's clock).
 */
export async function runDdpMachines(run: DdpRun, s: MachineSettings): Promise<{ msPerStep: number; fidelity: Fidelity | undefined }> {
  const groups: CpuGroup[] = [];
  let net: TestNetwork | undefined;
  let sampler: FidelitySampler | undefined;
  try {
    let env: Record<string, string> = {};
    if (s.cpus !== null) {
      // One pattern for every rank (torch_ddp.py fills in {rank}): the folders differ only in the rank.
      const base = groupName('ddp');
      for (let r = 0; r < run.world; r++) groups.push(new CpuGroup(`rank ${r}`, s.cpus, s.periodUs, `${base}-rank${r}`));
      env = { DTRAIN_DDP_CGROUP: groups[0].cpuDir.replace(/rank0$/, 'rank{rank}') };
    }
    if (s.link) {
      net = new TestNetwork(1);
      net.shapeLoopback(0, run.world * parseRate(s.link));
    }
    // The ranks leave the final barrier together and then exit: the last sample in which every rank was
    // still in its group is the nearest to the end of training (the last to exit may take long to tear down).
    let allThere = 0;
    sampler = new FidelitySampler(groups, () => {
      if (groups.every((g) => g.tasks().length > 0)) allThere = Date.now();
      return false;
    });
    sampler.start();
    const result = await torchDdpRun({ ...run, namespace: net?.links[0].ns, env });
    sampler.stop();
    sampler.endedAt = allThere || undefined;
    return { msPerStep: result.msPerStep, fidelity: groups.length ? sampler.fidelity(result.msPerStep * result.timedSteps, result.timedSteps) : undefined };
  } finally {
    sampler?.stop();
    net?.remove();
    groups.forEach((g) => g.remove());
  }
}
