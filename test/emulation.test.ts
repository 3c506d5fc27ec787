import { describe, expect, it } from 'vitest';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { scriptArgs } from '../scripts/args.js';
import { CpuGroup, findHierarchy } from '../scripts/emulation.js';
import { hostCpu, quotaLoad } from '../scripts/fidelity.js';
import { runScaling } from '../scripts/scaling.js';
import { TestNetwork } from '../scripts/netns.js';

const unavailable = CpuGroup.unavailable();
if (unavailable) console.warn(`test/emulation.test.ts: the cgroup tests are skipped: ${unavailable}`);
const skipped = unavailable ? ` (skipped: ${unavailable})` : '';
const out = () => mkdtempSync(join(tmpdir(), 'dtrain-emulation-'));

/** The folders of this process's groups still in the hierarchies (there should be none once a test is over). */
function leftGroups(): string[] {
  const h = findHierarchy();
  if (typeof h === 'string') return [];
  const roots = h.version === 2 ? [h.root] : [h.cpu, h.cpuacct];
  return roots.flatMap((r) => readdirSync(r).filter((d) => d.startsWith(`dtrain-emu-${process.pid}-`)));
}

describe('script flags', () => {
  const flags = { steps: 'value', weak: 'switch' } as const;

  it('reads declared flags, and a flag not given falls back', () => {
    const args = scriptArgs(flags, ['--steps', '30', '--weak']);
    expect(args.value('steps', '300')).toBe('30');
    expect(args.has('weak')).toBe(true);
    expect(scriptArgs(flags, []).value('steps', '300')).toBe('300');
  });

  it('a misspelt flag, a missing value or a stray word is an error naming what there is', () => {
    expect(() => scriptArgs(flags, ['--step', '30'])).toThrow("Unknown option '--step'; expected one of --steps VALUE, --weak");
    expect(() => scriptArgs(flags, ['--steps'])).toThrow(/argument missing; expected one of/);
    expect(() => scriptArgs(flags, ['30'])).toThrow(/Unexpected argument '30'; expected one of/);
  });

  it.each([
    ['scaling', ['--cpu', '0.25'], "scaling: Unknown option '--cpu'; expected one of"],
    ['plans', ['--gflop', '5'], "plans: Unknown option '--gflop'; expected one of"],
    ['bench', ['--round', '1'], "bench: Unknown option '--round'; expected one of"],
  ])('npm run %s with a misspelt flag: one line, exit 2, nothing run', (script, argv, said) => {
    const r = spawnSync(process.execPath, [join('dist/scripts', `${script}.js`), ...argv], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain(said);
  });
});

describe('emulated machines: settings refused before anything runs', () => {
  it.each([
    [{ coordinatorCpus: 0.2 }, '--coordinator-cpus needs --cpus'],
    [{ cpus: -1 }, '--cpus -1: expected a positive number of cores'],
    [{ cpus: 0.05 }, "--cpus 0.05 of a 10000 µs period is a quota under the kernel's 1 ms"],
    [{ cpus: 0.25, periodUs: 500 }, '--period-us 500: expected an integer from 1000 to 1000000'],
    [{ cpus: 0.25, layouts: ['apart', 'everywhere'] }, '--layout apart,everywhere: expected a comma-separated list of apart | rank0, got everywhere'],
  ] as const)('%o', async (options, message) => {
    await expect(runScaling({ ...options, out: out() } as never)).rejects.toThrow(message);
  });

  it('quotas over 60 % of the host\'s cores: refused, naming the run and the sum', async () => {
    const cores = availableParallelism();
    await expect(runScaling({ cpus: cores, remote: [4], out: out() })).rejects.toThrow(
      new RegExp(`^4 machines, coordinator apart: the quotas add up to ${(5 * cores).toFixed(2)} cores, over 60 % of this host's ${cores}`),
    );
    expect(quotaLoad([0.25, 0.25, 0.25, 0.25, 0.2], 2)).toEqual({ quotaCores: 1.2, oversubscribed: false });
    expect(quotaLoad([0.5, 0.5, 0.5], 2).oversubscribed).toBe(true);
  });
});

const setpriv = spawnSync('setpriv', ['--version']).status === 0 && process.getuid?.() === 0;
if (!setpriv) console.warn('test/emulation.test.ts: "--cpus as a user who cannot make cgroups" is skipped: it needs root and setpriv');

it.skipIf(!setpriv)(`--cpus as a user who cannot make cgroups: one line, exit 2${setpriv ? '' : ' (skipped: needs root and setpriv)'}`, () => {
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, 'dist/scripts/scaling.js', '--cpus', '0.25', '--remote', '1', '--threads', '', '--out', out()], { encoding: 'utf8' });
  expect(r.status).toBe(2);
  expect(r.stderr).toBe('scaling: --cpus 0.25 needs a cgroup per machine: needs root to create cgroups\n');
});

