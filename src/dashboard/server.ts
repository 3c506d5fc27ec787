/**
 * The dashboard's HTTP(S) server: the page and its charting library (uPlot, from node_modules: no build
 * step, no CDN), the run's snapshot, and its updates as server-sent events, a few times a second. Read-only:
 * it answers GET and HEAD, and nothing it serves reaches into the run; every request passes the viewer gate
 * first. Its own server, apart from the workers' listener, so that the workers' port never serves a browser.
 */
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { joinHostPort, isLoopback } from '../config.js';
import { dashboardAddressInUse } from '../errors.js';
import { packageRoot } from '../paths.js';
import { DEFAULT_PAGE_LIMITS, PageStreams, sseMessage, type PageStreamLimits } from './page_streams.js';
import type { RunStore } from './run_store.js';
import { ViewerGate } from './viewer_auth.js';

export interface DashboardServerOptions {
  host: string;
  port: number;
  /** PEM files: serve https. */
  tls?: { cert: string; key: string };
  /** The viewer token (required beyond loopback; config.ts checks it). */
  token?: string;
  limits?: PageStreamLimits;
  /** How often the open pages are sent what changed, ms. */
  flushMs?: number;
}

/** The page's files and the charting library's, by URL path. */
function staticFiles(): Map<string, { file: string; type: string }> {
  const page = join(packageRoot, 'src', 'dashboard', 'page');
  const uplot = join(dirname(createRequire(import.meta.url).resolve('uplot')));
  return new Map([
    ['/', { file: join(page, 'index.html'), type: 'text/html; charset=utf-8' }],
    ['/dashboard.js', { file: join(page, 'dashboard.js'), type: 'text/javascript; charset=utf-8' }],
    ['/dashboard.css', { file: join(page, 'dashboard.css'), type: 'text/css; charset=utf-8' }],
    ['/uplot.js', { file: join(uplot, 'uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' }],
    ['/uplot.css', { file: join(uplot, 'uPlot.min.css'), type: 'text/css; charset=utf-8' }],
  ]);
}

const SECURITY_HEADERS = {
  'Content-Security-Policy': "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'Cache-Control': 'no-store',
};

/** Seconds between comments on an idle stream: proxies keep it open, and a page gone is noticed. */
const KEEPALIVE_MS = 15_000;

export class DashboardServer {
  private readonly server: Server;
  private readonly gate: ViewerGate;
  readonly streams: PageStreams;
  private readonly files = staticFiles();
  /** The files, read once: a page's request does not touch the disk. */
  private readonly cache = new Map<string, Buffer>();
  private timers: NodeJS.Timeout[] = [];
  private url?: string;

  constructor(
    private readonly store: RunStore,
    private readonly options: DashboardServerOptions,
  ) {
    const { tls } = options;
    this.gate = new ViewerGate(options.token, isLoopback(joinHostPort(options.host, options.port)), !!tls);
    this.streams = new PageStreams(options.limits ?? DEFAULT_PAGE_LIMITS);
    const handler = (request: IncomingMessage, response: ServerResponse) => this.handle(request, response);
    this.server = tls ? createHttpsServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, handler) : createHttpServer(handler);
    // A page's stream lives as long as the run; only idle keep-alive sockets time out. Connections are few
    // (a page holds two or three), and one that sends no headers is closed soon: strangers cannot pile them up.
    this.server.requestTimeout = 0;
    this.server.headersTimeout = 10_000;
    this.server.maxConnections = 4 * (options.limits ?? DEFAULT_PAGE_LIMITS).maxPages + 16;
  }

  /** Listens; returns the URL to open. A port in use is a one-line error. */
  async start(): Promise<string> {
    const { host, port } = this.options;
    await new Promise<void>((resolve, reject) => {
      const onError = (e: NodeJS.ErrnoException) => reject(e.code === 'EADDRINUSE' ? dashboardAddressInUse(joinHostPort(host, port)) : e);
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        resolve();
      });
    });
    const address = this.server.address() as AddressInfo;
    this.url = `${this.options.tls ? 'https' : 'http'}://${joinHostPort(address.address, address.port)}/`;
    this.timers = [
      setInterval(() => this.flush(), this.options.flushMs ?? 250),
      setInterval(() => this.streams.broadcast(': keep-alive\n\n'), KEEPALIVE_MS),
    ];
    for (const timer of this.timers) timer.unref();
    return this.url;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Sends the open pages what changed since the last flush. */
  flush(): void {
    // With no page open, nothing is built: a page that opens takes a snapshot.
    if (this.streams.open === 0) return this.store.discardUpdate();
    const change = this.store.takeUpdate();
    if (!change) return;
    this.streams.broadcast(change.kind === 'reset' ? sseMessage('snapshot', change.snapshot) : sseMessage('update', change.update));
  }

  /** Sends what is left, ends the pages' streams (a page keeps what it shows) and stops listening. */
  async close(): Promise<void> {
    for (const timer of this.timers) clearInterval(timer);
    this.flush();
    this.streams.closeAll(sseMessage('closed', {}));
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(request: IncomingMessage, response: ServerResponse): void {
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) response.setHeader(name, value);
    const verdict = this.gate.check(request);
    if (!verdict.allowed) return this.refuse(response, verdict.status, verdict.message);
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.setHeader('Allow', 'GET, HEAD');
      return this.refuse(response, 405, 'the dashboard is read-only: GET and HEAD only');
    }
    if (verdict.exchange) {
      response.writeHead(303, { 'Set-Cookie': verdict.exchange.cookie, Location: verdict.exchange.location });
      return void response.end();
    }
    const path = new URL(request.url ?? '/', 'http://dashboard').pathname;
    if (path === '/events') {
      if (!this.streams.add(response, sseMessage('snapshot', this.store.snapshot()))) this.refuse(response, 503, 'too many dashboard pages are open; close one and reload');
      return;
    }
    // Browsers ask for it on their own; there is none.
    if (path === '/favicon.ico') return void response.writeHead(204).end();
    if (path === '/snapshot.json') return this.send(response, request, 'application/json', Buffer.from(JSON.stringify(this.store.snapshot())));
    const file = this.files.get(path);
    if (!file) return this.refuse(response, 404, `no such page: ${path}`);
    let body = this.cache.get(path);
    if (!body) this.cache.set(path, (body = readFileSync(file.file)));
    this.send(response, request, file.type, body);
  }

  private send(response: ServerResponse, request: IncomingMessage, type: string, body: Buffer): void {
    response.writeHead(200, { 'Content-Type': type, 'Content-Length': body.length });
    response.end(request.method === 'HEAD' ? undefined : body);
  }

  private refuse(response: ServerResponse, status: number, message: string): void {
    response.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' });
    response.end(`${message}\n`);
  }
}
