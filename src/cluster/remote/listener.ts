/**
 * The hub's listening socket: an http server (https when given a certificate and key) with ws's
 * WebSocketServer on it, and how both close. Kept apart from the hub because none of it depends on who
 * connects: the hub is handed each new connection with the TCP socket under it, and an error thrown while
 * it takes one is contained here (an uncaught throw inside ws ends the coordinator's process).
 *
 * Before a connection costs a WebSocket, two things are settled here: its opening handshake (TLS, the HTTP
 * upgrade request) must be over within handshakeTimeoutMs, else its socket is destroyed (a slowloris client
 * sending its headers a byte at a time would otherwise hold a socket for Node's minute of headersTimeout);
 * and the owner is asked whether the connection may authenticate at all (admission.ts): a refused one is
 * answered with a plain HTTP 429 whose status line says why, without the upgrade (no WebSocket, no accept key).
 */
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { WebSocketServer, type ServerOptions, type WebSocket } from 'ws';

export interface ListenOptions {
  host: string;
  port: number;
  tlsCert?: string;
  tlsKey?: string;
  /** How long a connection may take from its TCP connect to a complete HTTP upgrade request. */
  handshakeTimeoutMs: number;
}

/** What the listener tells its owner. */
export interface ListenerEvents {
  /**
   * Asked with the IP of each complete upgrade request before it is upgraded: undefined lets it in (it then
   * holds an admission slot, given back through connection or abandoned), a reason turns it away.
   */
  admit(ip: string): string | undefined;
  /** A connection let in whose upgrade did not complete (a malformed request, a hang-up): its slot is given back. */
  abandoned(ip: string): void;
  /** A new connection, with the TCP socket under it (what a stranger sends is counted on it). */
  connection(ws: WebSocket, socket: Socket): void;
  /** A connection whose handling threw (it is terminated already), or an error of the listening socket. */
  failed(peer: string, reason: string): void;
}

/**
 * How long a peer that was told to go gets to complete the closing handshake before its socket is
 * destroyed (ws waits 30 s by default: a stranger that never answers would hold its socket that long).
 */
const CLOSE_GRACE_MS = 2000;

/**
 * When the hub closes, how long workers get to finish the closing handshake (so they see RUN_FINISHED
 * and exit) before every connection left is cut: one still in its opening handshake would otherwise hold
 * the server open until it times out.
 */
const SERVER_CLOSE_MS = 1000;

export class Listener {
  private readonly server: Server;
  private readonly wss: WebSocketServer;

  /** Creates the server (reading the certificate and key, if given); nothing listens before listen(). */
  constructor(
    private readonly options: ListenOptions,
    maxPayload: number,
    events: ListenerEvents,
  ) {
    const { tlsCert, tlsKey } = options;
    this.server = tlsCert && tlsKey ? createHttpsServer({ cert: readFileSync(tlsCert), key: readFileSync(tlsKey) }) : createHttpServer();
    // closeTimeout is ws's (8.23 has it), not yet in its type definitions.
    const serverOptions: ServerOptions & { closeTimeout: number } = { noServer: true, maxPayload, closeTimeout: CLOSE_GRACE_MS };
    this.wss = new WebSocketServer(serverOptions);
    this.server.on('connection', (socket: Socket) => this.deadline(socket));
    this.server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      const ip = String(socket.remoteAddress);
      this.handshakes.get(handshakeKey(socket))?.upgraded();
      let refusal: string | undefined;
      try {
        refusal = events.admit(ip);
      } catch (e) {
        refusal = 'internal error';
        events.failed(ip, `internal error on connection: ${(e as Error).message}`);
      }
      if (refusal !== undefined) return refuse(socket, refusal);
      let connected = false;
      socket.once('close', () => connected || events.abandoned(ip));
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        connected = true;
        try {
          events.connection(ws, socket);
        } catch (e) {
          ws.terminate();
          events.failed(ip, `internal error on connection: ${(e as Error).message}`);
        }
      });
    });
    // An error of the listening socket after listen() (listen() itself rejects on one before): reported, never thrown.
    this.server.on('error', (e) => events.failed('server', `server error: ${e.message}`));
  }

  /** Connections whose opening handshake is not over yet, by remote address and port. */
  private readonly handshakes = new Map<string, { upgraded(): void }>();

  /** Destroys the connection unless its upgrade request is complete within handshakeTimeoutMs. */
  private deadline(socket: Socket): void {
    const key = handshakeKey(socket);
    const done = () => {
      clearTimeout(timer);
      if (this.handshakes.get(key) === entry) this.handshakes.delete(key);
    };
    const timer = setTimeout(() => {
      done();
      socket.destroy();
    }, this.options.handshakeTimeoutMs);
    const entry = { upgraded: done };
    this.handshakes.set(key, entry);
    socket.once('close', done);
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  async listen(): Promise<AddressInfo> {
    try {
      await this.listenOn(this.options.host);
    } catch (e) {
      // '::' (both stacks) on a host without IPv6: IPv4 alone is what there is.
      const code = (e as NodeJS.ErrnoException).code;
      if (this.options.host !== '::' || (code !== 'EAFNOSUPPORT' && code !== 'EADDRNOTAVAIL')) throw e;
      await this.listenOn('0.0.0.0');
    }
    return this.server.address() as AddressInfo;
  }

  private listenOn(host: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.options.port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
  }

  /** Stops accepting, then closes the server once its connections are gone (cut after SERVER_CLOSE_MS). */
  async close(): Promise<void> {
    for (const entry of [...this.handshakes.values()]) entry.upgraded();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    await new Promise<void>((resolve) => {
      const force = setTimeout(() => (this.server as Server & { closeAllConnections?: () => void }).closeAllConnections?.(), SERVER_CLOSE_MS);
      this.server.close(() => {
        clearTimeout(force);
        resolve();
      });
    });
  }
}

/** The key of a connection in its TCP and its TLS socket alike (the upgrade comes with the TLS one). */
function handshakeKey(socket: Socket): string {
  return `${socket.remoteAddress}|${socket.remotePort}`;
}

/**
 * Turns a connection away before the upgrade: HTTP 429 with the reason as its status text (a worker
 * prints it), and the socket ended; nothing it sent is read further.
 */
function refuse(socket: Socket, reason: string): void {
  const status = reason.replace(/[^\x20-\x7e]/g, '?').slice(0, 200);
  socket.end(`HTTP/1.1 429 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  socket.pause();
  // A client that never reads its answer does not hold the socket: it is destroyed once the answer is flushed or after a second.
  setTimeout(() => socket.destroy(), 1000).unref();
}