describe('cgroup hierarchies and host CPU', () => {
  const line = (id: number, point: string, fstype: string, options: string) => `${id} 25 0:${id} / ${point} rw,relatime shared:${id} - ${fstype} cgroup ${options}`;

  it('finds v1 cpu with cpuacct apart or co-mounted, and v2 only where cpu is handed to children', () => {
    const apart = [line(30, '/sys/fs/cgroup/cpu', 'cgroup', 'rw,cpu'), line(31, '/sys/fs/cgroup/cpuacct', 'cgroup', 'rw,cpuacct'), line(32, '/sys/fs/cgroup/unified', 'cgroup2', 'rw')].join('\n');
    expect(findHierarchy(apart)).toEqual({ version: 1, cpu: '/sys/fs/cgroup/cpu', cpuacct: '/sys/fs/cgroup/cpuacct' });
    const together = line(30, '/sys/fs/cgroup/cpu,cpuacct', 'cgroup', 'rw,cpu,cpuacct');
    expect(findHierarchy(together)).toEqual({ version: 1, cpu: '/sys/fs/cgroup/cpu,cpuacct', cpuacct: '/sys/fs/cgroup/cpu,cpuacct' });
    expect(findHierarchy(line(30, '/sys/fs/cgroup/cpu', 'cgroup', 'rw,cpu'))).toMatch(/without cpuacct/);
    expect(findHierarchy(line(30, '/sys/fs/cgroup/memory', 'cgroup', 'rw,memory'))).toMatch(/no cgroup cpu controller is mounted/);
    // A v2 mount point with no cgroup.controllers file (not a real hierarchy): cpu is not handed down.
    expect(findHierarchy(line(40, '/nonexistent-cgroup2', 'cgroup2', 'rw'))).toMatch(/does not hand the cpu controller to its children/);
    // A v2 hierarchy (as files: the test makes none) whose root hands cpu to its children.
    const v2 = out();
    writeFileSync(join(v2, 'cgroup.controllers'), 'cpuset cpu io memory pids\n');
    writeFileSync(join(v2, 'cgroup.subtree_control'), 'memory pids\n');
    expect(findHierarchy(line(40, v2, 'cgroup2', 'rw'))).toMatch(/does not hand the cpu controller/);
    writeFileSync(join(v2, 'cgroup.subtree_control'), 'cpu memory pids\n');
    expect(findHierarchy(line(40, v2, 'cgroup2', 'rw'))).toEqual({ version: 2, root: v2 });
  });

  it('reads the host\'s idle and total CPU time from /proc/stat', () => {
    expect(hostCpu('cpu  100 5 50 800 20 3 2 1 0 0\ncpu0 1 2 3')).toEqual({ idle: 820, total: 981 });
    const now = hostCpu();
    expect(now.total).toBeGreaterThan(now.idle);
  });
});

