/**
 * The chaos run's hostile peers, each a process of its own (so that it can run in a network namespace and
 * be killed like any worker):
 *
 *   node dist/scripts/chaos_peer.js liar --connect URL
 *     a worker that computes its rows and then moves one activation by 1e-3 (finite, and wrong: only
 *     --verify can catch it); it reconnects after each rejection, as `dtrain worker` does. Token: DTRAIN_TOKEN.
 *   node dist/scripts/chaos_peer.js strangers --connect URL --for-ms T [--junk-every-ms 50] [--flood 200] [--local-address A]
 *     for T ms: a stranger sending junk every --junk-every-ms, and --flood connections opened at once that
 *     never say hello (held until the end); then it exits. Bounded: at most T / every + flood connections.
 */
import { parseArgs } from 'node:util';
import WebSocket from 'ws';
import { runWorker } from '../src/cluster/remote/client.js';
import type { RowsDone } from '../src/cluster/remote/messages.js';
import { stamp } from './chaos_probe.js';
import { junkSenders } from './hostile_network.js';

/** Rows a little wrong but finite: the first activation of the first hidden layer moved by 1e-3. */
const tamper = (rows: RowsDone): RowsDone => ({ ...rows, hidden: rows.hidden.map((h, l) => (l === 0 ? h.map((v, i) => (i === 0 ? v + 1e-3 : v)) : h)) });

const log = (text: string) => console.log(`[${stamp()}] ${text}`);

async function liar(connect: string): Promise<void> {
  await runWorker({
    connect,
    token: process.env.DTRAIN_TOKEN,
    tamperRows: tamper,
    onEvent: (e) => {
      if (e.type === 'connected') log(`liar connected as worker ${e.workerId}`);
      else if (e.type === 'disconnected') log(`liar disconnected: ${e.reason}`);
      else if (e.type === 'error') log(`liar error: ${e.message}`);
      else if (e.type === 'finished') log('liar: the coordinator finished the run');
    },
  });
}

async function strangers(connect: string, forMs: number, junkEveryMs: number, flood: number, localAddress?: string): Promise<void> {
  const stopJunk = junkSenders(connect, junkEveryMs, localAddress, Math.ceil(forMs / junkEveryMs));
  const held: WebSocket[] = [];
  let refused = 0;
  for (let i = 0; i < flood; i++) {
    const ws = new WebSocket(connect, localAddress ? { localAddress } : {});
    ws.on('close', () => refused++);
    ws.on('error', () => {});
    held.push(ws);
  }
  log(`strangers: junk every ${junkEveryMs} ms and ${flood} silent connections, for ${forMs} ms`);
  await new Promise((resolve) => setTimeout(resolve, forMs));
  stopJunk();
  for (const ws of held) ws.terminate();
  log(`strangers: done; ${refused} of the ${flood} silent connections were closed by the coordinator`);
}

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { connect: { type: 'string' }, 'for-ms': { type: 'string', default: '5000' }, 'junk-every-ms': { type: 'string', default: '50' }, flood: { type: 'string', default: '200' }, 'local-address': { type: 'string' } },
});
const role = positionals[0];
if (!values.connect || (role !== 'liar' && role !== 'strangers')) {
  console.error('usage: chaos_peer.js liar|strangers --connect URL [--for-ms T] [--junk-every-ms N] [--flood N] [--local-address A]');
  process.exit(2);
}
if (role === 'liar') await liar(values.connect);
else await strangers(values.connect, Number(values['for-ms']), Number(values['junk-every-ms']), Number(values.flood), values['local-address']);
process.exit(0);
