/**
 * A bulk exchange between two processes over ws (the transport dtrain's remote workers use): each round
 * both ends send BYTES at once and the round ends when each has the other's. The calibration of emulated
 * machines runs one end in each machine's group and compares the median round with the unconstrained one.
 *
 *   node dist/scripts/exchange.js serve                       (prints "port N", serves one connection)
 *   node dist/scripts/exchange.js connect URL ROUNDS BYTES    (prints {"roundsMs": [...]})
 */
import { WebSocket, WebSocketServer } from 'ws';

function serve(): void {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 1 << 30 });
  server.on('listening', () => console.log(`port ${(server.address() as { port: number }).port}`));
  server.on('connection', (socket) => {
    let payload: Buffer | undefined;
    socket.on('message', (data: Buffer, binary) => {
      if (!binary) {
        // "go BYTES": send ours while the client sends its own.
        payload ??= Buffer.alloc(Number(String(data).split(' ')[1]), 7);
        socket.send(payload);
      } else {
        socket.send('ack');
      }
    });
    socket.on('close', () => server.close());
  });
}

async function connect(url: string, rounds: number, bytes: number): Promise<void> {
  const socket = new WebSocket(url, { maxPayload: 1 << 30 });
  await new Promise((resolve, reject) => socket.once('open', resolve).once('error', reject));
  const payload = Buffer.alloc(bytes, 3);
  const roundsMs: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const started = performance.now();
    await new Promise<void>((resolve) => {
      let waiting = 2; // the server's bytes and its ack of ours
      const onMessage = () => {
        if (--waiting === 0) {
          socket.off('message', onMessage);
          resolve();
        }
      };
      socket.on('message', onMessage);
      socket.send(`go ${bytes}`);
      socket.send(payload);
    });
    roundsMs.push(performance.now() - started);
  }
  socket.close();
  console.log(JSON.stringify({ roundsMs }));
}

const [mode, url, rounds, bytes] = process.argv.slice(2);
if (mode === 'serve') serve();
else if (mode === 'connect') await connect(url, Number(rounds), Number(bytes));
else {
  console.error('exchange: expected "serve" or "connect URL ROUNDS BYTES"');
  process.exitCode = 2;
}