describe.skipIf(!!unavailable)(`CPU groups${skipped}`, () => {
  it('a group has the quota and period asked for, holds its process to it, counts its CPU and throttled time, and is removed afterwards', async () => {
    // A twentieth of a core (2 ms each 40 ms): held to it even on a host so busy that a process gets a few
    // tenths of a core, so that the quota, not the host, is what limits it.
    const group = new CpuGroup('test', 0.05, 40_000);
    try {
      const cpu = group.cpuDir;
      if (existsSync(join(cpu, 'cpu.max'))) expect(readFileSync(join(cpu, 'cpu.max'), 'utf8').trim()).toBe('2000 40000');
      else {
        expect(readFileSync(join(cpu, 'cpu.cfs_quota_us'), 'utf8').trim()).toBe('2000');
        expect(readFileSync(join(cpu, 'cpu.cfs_period_us'), 'utf8').trim()).toBe('40000');
      }
      // Spins until it has used 40 ms of CPU of its own: at least 20 periods, throttled in each it runs out.
      const spin = 'const u = () => { const c = process.cpuUsage(); return (c.user + c.system) / 1000; }; const end = u() + 40; while (u() < end);';
      const [command, args] = group.wrap(process.execPath, ['-e', spin]);
      const started = performance.now();
      const child = spawn(command, args, { stdio: 'ignore' });
      await new Promise((resolve) => setTimeout(resolve, 150));
      expect(group.tasks()).toContain(child.pid);
      await new Promise((resolve) => child.once('exit', resolve));
      const wallMs = performance.now() - started;
      const { cpuNs, throttledNs } = group.counters();
      expect(cpuNs).toBeGreaterThan(40e6);
      expect(throttledNs).toBeGreaterThan(0);
      // The quota held: no more than a twentieth of a core over the process's life (a period's slack).
      expect(cpuNs / 1e6).toBeLessThan(0.05 * wallMs + 2 + 2);
    } finally {
      group.remove();
    }
    expect(group.dirs.some((d) => existsSync(d))).toBe(false);
    expect(leftGroups()).toEqual([]);
  });

  it('follow(): a process that joined the cpu group by itself (as DDP\'s ranks do) is counted from then on', async () => {
    const group = new CpuGroup('follow', 0.5);
    try {
      const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 1000)'], { stdio: 'ignore' });
      writeFileSync(join(group.cpuDir, 'cgroup.procs'), String(child.pid));
      group.follow();
      const counted = readFileSync(join(group.dirs.at(-1)!, 'cgroup.procs'), 'utf8').split('\n').map(Number);
      expect(counted).toContain(child.pid);
      child.kill('SIGKILL');
    } finally {
      group.remove();
    }
  });

  it(
    'a tiny emulated run (tutorial MLP, 2 machines of 0.5 core, the coordinator apart and on machine 0) ends on the unconstrained paramsSha256, fidelity and calibration kept',
    { timeout: 120_000 },
    async () => {
      const dir = out();
      const json = join(dir, 'rows.json');
      const result = await runScaling({
        trainSamples: 256, steps: 5, warmup: 1, batchSize: 64, threads: [1], remote: [2], microBatch: [16],
        cpus: 0.5, coordinatorCpus: 0.2, layouts: ['apart', 'rank0'], calibrationRounds: 3, allowOversubscribed: true, json, out: dir,
      });
      expect(result.rows.map((r) => [r.kind, r.participants])).toEqual([
        ['local threads', 1],
        ['emulated machines, coordinator apart', 2],
        ['emulated machines, coordinator on machine 0', 2],
      ]);
      expect(result.identical).toBe(true);
      const [apart, rank0] = result.rows.slice(1).map((r) => r.fidelity!);
      expect(apart.groups.map((g) => [g.group, g.cores])).toEqual([['coordinator', 0.2], ['machine 0', 0.5], ['machine 1', 0.5]]);
      expect(rank0.groups.map((g) => [g.group, g.cores])).toEqual([['machine 0 (coordinator)', 0.5], ['machine 1', 0.5]]);
      expect(apart.quotaCores).toBeCloseTo(1.2);
      for (const g of [...apart.groups, ...rank0.groups]) {
        expect(g.cpuMsPerStep).toBeGreaterThanOrEqual(0);
        expect(g.throttledMsPerStep).toBeGreaterThanOrEqual(0);
      }
      // Every run computes somewhere: the machines' CPU a step adds up to more than nothing.
      expect(apart.groups.reduce((a, g) => a + g.cpuMsPerStep, 0)).toBeGreaterThan(0);
      expect(result.calibration.map((c) => c.run)).toEqual(['calibration: compute', 'calibration: exchange', 'calibration: compute', 'calibration: exchange']);
      for (const c of result.calibration) {
        expect(c.slowdown).toBeGreaterThan(0);
        expect(c.ideal).toBe(2);
      }
      expect(result.table).toContain('Emulated machines: 0.5 core each (CFS quota, 10 ms period), the coordinator apart on 0.2; loopback links.');
      // No 1-machine row and no DDP row here: no speed-up, no ratio to DDP's step.
      expect(result.table).toMatch(/^\| emulated machines, coordinator apart \| auto: .* \| 2 \| [\d.]+ \| – \| – \| 1\.20 \| .* \| coordinator \(0\.2\): [\d.]+, [\d.]+; machine 0 \(0\.5\)/m);
      expect(result.table).toMatch(/^calibration: exchange: [\d.]+–[\d.]+× slower over 2 measurements, ideal 2\.00×\.$/m);
      // The main table shows where an emulated step's time went: bytes, waiting, the coordinator's CPU.
      expect(result.table).toMatch(/^\| emulated machines, coordinator on machine 0 \| .* \| [\d.]+ MB \| \d+% \| [\d.]+ \| /m);
      expect(result.table).toMatch(/^- calibration: exchange: a 12 MB each-way ws exchange \(median round\) [\d.]+ ms at 0\.5 core/m);
      const rows = JSON.parse(readFileSync(json, 'utf8')).rows;
      expect(rows).toHaveLength(7);
      expect(Object.keys(rows[1]).slice(0, 8)).toEqual(['run', 'participants', 'plan', 'cpus', 'link', 'msPerStep', 'medianMs', 'paramsSha256']);
      expect(rows[1]).toMatchObject({ run: 'emulated machines, coordinator apart', participants: 2, cpus: 0.5, link: 'loopback', paramsSha256: rows[0].paramsSha256 });
      expect(rows[1].groups).toHaveLength(3);
      expect(typeof rows[1].oversubscribed).toBe('boolean');
      expect(rows[0].cpus).toBeNull();
      expect(leftGroups()).toEqual([]);
    },
  );

  const noNetwork = unavailable ?? TestNetwork.unavailable();
  it.skipIf(!!noNetwork)(
    `--cpus with --link: the coordinator and the worker each in a group and a namespace of their own, same parameters${noNetwork ? ` (skipped: ${noNetwork})` : ''}`,
    { timeout: 60_000 },
    async () => {
      const result = await runScaling({ hidden: [32, 16], trainSamples: 256, steps: 3, warmup: 1, batchSize: 32, threads: [1], remote: [1], microBatch: [16], cpus: 0.5, link: '1gbit', calibrationRounds: 0, out: out() });
      expect(result.rows.map((r) => [r.kind, r.link])).toEqual([['local threads', '–'], ['emulated machines, coordinator apart', '1gbit']]);
      expect(result.identical).toBe(true);
      expect(result.rows[1].fidelity!.groups.map((g) => g.group)).toEqual(['coordinator', 'machine 0']);
      expect(result.table).toContain('each dtrain process behind its own 1gbit link');
      expect(leftGroups()).toEqual([]);
      expect(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })).not.toContain(`dtn${process.pid}`);
    },
  );

  it.skipIf(!!noNetwork)(
    `Ctrl-C during an emulated run behind links: its groups, namespaces and processes are gone${noNetwork ? ` (skipped: ${noNetwork})` : ''}`,
    { timeout: 60_000 },
    async () => {
      const child = spawn(process.execPath, ['dist/scripts/scaling.js', '--hidden', '32,16', '--batch-size', '32', '--steps', '100000', '--threads', '', '--remote', '1', '--cpus', '0.5', '--link', '1gbit', '--calibration-rounds', '0', '--out', out()], { stdio: 'ignore' });
      const h = findHierarchy() as Exclude<ReturnType<typeof findHierarchy>, string>;
      const root = h.version === 2 ? h.root : h.cpu;
      const mine = () => readdirSync(root).filter((d) => d.startsWith(`dtrain-emu-${child.pid}-`));
      const namespaces = () => execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').filter((l) => l.startsWith(`dtn${child.pid}`));
      const until = async (what: () => boolean) => {
        for (let waited = 0; !what() && waited < 30_000; waited += 100) await new Promise((resolve) => setTimeout(resolve, 100));
      };
      // Both groups (coordinator, machine 0) made and the worker running: the run is under way.
      const procs = (d: string) => readFileSync(join(root, d, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
      await until(() => mine().length === 2 && namespaces().length === 2 && mine().every((d) => procs(d).length > 0));
      const inGroups = mine().flatMap(procs);
      expect(inGroups.length).toBeGreaterThanOrEqual(2);
      const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(signal ?? code)));
      child.kill('SIGINT');
      expect(await exited).toBe('SIGINT');
      expect(mine()).toEqual([]);
      expect(namespaces()).toEqual([]);
      // A zombie (state Z) waiting for whoever adopted it to reap it has ended.
      const alive = inGroups.filter((pid) => existsSync(`/proc/${pid}/stat`) && !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8')));
      expect(alive).toEqual([]);
    },
  );
});
