/**
 * The open pages' event streams (server-sent events), capped in number, and each dropped once it leaves
 * more than maxBufferedBytes unread when the next message is due: a page that stops reading costs the
 * coordinator at most that and one message (a snapshot at most: the store's curves are bounded), and the
 * others go on. One message is serialised once for every page.
 */
import type { ServerResponse } from 'node:http';

export interface PageStreamLimits {
  /** Pages open at once; one more is refused (503). */
  maxPages: number;
  /** Unsent bytes a page may leave behind when a message is due before it is dropped. */
  maxBufferedBytes: number;
}

export const DEFAULT_PAGE_LIMITS: PageStreamLimits = { maxPages: 16, maxBufferedBytes: 1 << 20 };

/** One server-sent event. */
export function sseMessage(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

export class PageStreams {
  private readonly pages = new Set<ServerResponse>();
  /** Pages dropped for not reading. */
  dropped = 0;

  constructor(private readonly limits: PageStreamLimits = DEFAULT_PAGE_LIMITS) {}

  get open(): number {
    return this.pages.size;
  }

  /** Bytes written to the pages and not yet sent, all pages together. */
  get bufferedBytes(): number {
    let bytes = 0;
    for (const page of this.pages) bytes += page.writableLength;
    return bytes;
  }

  /** Starts a page's stream with its first message; false (nothing written) when the cap is reached. */
  add(response: ServerResponse, first: string): boolean {
    if (this.pages.size >= this.limits.maxPages) return false;
    response.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-store', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
    this.pages.add(response);
    response.on('close', () => this.pages.delete(response));
    response.write(first);
    return true;
  }

  /** Writes a message to every page, dropping those that left too much unread. */
  broadcast(message: string): void {
    for (const page of this.pages) {
      if (page.writableLength > this.limits.maxBufferedBytes) {
        this.drop(page);
        continue;
      }
      page.write(message);
    }
  }

  private drop(page: ServerResponse): void {
    this.pages.delete(page);
    this.dropped++;
    page.destroy();
  }

  closeAll(last?: string): void {
    for (const page of this.pages) page.end(last);
    this.pages.clear();
  }
}
