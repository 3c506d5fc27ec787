/**
 * A hostile network for tests and the chaos run (scripts/chaos.ts): a WebSocket proxy that damages the
 * frames it carries, the damage policies, and strangers that send junk. Shared so that the fault tests
 * (test/remote_network.test.ts) and the chaos run use the same damage.
 *
 * Damage is limited to what validation can detect: a message's head (its map header and type), its size
 * (cut short), a whole frame (dropped), or a float of its arrays made non-finite. A changed finite float
 * is a valid message with another value, which no validation can tell from the truth: integrity in
 * transit is TLS's job (README, Security).
 */
import WebSocket, { WebSocketServer } from 'ws';

/** A seeded generator (mulberry32): which frames a proxy damages, and how, is the same on every run. */
export function random(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** What a proxy does to each frame it carries: passes it on, returns a damaged copy, or drops it (undefined). */
export type Policy = (frame: Buffer, toWorker: boolean) => Buffer | undefined;

/** What a proxy did to the frames it carried. */
export interface Damage {
  flipped: number;
  cut: number;
  dropped: number;
  /** Floats of a frame's arrays set to NaN or ±Infinity. */
  nonFinite: number;
}

const noDamage = (): Damage => ({ flipped: 0, cut: 0, dropped: 0, nonFinite: 0 });

/** The message type a frame names (after the u32 header length, msgpackr writes the header as a map16 with "t" first). */
const typeOf = (frame: Buffer) => frame.subarray(10, 10 + (frame[9] & 0x1f)).toString();

const NON_FINITE = [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY];

/**
 * Writes a non-finite float32 into the array bytes of a frame (past its header, 4-aligned: see codec.ts);
 * false if the frame carries no arrays.
 */
function spoilFloat(frame: Buffer, next: () => number): boolean {
  // Too short to hold the head's length: nothing to spoil (and readUInt32LE would throw).
  if (frame.length < 4) return false;
  const arraysStart = (4 + frame.readUInt32LE(0) + 3) & ~3;
  const floats = Math.floor((frame.length - arraysStart) / 4);
  if (floats <= 0) return false;
  frame.writeFloatLE(NON_FINITE[Math.floor(next() * 3)], arraysStart + 4 * Math.floor(next() * floats));
  return true;
}

/**
 * Damages `rate` of the frames going either way: flips a byte of the frame's head (its map header and
 * message type), cuts it short, drops it, or (with `nonFinite`) makes a float of its arrays NaN or ±Infinity.
 * Bytes past the head are otherwise left alone on purpose (see the top of this file).
 */
export function randomDamage(rate: number, seed: number, nonFinite = false): { policy: Policy; damage: Damage } {
  const next = random(seed);
  const damage = noDamage();
  const kinds = nonFinite ? 4 : 3;
  const policy: Policy = (frame) => {
    if (next() >= rate) return frame;
    const how = Math.floor(next() * kinds);
    if (how === 0) return void damage.dropped++;
    if (how === 1) return damage.cut++, frame.subarray(0, Math.floor(next() * frame.length));
    const copy = Buffer.from(frame);
    if (how === 3 && spoilFloat(copy, next)) return damage.nonFinite++, copy;
    damage.flipped++;
    copy[Math.floor(next() * Math.min(12, copy.length))] ^= 1 + Math.floor(next() * 255);
    return copy;
  };
  return { policy, damage };
}

/** Loses every `every`-th frame of rows the coordinator forwards to a worker (another worker's rows). */
export function loseForwardedRows(every: number): { policy: Policy; damage: Damage } {
  const damage = noDamage();
  let forwarded = 0;
  const policy: Policy = (frame, toWorker) => (toWorker && typeOf(frame) === 'rowsDone' && ++forwarded % every === 0 ? void damage.dropped++ : frame);
  return { policy, damage };
}

/** A running proxy: the URL workers connect to, and how to stop it (its connections are cut). */
export interface Proxy {
  url: string;
  close(): void;
}

/**
 * A WebSocket proxy on `host` (127.0.0.1 by default) in front of `target`, applying `policy` to every frame.
 * Pings are passed on (the worker's watchdog listens for them), and so are close codes a close frame can carry.
 */
export async function proxy(target: string, policy: Policy, host = '127.0.0.1'): Promise<Proxy> {
  const server = new WebSocketServer({ host, port: 0, maxPayload: 256 << 20 });
  await new Promise((resolve) => server.once('listening', resolve));
  server.on('connection', (client) => {
    const upstream = new WebSocket(target, { maxPayload: 256 << 20 });
    relay(client, upstream, (frame) => policy(frame, false));
    relay(upstream, client, (frame) => policy(frame, true));
    upstream.on('ping', (data) => client.readyState === client.OPEN && client.ping(data));
  });
  const close = () => {
    for (const ws of server.clients) ws.terminate();
    server.close();
  };
  return { url: `ws://${host}:${(server.address() as { port: number }).port}`, close };
}

function relay(from: WebSocket, to: WebSocket, pass: (frame: Buffer) => Buffer | undefined): void {
  const queued: Buffer[] = [];
  to.once('open', () => queued.splice(0).forEach((frame) => to.send(frame)));
  from.on('message', (data) => {
    const frame = pass(data as Buffer);
    if (!frame) return;
    if (to.readyState === to.CONNECTING) queued.push(frame);
    else if (to.readyState === to.OPEN) to.send(frame);
  });
  from.on('close', (code, reason) => {
    const sendable = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
    if (sendable && to.readyState === to.OPEN) to.close(code, reason);
    else to.terminate();
  });
  from.on('error', () => {});
}

/** Junk a stranger sends: garbage bytes, text, a hello without its fields. */
const JUNK: (string | Buffer)[] = [Buffer.from([0xc1, 0xff, 0x00]), 'hello', Buffer.from([0x81, 0xa1, 0x74, 0xa5, 0x68, 0x65, 0x6c, 0x6c, 0x6f])];

/**
 * Strangers sending junk every `everyMs` until stopped (from `localAddress`, if given, so that admission
 * control tells them from the workers); at most `limit` of them, if given. Returns the stop function.
 */
export function junkSenders(url: string, everyMs: number, localAddress?: string, limit = Infinity): () => void {
  let i = 0;
  let started = 0;
  const timer = setInterval(() => {
    if (started++ >= limit) return clearInterval(timer);
    const ws = new WebSocket(url, localAddress ? { localAddress } : {});
    ws.on('open', () => ws.send(JUNK[i++ % JUNK.length]));
    ws.on('error', () => {});
  }, everyMs);
  return () => clearInterval(timer);
}
