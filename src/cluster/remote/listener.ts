/**
 * The hub's listening socket: an http server (https when given a certificate and key) with ws's
 * WebSocketServer on it, and how both close. Kept apart from the hub because none of it depends on who
 * connects: the hub is handed each new connection with the TCP socket under it, and an error thrown while
 * it takes one is contained here (an uncaught throw inside ws ends the coordinator's process).
 */
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { WebSocketServer, type ServerOptions, type WebSocket } from 'ws';

export interface ListenOptions {
  host: string;
  port: number;
  tlsCert?: string;
  tlsKey?: string;
}

/** What the listener tells its owner. */
export interface ListenerEvents {
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
    const serverOptions: ServerOptions & { closeTimeout: number } = { server: this.server, maxPayload, closeTimeout: CLOSE_GRACE_MS };
    this.wss = new WebSocketServer(serverOptions);
    this.wss.on('connection', (ws, req) => {
      try {
        events.connection(ws, req.socket);
      } catch (e) {
        ws.terminate();
        events.failed(String(req.socket.remoteAddress), `internal error on connection: ${(e as Error).message}`);
      }
    });
    // An error of the listening socket after listen() (listen() itself rejects on one before): reported, never thrown.
    this.wss.on('error', (e) => events.failed('server', `server error: ${e.message}`));
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  async listen(): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.options.port, this.options.host, () => resolve());
    });
    return this.server.address() as AddressInfo;
  }

  /** Stops accepting, then closes the server once its connections are gone (cut after SERVER_CLOSE_MS). */
  async close(): Promise<void> {
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
