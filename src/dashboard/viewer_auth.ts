/**
 * Who may read the dashboard. On loopback: anyone on this machine, but only through a loopback Host name (a
 * web page elsewhere cannot point its own host name at 127.0.0.1 and read the run: DNS rebinding). With a
 * viewer token (always beyond loopback): a request proves it with `Authorization: Bearer`, the cookie the
 * page's first request sets, or `?token=` in the URL opened (exchanged for that cookie at once). Anything
 * else is refused before the run is touched. The token is compared in constant time.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { isLoopback } from '../config.js';

export const VIEWER_COOKIE = 'dtrain_viewer';

export type Verdict =
  | { allowed: true; /** The URL's token was right: set the cookie and send the page to the URL without it. */ exchange?: { cookie: string; location: string } }
  | { allowed: false; status: number; message: string };

const digest = (s: string) => createHash('sha256').update(s).digest();

function cookieToken(header: string | undefined): string | undefined {
  for (const part of (header ?? '').split(';')) {
    const [name, ...value] = part.trim().split('=');
    if (name === VIEWER_COOKIE) return decodeURIComponent(value.join('='));
  }
  return undefined;
}

export class ViewerGate {
  private readonly expected?: Buffer;

  /** token: the viewer token, required when given; loopback: the server listens on loopback only; tls: it serves https. */
  constructor(
    token: string | undefined,
    private readonly loopback: boolean,
    private readonly tls: boolean,
  ) {
    this.expected = token === undefined ? undefined : digest(token);
  }

  private matches(candidate: string | undefined): boolean {
    return candidate !== undefined && this.expected !== undefined && timingSafeEqual(digest(candidate), this.expected);
  }

  check(request: IncomingMessage): Verdict {
    // The Host header names this machine only (IPv4 127/8, localhost, [::1]), with or without a port.
    if (this.loopback && !(request.headers.host && isLoopback(request.headers.host))) {
      return { allowed: false, status: 421, message: 'this dashboard answers only to a loopback host name (127.0.0.1, localhost)' };
    }
    if (!this.expected) return { allowed: true };
    const url = new URL(request.url ?? '/', 'http://dashboard');
    const bearer = /^Bearer (.+)$/.exec(request.headers.authorization ?? '')?.[1];
    if (this.matches(bearer) || this.matches(cookieToken(request.headers.cookie))) return { allowed: true };
    const inUrl = url.searchParams.get('token') ?? undefined;
    if (this.matches(inUrl)) {
      url.searchParams.delete('token');
      const cookie = `${VIEWER_COOKIE}=${encodeURIComponent(inUrl!)}; HttpOnly;${this.tls ? ' Secure;' : ''} SameSite=Strict; Path=/`;
      return { allowed: true, exchange: { cookie, location: `${url.pathname}${url.search}` } };
    }
    return { allowed: false, status: 401, message: 'this dashboard needs its viewer token: open it as https://HOST:PORT/?token=… (the --dashboard-token, not the workers\' token)' };
  }
}
