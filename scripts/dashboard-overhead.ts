/**
 * What open dashboard pages cost a training step: one run with --dashboard, its steps in blocks taken
 * alternately with no page open and with --pages pages open (interleaved, so that drift of the machine
 * falls on both alike), each page a real event stream read by another process (as a browser would, off the
 * coordinator's CPU time). Prints each side's median and mean step time, this process's CPU time a step
 * (all its threads, the dashboard's included) and the difference (issue 21 asks for < 2 % with 10 pages).
 * On a machine with fewer free cores than the run's threads plus one, the reader's own CPU shows up too.
 *
 *   node dist/scripts/dashboard-overhead.js [--pages 10] [--blocks 20] [--block-steps 25] [--threads 1] [--hidden 512,256,128,64]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { train, type TrainEvent } from '../src/index.js';
import { argValue, median } from './reference.js';

const pages = Number(argValue('pages', '10'));
const blocks = Number(argValue('blocks', '20'));
const blockSteps = Number(argValue('block-steps', '25'));
const threads = Number(argValue('threads', '1'));
const hidden = argValue('hidden', '512,256,128,64').split(',').map(Number);

/**
 * A process that holds `count` pages' event streams open and reads them; prints "open" once each has its
 * snapshot. Ended by killing it.
 */
function openPages(url: string, count: number): Promise<ChildProcess> {
  const reader = `
    let opened = 0;
    for (let i = 0; i < ${count}; i++) {
      fetch(${JSON.stringify(`${url}events`)}).then(async (res) => {
        let first = true;
        for await (const _ of res.body) if (first) { first = false; if (++opened === ${count}) console.log('open'); }
      });
    }`;
  const child = spawn(process.execPath, ['-e', reader], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', () => resolve(child));
    child.once('exit', (code) => reject(new Error(`the page reader exited (${code}) before its pages opened`)));
  });
}

async function main(): Promise<void> {
  let url = '';
  const times: Record<'none' | 'open', number[]> = { none: [], open: [] };
  let mode: 'none' | 'open' = 'none';
  let reader: ChildProcess | undefined;
  const steps = blocks * blockSteps;
  // This process's CPU time (every thread: the dashboard's too) in each mode, and the steps it covers.
  const cpu: Record<'none' | 'open', { ms: number; steps: number }> = { none: { ms: 0, steps: 0 }, open: { ms: 0, steps: 0 } };
  let blockCpu = process.cpuUsage();
  const onEvent = (e: TrainEvent) => {
    if (e.type === 'dashboard') url = e.url;
    // The first block warms up (engine, caches): not counted.
    if (e.type === 'step' && e.step > blockSteps) times[mode].push(e.ms);
  };
  // Between blocks (not counted as training time): pages opened or closed.
  const beforeStep = async (step: number) => {
    if (step === 0 || step % blockSteps !== 0) return;
    if (step > blockSteps) {
      const used = process.cpuUsage(blockCpu);
      cpu[mode].ms += (used.user + used.system) / 1000;
      cpu[mode].steps += blockSteps;
    }
    const next = (step / blockSteps) % 2 === 1 ? 'open' : 'none';
    if (next === mode) return;
    if (next === 'open') reader = await openPages(url, pages);
    else {
      reader?.kill();
      reader = undefined;
    }
    mode = next;
    blockCpu = process.cpuUsage();
  };
  try {
    await train(
      { hidden, threads, steps, epochs: 1000, logEvery: 1_000_000, dashboard: '127.0.0.1:0', export: false, out: mkdtempSync(join(tmpdir(), 'dtrain-dashboard-overhead-')) },
      { onEvent, beforeStep },
    );
  } finally {
    reader?.kill();
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const row = (name: string, xs: number[], c: { ms: number; steps: number }) =>
    `${name.padEnd(16)} ${String(xs.length).padStart(6)} ${median(xs).toFixed(3).padStart(10)} ${mean(xs).toFixed(3).padStart(10)} ${(c.ms / Math.max(1, c.steps)).toFixed(3).padStart(12)}`;
  console.log(`dashboard overhead: ${blocks} blocks of ${blockSteps} steps, alternately 0 and ${pages} open pages; ${threads} thread(s), hidden ${hidden.join(',')}`);
  console.log(`${'pages open'.padEnd(16)} ${'steps'.padStart(6)} ${'median ms'.padStart(10)} ${'mean ms'.padStart(10)} ${'cpu ms/step'.padStart(12)}`);
  console.log(row('0', times.none, cpu.none));
  console.log(row(String(pages), times.open, cpu.open));
  const change = (a: number, b: number) => `${(100 * (b / a - 1)).toFixed(2)} %`;
  console.log(`with ${pages} pages: median ${change(median(times.none), median(times.open))}, mean ${change(mean(times.none), mean(times.open))}`);
}

await main();
