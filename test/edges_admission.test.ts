/**
 * Admission's edges (issue 23): a per-address cap on connections authenticating that spares honest workers
 * sharing the address, IPv6 counted per /64 prefix, the opening handshake bounded in time (slowloris), and a
 * refused connection answered before the upgrade.
 */
import { connect, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { addressOf, Admission, ADMISSION_DEFAULTS } from '../src/cluster/remote/admission.js';
import { runWorker, type WorkerEvent } from '../src/cluster/remote/client.js';
import { smallHub } from './helpers.js';

/** Waits until `condition` holds (polling), or fails after `ms`. */
async function until(condition: () => boolean, ms = 10_000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error('timed out waiting');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('admission per address', () => {
  it('lets at most maxPendingAuthPerAddress connections of one address authenticate at once, counting no failure', () => {
    const admission = new Admission({ ...ADMISSION_DEFAULTS, maxPendingAuthPerAddress: 2 });
    expect(admission.admit('10.0.0.1')).toBeUndefined();
    expect(admission.admit('10.0.0.1')).toBeUndefined();
    expect(admission.admit('10.0.0.1')).toBe('too many connections authenticating from 10.0.0.1 (2): try again later');
    expect(admission.admit('10.0.0.2')).toBeUndefined();
    admission.settle('10.0.0.1', true);
    // Refusals at the cap are not failures: the address is never blocked for them.
    for (let i = 0; i < 10; i++) expect(admission.admit('10.0.0.1')).toBeUndefined(), admission.settle('10.0.0.1', true);
    expect(admission.stats).toEqual({ authenticating: 2, peakAuthenticating: 3, refused: 1 });
  });

  it('counts IPv6 addresses by their /64 prefix, and IPv4-mapped ones as IPv4', () => {
    expect(addressOf('2001:db8:1:2::1')).toBe('2001:db8:1:2::/64');
    expect(addressOf('2001:0db8:0001:0002:ffff:0:0:9')).toBe('2001:db8:1:2::/64');
    expect(addressOf('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(addressOf('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(addressOf('::1')).toBe('0:0:0:0::/64');
    expect(addressOf('::ffff:10.1.2.3')).toBe('10.1.2.3');
    expect(addressOf('10.1.2.3')).toBe('10.1.2.3');

    const admission = new Admission({ ...ADMISSION_DEFAULTS, blockMs: 60_000 });
    for (const ip of ['2001:db8:1:2::1', '2001:db8:1:2::2', '2001:db8:1:2:abcd::3']) admission.admit(ip), admission.settle(ip, false);
    expect(admission.admit('2001:db8:1:2:ffff::9')).toMatch(/^too many failed authentications from 2001:db8:1:2::\/64: refused for another/);
    expect(admission.admit('2001:db8:1:3::1')).toBeUndefined();
  });
});

describe('a hub admitting connections', () => {
  /** A WebSocket client from `from` that never says hello: it holds an admission slot until its deadline. */
  function silent(port: number, from: string): Promise<[number, string]> {
    return new Promise((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}`, { localAddress: from });
      ws.on('close', (code, reason) => resolve([code, String(reason)]));
      ws.on('unexpected-response', (_request, response) => (resolve([response.statusCode ?? 0, response.statusMessage ?? '']), ws.terminate()));
      ws.on('error', () => {});
    });
  }

  it('spares an honest worker sharing an address with strangers: turned away with the reason, it gets in on a later try', async () => {
    const { hub, port } = await smallHub({ authTimeoutMs: 1500, maxPendingAuthPerAddress: 2 });
    const events: WorkerEvent[] = [];
    const stop = new AbortController();
    try {
      const strangers = [silent(port, '127.0.0.1'), silent(port, '127.0.0.1')];
      await until(() => hub.connections.authenticating === 2);
      // Another address is not held up by this one's strangers.
      expect(await Promise.race([silent(port, '127.0.0.9'), new Promise((resolve) => setTimeout(() => resolve('admitted'), 300))])).toBe('admitted');
      const joined = hub.waitForWorker();
      void runWorker({ connect: `ws://127.0.0.1:${port}`, signal: stop.signal, onEvent: (e) => events.push(e) }).catch(() => {});
      await joined;
      expect(events.find((e) => e.type === 'disconnected')).toMatchObject({
        reason: 'the coordinator turned this connection away (HTTP 429): too many connections authenticating from 127.0.0.1 (2): try again later',
      });
      expect(await Promise.all(strangers)).toEqual([
        [1008, 'did not authenticate within 1500 ms'],
        [1008, 'did not authenticate within 1500 ms'],
      ]);
    } finally {
      stop.abort();
      await hub.close();
    }
  }, 20_000);

  /** A raw TCP connection that sends `bytes` and then nothing; resolves with how long until the hub closed it (or `ms`). */
  function slowloris(port: number, bytes: string, ms: number): Promise<number | 'still open'> {
    return new Promise((resolve) => {
      const started = performance.now();
      const socket: Socket = connect(port, '127.0.0.1', () => socket.write(bytes));
      const timer = setTimeout(() => (socket.destroy(), resolve('still open')), ms);
      socket.on('close', () => (clearTimeout(timer), resolve(performance.now() - started)));
      socket.on('error', () => {});
    });
  }

  it('closes a connection whose upgrade request is not complete within the deadline (slowloris)', async () => {
    const { hub, port } = await smallHub({ authTimeoutMs: 500 });
    try {
      const [half, nothing] = await Promise.all([
        slowloris(port, 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n', 5000),
        slowloris(port, '', 5000),
      ]);
      // Node's own limit would keep them a minute (headersTimeout).
      expect(half).toBeGreaterThanOrEqual(450);
      expect(half).toBeLessThan(3000);
      expect(nothing).toBeLessThan(3000);
    } finally {
      await hub.close();
    }
  }, 20_000);

  it('answers a refused connection with HTTP 429 before any upgrade', async () => {
    const { hub, port } = await smallHub({ authTimeoutMs: 5000, maxPendingAuth: 1 });
    try {
      const held = silent(port, '127.0.0.1');
      await until(() => hub.connections.authenticating === 1);
      const key = Buffer.from('0123456789abcdef').toString('base64');
      const answer = await new Promise<string>((resolve) => {
        let text = '';
        const socket = connect(port, '127.0.0.1', () =>
          socket.write(`GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`),
        );
        socket.on('data', (d) => (text += d));
        socket.on('close', () => resolve(text));
        socket.on('error', () => {});
      });
      expect(answer.split('\r\n')[0]).toBe('HTTP/1.1 429 too many connections authenticating (1): try again later');
      expect(answer).not.toMatch(/Sec-WebSocket-Accept/i);
      void held;
    } finally {
      await hub.close();
    }
  }, 20_000);
});
