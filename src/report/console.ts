/**
 * Turns training events into what a person reads: the tutorial's lines (loss every --log-every batches,
 * "Test result: Accuracy: X%, Avg loss: Y" after each epoch) and, on a terminal, a progress bar.
 */
import type { TrainEvent } from '../train/events.js';

export interface ConsoleSink {
  line(text: string): void;
  /** Overwrites the current terminal line (only called when it is a TTY). */
  status?(text: string): void;
}

export function consoleReporter(sink: ConsoleSink): (event: TrainEvent) => void {
  let lastDraw = 0;
  const clear = () => sink.status?.('');
  return (event) => {
    switch (event.type) {
      case 'start':
        sink.line(`dtrain: ${event.spec}, ${event.parameters.toLocaleString('en-US')} parameters`);
        sink.line(`data: ${event.dataset}, ${event.trainSamples} train / ${event.testSamples} test samples`);
        sink.line(`workers: ${event.workers}`);
        if (event.listening) sink.line(`listening for remote workers on ${event.listening}`);
        break;
      case 'warning':
        sink.line(`! warning: ${event.message}`);
        break;
      case 'checkpoint':
        if (event.action === 'skipped') {
          clear();
          sink.line(`! checkpoint skipped: ${event.reason}`);
        } else if (event.action === 'resumed') sink.line(`resumed from ${event.file} (step ${event.step})`);
        break;
      case 'cluster': {
        clear();
        const e = event.event;
        if (e.type === 'joined') sink.line(`+ ${e.worker} joined (${e.backend}, ${e.threads} thread${e.threads === 1 ? '' : 's'})`);
        else if (e.type === 'left') sink.line(`- ${e.worker} left: ${e.reason}`);
        else if (e.type === 'rejected') sink.line(`! ${e.peer} rejected: ${e.reason}`);
        else if (e.type === 'refused') sink.line(`! refused ${e.count} connection${e.count === 1 ? '' : 's'}: ${e.reason}`);
        else if (e.type === 'waiting') sink.line(`… ${e.reason}`);
        else if (e.type === 'redo') sink.line(`↻ rows ${e.rows[0]}–${e.rows[1] - 1} redone elsewhere: ${e.reason}`);
        else if (e.type === 'replay') sink.line(`↻ no replica left: replaying steps ${e.from}–${e.to - 1} here from the last state taken`);
        else if (e.type === 'diverged') sink.line(`! replicas of ${e.workers.join(', ')} differ from the coordinator's parameters: resynchronising`);
        break;
      }
      case 'step': {
        if (!sink.status) break;
        const now = performance.now();
        if (now - lastDraw < 100 && event.batch !== event.batches) break;
        lastDraw = now;
        const width = 30;
        const done = Math.round((width * event.batch) / event.batches);
        sink.status(
          `epoch ${event.epoch} [${'='.repeat(done)}${' '.repeat(width - done)}] ${event.batch}/${event.batches} loss ${event.loss.toFixed(4)}`,
        );
        break;
      }
      case 'log':
        clear();
        if (event.current <= 64) sink.line(`Epoch ${event.epoch}\n-------------------------------`);
        sink.line(`loss: ${event.loss.toFixed(6).padStart(9)}  [${String(event.current).padStart(5)}/${String(event.size).padStart(5)}]`);
        break;
      case 'epoch': {
        clear();
        const r = event.result;
        sink.line(
          `Test result: Accuracy: ${r.testAccuracy.toFixed(2)}%, Avg loss: ${r.testAvgLoss.toFixed(6)}  ` +
            `(epoch ${r.epoch}: ${r.seconds.toFixed(2)} s, ${Math.round(r.samplesPerSecond)} samples/s)`,
        );
        const total = Object.values(event.shares.rows).reduce((a, b) => a + b, 0);
        if (Object.keys(event.shares.rows).length > 1 || event.shares.networkWaitSeconds > 0) {
          const parts = Object.entries(event.shares.rows).map(([name, rows]) => `${name} ${((100 * rows) / total).toFixed(0)}%`);
          sink.line(`work shares: ${parts.join(', ')}; waited on the network ${event.shares.networkWaitSeconds.toFixed(2)} s`);
        }
        sink.line('');
        break;
      }
      case 'done':
        clear();
        sink.line(`paramsSha256: ${event.summary.paramsSha256}`);
        sink.line(`run: ${event.summary.outDir}/ (summary.json, metrics.jsonl, plot.svg, checkpoints/${event.summary.config.export ? ', model/' : ''})`);
        break;
    }
  };
}
