/**
 * The dashboard in a real browser: Debian's chromium driven by playwright-core (which downloads nothing),
 * during a run with two remote workers (--plan replicated, so neither is set on standby), one slowed on
 * purpose. The page must show the loss curve growing, both workers with their shares, and the slowed one
 * marked slowest; then the finished run's folder served the same way. A screenshot goes to test-output/dashboard.png for a person to look at
 * (DTRAIN_UPDATE_SCREENSHOT=1 also copies it to docs/img/dashboard.png, the README's).
 * Needs the compiled build (the dashboard's thread): npm test's pretest makes it.
 */
import { copyFileSync, existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runWorker } from '../src/cluster/remote/client.js';
import { serveRunFolder, train, type TrainEvent } from '../src/index.js';

const CHROMIUM = '/usr/bin/chromium';
const ROOT = new URL('..', import.meta.url).pathname;
const SCREENSHOT = join(ROOT, 'test-output', 'dashboard.png');
const available = existsSync(CHROMIUM);
if (!available) console.warn(`SKIP dashboard browser test: no ${CHROMIUM} (apt-get install chromium)`);

describe.skipIf(!available)('the dashboard in chromium', () => {
  it('shows the loss curve growing, both workers with shares, and the slowed one as slowest', async () => {
    const { chromium } = await import('playwright-core');
    const workers = new AbortController();
    const run = new AbortController();
    let dashboardUrl = '';
    let ready!: () => void;
    const listening = new Promise<void>((resolve) => (ready = resolve));
    let steps = 0;
    const outDir = mkdtempSync(join(tmpdir(), 'dtrain-dashboard-browser-'));
    const onEvent = (e: TrainEvent) => {
      if (e.type === 'dashboard') dashboardUrl = e.url;
      if (e.type === 'step') steps = e.step;
    };
    const training = train(
      {
        threads: 0,
        plan: 'replicated',
        listen: '127.0.0.1:0',
        dashboard: '127.0.0.1:0',
        minWorkers: 2,
        hidden: [64, 32],
        trainSamples: 1024,
        testSamples: 256,
        epochs: 200,
        logEvery: 100_000,
        heartbeatMs: 2000,
        out: outDir,
      },
      {
        onEvent,
        signal: run.signal,
        onListening: ({ port }) => {
          const connect = `ws://127.0.0.1:${port}`;
          void runWorker({ connect, name: 'quick', signal: workers.signal });
          // A slower machine: 1 ms more for every row it computes.
          void runWorker({ connect, name: 'slowed', rowDelayMs: 1, signal: workers.signal });
          ready();
        },
      },
    );
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'] });
    try {
      await listening;
      const page = await browser.newPage({ viewport: { width: 1400, height: 1250 } });
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(e.message));
      await page.goto(dashboardUrl);
      const points = async () => Number((await page.getAttribute('#loss-chart', 'data-points')) ?? 0);
      await page.waitForFunction(() => Number(document.querySelector('#loss-chart')?.getAttribute('data-points') ?? 0) >= 5, undefined, { timeout: 20_000 });
      const early = await points();
      // Both workers in the table, with shares; the slowed one marked slowest.
      await page.waitForSelector('#participants tr[data-id="quick"]', { timeout: 15_000 });
      await page.waitForSelector('#participants tr[data-id="slowed"].slowest', { timeout: 15_000 });
      await page.waitForFunction(() => Number(document.querySelector('#loss-chart')?.getAttribute('data-points') ?? 0) >= 80, undefined, { timeout: 20_000 });
      const shares = await page.$$eval('#participants tr[data-id] .share', (cells) =>
        Object.fromEntries(cells.map((c) => [c.closest('tr')!.getAttribute('data-id'), Number(c.getAttribute('data-share'))])),
      );
      expect(Object.keys(shares).sort()).toEqual(['quick', 'slowed']);
      expect(shares.quick).toBeGreaterThan(0);
      expect(shares.slowed).toBeGreaterThan(0);
      expect(shares.quick).toBeGreaterThan(shares.slowed);
      expect(shares.quick + shares.slowed).toBeCloseTo(1, 6);
      expect(await page.$$('#participants tr.slowest')).toHaveLength(1);
      // The curve grew while the page was open, each step once and in order.
      expect(await points()).toBeGreaterThan(early);
      // `charts` is the page script's top-level binding (a string is evaluated in the page's global scope).
      const shown = (await page.evaluate("Array.from(charts['loss-chart'].data[0])")) as number[];
      expect(shown.every((step, i) => i === 0 || step > shown[i - 1])).toBe(true);
      expect(await page.textContent('#status')).toBe('live');
      expect(await page.textContent('#identity')).toContain('784→64→32→10');
      expect(await page.textContent('#plan-now')).toBe('in force: replicated');
      mkdirSync(join(ROOT, 'test-output'), { recursive: true });
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
      if (process.env.DTRAIN_UPDATE_SCREENSHOT) copyFileSync(SCREENSHOT, join(ROOT, 'docs', 'img', 'dashboard.png'));
      console.log(`dashboard screenshot at step ${steps}: ${SCREENSHOT}`);
      expect(errors).toEqual([]);
      // The finished run's folder, as dtrain plot --serve shows it: the same page, from metrics.jsonl and summary.json.
      run.abort();
      const summary = await training;
      workers.abort();
      const served = await serveRunFolder(outDir, { host: '127.0.0.1', port: 0 });
      try {
        const finished = await browser.newPage({ viewport: { width: 1400, height: 1250 } });
        finished.on('pageerror', (e) => errors.push(e.message));
        await finished.goto(served.url);
        await finished.waitForSelector('#participants tr[data-id="slowed"]', { timeout: 10_000 });
        expect(await finished.textContent('#status')).toBe('finished run');
        expect(await finished.textContent('#identity')).toContain(summary.paramsSha256);
        expect(Number(await finished.getAttribute('#loss-chart', 'data-points'))).toBe(summary.steps);
        expect(errors).toEqual([]);
      } finally {
        await served.close();
      }
    } finally {
      await browser.close();
      run.abort();
      await training.catch(() => {});
      workers.abort();
    }
  }, 60_000);
});
