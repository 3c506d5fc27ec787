/**
 * One peer link's transport: a plain TCP socket carrying codec frames (codec.ts), each preceded by its length
 * as a u32 LE. No WebSocket framing between two workers: nothing masks or re-frames megabytes a step, and
 * each frame is copied once, out of the socket's chunks into a buffer of its own (4-aligned, so that its
 * arrays are read in place). Knows bytes only: what the frames mean, and who may send them, is
 * peer_links.ts's and validation.ts's.
 */
import type { Socket } from 'node:net';

/** The length prefix's size. */
const PREFIX = 4;

export interface LinkEvents {
  /** A whole frame (a codec frame: decodeRaw reads it). */
  frame(frame: Buffer): void;
  /** The socket closed, or a frame broke the limit (`reason` says which). */
  closed(reason: string): void;
}

export class PeerLink {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** The frame being read: its length once the prefix is in. */
  private expected = -1;
  private ended = false;

  constructor(
    readonly socket: Socket,
    /** The largest frame taken: a larger prefix ends the link (a peer cannot make this process allocate more). */
    private maxFrameBytes: number,
    private readonly events: LinkEvents,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.take(chunk));
    socket.on('error', (e) => this.end(`link error: ${e.message}`));
    socket.on('close', () => this.end('link closed'));
  }

  /** The limit for what follows (a link is opened with a small one, raised once its handshake is done). */
  limit(maxFrameBytes: number): void {
    this.maxFrameBytes = maxFrameBytes;
  }

  get open(): boolean {
    return !this.ended && !this.socket.destroyed;
  }

  /** Queues a frame; false when the link is no longer open (nothing is sent). */
  send(frame: Buffer): boolean {
    if (!this.open) return false;
    const prefix = Buffer.allocUnsafe(PREFIX);
    prefix.writeUInt32LE(frame.length, 0);
    this.socket.cork();
    this.socket.write(prefix);
    this.socket.write(frame);
    this.socket.uncork();
    return true;
  }

  close(reason: string): void {
    this.socket.destroy();
    this.end(reason);
  }

  private end(reason: string): void {
    if (this.ended) return;
    this.ended = true;
    this.chunks = [];
    this.socket.destroy();
    this.events.closed(reason);
  }

  private take(chunk: Buffer): void {
    if (this.ended) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (this.expected < 0) {
        if (this.buffered < PREFIX) return;
        this.expected = this.read(PREFIX).readUInt32LE(0);
        if (this.expected > this.maxFrameBytes) return this.close(`a frame of ${this.expected} bytes is larger than the ${this.maxFrameBytes} this link takes`);
      }
      if (this.buffered < this.expected) return;
      const frame = this.read(this.expected);
      this.expected = -1;
      this.events.frame(frame);
      if (this.ended) return;
    }
  }

  /** The next `n` buffered bytes, in a buffer of their own (allocUnsafeSlow is never pooled: it starts 4-aligned). */
  private read(n: number): Buffer {
    const out = Buffer.allocUnsafeSlow(n);
    let at = 0;
    while (at < n) {
      const head = this.chunks[0];
      const take = Math.min(n - at, head.length);
      head.copy(out, at, 0, take);
      at += take;
      if (take === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(take);
    }
    this.buffered -= n;
    return out;
  }
}
