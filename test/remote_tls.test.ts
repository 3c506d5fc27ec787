/** TLS: the warning when listening beyond loopback in clear, and wss:// with a certificate workers trust. */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { train } from '../src/index.js';
import { runWorker } from '../src/cluster/remote/client.js';
import { selfSignedCert } from './helpers.js';
import { BASE, out, referenceHash } from './remote_helpers.js';

const reference = referenceHash({ threads: 2 }, 'reference');

describe('TLS', () => {
  const TLS_TOKEN = 'a token of 16+ bytes';

  it('warns, once and in one line, when it listens beyond loopback without TLS', async () => {
    const warnings: string[] = [];
    await train({ ...BASE, threads: 1, steps: 1, listen: '0.0.0.0:0', token: TLS_TOKEN, out: join(out, 'plaintext') }, { onEvent: (e) => e.type === 'warning' && warnings.push(e.message) });
    expect(warnings).toEqual([expect.stringMatching(/^--listen 0\.0\.0\.0:0 reaches beyond loopback without TLS: .*rows and parameters travel in clear/)]);
  });

  it('serves wss:// that a worker trusting the certificate joins, and a worker without it cannot', async () => {
    const { cert, key } = selfSignedCert('dtrain-tls-');
    const abort = new AbortController();
    const untrusted: string[] = [];
    const summary = await train(
      { ...BASE, threads: 0, listen: '127.0.0.1:0', tlsCert: cert, tlsKey: key, token: TLS_TOKEN, out: join(out, 'tls') },
      {
        onListening: ({ port }) => {
          const url = `wss://127.0.0.1:${port}`;
          // Its run ends rejected once its retries are spent, whenever that is: what it met is checked in `untrusted`.
          void runWorker({ connect: url, token: TLS_TOKEN, maxRetries: 1, onEvent: (e) => e.type === 'error' && untrusted.push(e.message) }).catch(() => {});
          void runWorker({ connect: url, token: TLS_TOKEN, ca: cert, signal: abort.signal });
        },
      },
    );
    abort.abort();
    expect(summary.paramsSha256).toBe(await reference());
    expect(untrusted.join('\n')).toMatch(/self-signed certificate/);
  });
});
