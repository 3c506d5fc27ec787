/**
 * Turns training events into what a person reads: the tutorial's lines (loss every --log-every batches,
 * "Test result: Accuracy: X%, Avg loss: Y" after each epoch) and, on a terminal, a progress bar.
 */
import type { TrainEvent } from './train/events.js';

export interface ConsoleSink {
  line(text: string): void;
  /** Overwrites the current terminal line (only called when it is a TTY). */
  status?(text: string): void;
}

type Handler<T extends TrainEvent['type']> = (event: Extract<TrainEvent, { type: T }>, out: Output) => void;

/** The sink, and the progress bar's state. */
interface Output {
  sink: ConsoleSink;
  clear(): void;
  lastDraw: number;
}

function clusterLine(e: Extract<TrainEvent, { type: 'cluster' }>['event']): string {
  switch (e.type) {
    case 'joined':
      return `+ ${e.worker} joined (${e.backend}, ${e.threads} thread${e.threads === 1 ? '' : 's'})`;
    case 'left':
      return `- ${e.worker} left: ${e.reason}`;
    case 'rejected':
      return `! ${e.peer} rejected: ${e.reason}`;
    case 'refused':
      return `! refused ${e.count} connection${e.count === 1 ? '' : 's'}: ${e.reason}`;
    case 'waiting':
      return `… ${e.reason}`;
    case 'peers':
      return `⇆ ${e.message}`;
    case 'redo':
      return `↻ rows ${e.rows[0]}–${e.rows[1] - 1} redone elsewhere: ${e.reason}`;
    case 'replay':
      return `↻ no replica can give the state (none left, or a sharded owner lost): replaying steps ${e.from}–${e.to - 1} here from the last state taken`;
    case 'plan': {
      const estimates = e.estimates.map((x) => `${x.plan} ${x.ms.toFixed(1)} ms`).join(', ');
      return `⇄ step ${e.step}: plan ${e.plan} (${e.reason}${estimates ? `; estimated a step: ${estimates}` : ''})`;
    }
    case 'diverged':
      return `! replicas of ${e.workers.join(', ')} differ from the coordinator's parameters: resynchronising`;
  }
}

const HANDLERS: { [T in TrainEvent['type']]: Handler<T> } = {
  start: (e, { sink }) => {
    sink.line(`dtrain: ${e.spec}, ${e.parameters.toLocaleString('en-US')} parameters`);
    sink.line(`data: ${e.dataset}, ${e.trainSamples} train / ${e.testSamples} test samples`);
    sink.line(`workers: ${e.workers}`);
    if (e.listening) sink.line(`listening for remote workers on ${e.listening}`);
  },
  warning: (e, { sink }) => sink.line(`! warning: ${e.message}`),
  checkpoint: (e, out) => {
    if (e.action === 'skipped') {
      out.clear();
      out.sink.line(`! checkpoint skipped: ${e.reason}`);
    } else if (e.action === 'resumed') out.sink.line(`resumed from ${e.file} (step ${e.step})`);
  },
  cluster: (e, out) => {
    out.clear();
    out.sink.line(clusterLine(e.event));
  },
  step: (e, out) => {
    if (!out.sink.status) return;
    const now = performance.now();
    if (now - out.lastDraw < 100 && e.batch !== e.batches) return;
    out.lastDraw = now;
    const width = 30;
    const done = Math.round((width * e.batch) / e.batches);
    out.sink.status(`epoch ${e.epoch} [${'='.repeat(done)}${' '.repeat(width - done)}] ${e.batch}/${e.batches} loss ${e.loss.toFixed(4)}`);
  },
  // Per-participant times are for the dashboard, metrics.jsonl and TensorBoard, not the terminal.
  participants: () => {},
  log: (e, out) => {
    out.clear();
    if (e.current <= 64) out.sink.line(`Epoch ${e.epoch}\n-------------------------------`);
    out.sink.line(`loss: ${e.loss.toFixed(6).padStart(9)}  [${String(e.current).padStart(5)}/${String(e.size).padStart(5)}]`);
  },
  epoch: (e, out) => {
    out.clear();
    const r = e.result;
    out.sink.line(
      `Test result: Accuracy: ${r.testAccuracy.toFixed(2)}%, Avg loss: ${r.testAvgLoss.toFixed(6)}  ` +
        `(epoch ${r.epoch}: ${r.seconds.toFixed(2)} s, ${Math.round(r.samplesPerSecond)} samples/s)`,
    );
    const total = Object.values(e.shares.rows).reduce((a, b) => a + b, 0);
    if (Object.keys(e.shares.rows).length > 1 || e.shares.networkWaitSeconds > 0) {
      const parts = Object.entries(e.shares.rows).map(([name, rows]) => `${name} ${((100 * rows) / total).toFixed(0)}%`);
      out.sink.line(`work shares: ${parts.join(', ')}; waited on the network ${e.shares.networkWaitSeconds.toFixed(2)} s`);
    }
    out.sink.line('');
  },
  'finished-already': (e, { sink }) => sink.line(`nothing left to do: the run already reached step ${e.step} (${e.epochs} epoch${e.epochs === 1 ? '' : 's'} recorded)`),
  done: (e, out) => {
    out.clear();
    out.sink.line(`paramsSha256: ${e.summary.paramsSha256}`);
    const { export: exported, tensorboard } = e.summary.config;
    out.sink.line(`run: ${e.summary.outDir}/ (summary.json, metrics.jsonl, plot.svg, checkpoints/${tensorboard ? ', tensorboard/' : ''}${exported ? ', model/' : ''})`);
  },
};

export function consoleReporter(sink: ConsoleSink): (event: TrainEvent) => void {
  const out: Output = { sink, clear: () => sink.status?.(''), lastDraw: 0 };
  return (event) => (HANDLERS[event.type] as Handler<typeof event.type>)(event as never, out);
}
