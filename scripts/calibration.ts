/**
 * Calibration of emulated machines: how much slower C cores make what a machine does, against the same
 * work unconstrained (ideally 1/C times). Compute: one machine's dtrain step (the coordinator on one thread,
 * alone) in a group of C, against the same run in no group. Bytes: a bulk exchange over ws between two
 * processes (scripts/exchange.ts), each in a group of C, against the same two unconstrained; the median of
 * its rounds. Under CFS bandwidth control the loopback's copies are charged to the machines' quotas, so
 * bytes and compute share one budget.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CpuGroup } from './emulation.js';
import { runDtrainMachines, starter, type MachineSettings } from './machines.js';
import { mean, median, projectRoot } from './reference.js';

export interface CalibrationRow {
  run: 'calibration: compute' | 'calibration: exchange';
  cpus: number;
  periodUs: number;
  /** Emulated: mean ms a step (compute) or median ms a round (exchange); and the same unconstrained. */
  emulatedMs: number;
  unconstrainedMs: number;
  /** emulated ÷ unconstrained, and what it would be if C cores were exactly a C-th of the time (1/C). */
  slowdown: number;
  ideal: number;
  /** Exchange: the emulated rounds' range (ms). */
  rangeMs?: [number, number];
}

const exchangeScript = join(projectRoot, 'dist/scripts/exchange.js');

/** The rounds of one exchange of `bytes` each way, both ends in groups of `cpus` cores (null: in none). */
async function exchangeRounds(cpus: number | null, periodUs: number, rounds: number, bytes: number): Promise<number[]> {
  const groups = cpus === null ? [] : [new CpuGroup('exchange server', cpus, periodUs), new CpuGroup('exchange client', cpus, periodUs)];
  const run = starter(undefined);
  const spawnIn = (group: CpuGroup | undefined, args: string[]) => run.start(group, undefined, process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const server = spawnIn(groups[0], [exchangeScript, 'serve']);
    const port = await new Promise<string>((resolve, reject) => {
      server.stdout!.on('data', (d: Buffer) => {
        const m = /port (\d+)/.exec(String(d));
        if (m) resolve(m[1]);
      });
      server.once('exit', () => reject(new Error('the exchange server ended before it listened')));
    });
    const client = spawnIn(groups[1], [exchangeScript, 'connect', `ws://127.0.0.1:${port}`, String(rounds), String(bytes)]);
    let out = '';
    client.stdout!.on('data', (d: Buffer) => (out += String(d)));
    await new Promise<void>((resolve, reject) => client.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`the exchange client ended with code ${code}`)))));
    return (JSON.parse(out.trim().split('\n').pop()!) as { roundsMs: number[] }).roundsMs;
  } finally {
    run.children.forEach((c) => c.kill('SIGKILL'));
    groups.forEach((g) => g.remove());
  }
}

export async function calibrateExchange(cpus: number, periodUs: number, rounds: number, bytes = 12e6): Promise<CalibrationRow> {
  const free = await exchangeRounds(null, periodUs, rounds, bytes);
  const emulated = await exchangeRounds(cpus, periodUs, rounds, bytes);
  const [emulatedMs, unconstrainedMs] = [median(emulated), median(free)];
  return { run: 'calibration: exchange', cpus, periodUs, emulatedMs, unconstrainedMs, slowdown: emulatedMs / unconstrainedMs, ideal: 1 / cpus, rangeMs: [Math.min(...emulated), Math.max(...emulated)] };
}

/** One machine's step at `cpus` against one unconstrained thread's: the coordinator alone on one thread. */
export async function calibrateCompute(s: MachineSettings & { cpus: number }, coordinatorArgs: string[], outDir: string, steps: number, warmup: number): Promise<CalibrationRow> {
  const stepMs = async (cpus: number | null) => {
    const out = mkdtempSync(join(outDir, 'calibration-'));
    try {
      const run = await runDtrainMachines(1, 'rank0', { ...s, cpus, link: null }, { coordinatorArgs, workerArgs: [], out, steps, warmup });
      return mean(run.steps.slice(warmup).map((r) => r.ms));
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  };
  const unconstrainedMs = await stepMs(null);
  const emulatedMs = await stepMs(s.cpus);
  return { run: 'calibration: compute', cpus: s.cpus, periodUs: s.periodUs, emulatedMs, unconstrainedMs, slowdown: emulatedMs / unconstrainedMs, ideal: 1 / s.cpus };
}
