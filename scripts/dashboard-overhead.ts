/**
 * What open dashboard pages cost a training step: one run with --dashboard, its steps in blocks taken
 * alternately with no page open and with --pages pages open (interleaved, so that drift of the machine
 * falls on both alike), each page a real event stream read by another process (as a browser would, off the
 * coordinator's CPU time), which lives through both kinds of block. Prints each side's median and mean step time, this process's CPU time a step
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
import { scriptArgsOrExit } from './args.js';
import { mean, median } from './reference.js';

const args = scriptArgsOrExit('dashboard-overhead', { pages: 'value', blocks: 'value', 'block-steps': 'value', threads: 'value', hidden: 'value' });
const pages = Number(args.value('pages', '10'));
const blocks = Number(args.value('blocks', '20'));
const blockSteps = Number(args.value('block-steps', '25'));
const threads = Number(args.value('threads', '1'));
const hidden = args.value('hidden', '512,256,128,64').split(',').map(Number);

/**
 * A process that opens `count` pages' event streams when told `open` (answering "open" once each has its
 * snapshot) and closes them when told `close` (answering "closed"). It lives through both kinds of block,
 * so that they differ by the pages only, not by a process starting. Raw sockets that read and discard: its
 * own CPU stays as small as a reader's can be.
 */
class PageReader {
  private readonly child: ChildProcess;
  private readonly lines: AsyncIterator<string>;

  constructor(url: string, count: number) {
    const { hostname, port } = new URL(url);
    const code = `
      const net = require('node:net');
      let sockets = [];
      require('node:readline').createInterface({ input: process.stdin }).on('line', (command) => {
        if (command === 'close') {
          for (const s of sockets) s.destroy();
          sockets = [];
          console.log('closed');
          return;
        }
        let opened = 0;
        for (let i = 0; i < ${count}; i++) {
          const socket = net.connect(${Number(port)}, ${JSON.stringify(hostname)});
          socket.write('GET /events HTTP/1.1\\r\\nHost: ${hostname}:${port}\\r\\n\\r\\n');
          socket.once('data', () => { if (++opened === ${count}) console.log('open'); });
          socket.on('data', () => {});
          sockets.push(socket);
        }
      });`;
    this.child = spawn(process.execPath, ['-e', code], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.lines = createInterface({ input: this.child.stdout! })[Symbol.asyncIterator]();
  }

  private async tell(command: 'open' | 'close'): Promise<void> {
    this.child.stdin!.write(`${command}\n`);
    const answer = await this.lines.next();
    if (answer.done) throw new Error(`the page reader exited before it answered ${command}`);
  }

  open = () => this.tell('open');
  close = () => this.tell('close');
  end = () => this.child.kill();
}

async function main(): Promise<void> {
  const times: Record<'none' | 'open', number[]> = { none: [], open: [] };
  let mode: 'none' | 'open' = 'none';
  let reader: PageReader | undefined;
  const steps = blocks * blockSteps;
  // This process's CPU time (every thread: the dashboard's too) in each mode, and the steps it covers.
  const cpu: Record<'none' | 'open', { ms: number; steps: number }> = { none: { ms: 0, steps: 0 }, open: { ms: 0, steps: 0 } };
  let blockCpu = process.cpuUsage();
  const onEvent = (e: TrainEvent) => {
    if (e.type === 'dashboard') reader = new PageReader(e.url, pages);
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
    await (next === 'open' ? reader!.open() : reader!.close());
    mode = next;
    blockCpu = process.cpuUsage();
  };
  try {
    await train(
      { hidden, threads, steps, epochs: 1000, logEvery: 1_000_000, dashboard: '127.0.0.1:0', export: false, out: mkdtempSync(join(tmpdir(), 'dtrain-dashboard-overhead-')) },
      { onEvent, beforeStep },
    );
  } finally {
    reader?.end();
  }
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
