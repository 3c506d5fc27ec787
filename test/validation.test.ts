/**
 * The validation tables (src/cluster/remote/validation.ts), case by case; their properties over random and
 * damaged frames: validation_fuzz.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { PROTOCOL_VERSION, ProtocolError } from '../src/cluster/remote/messages.js';
import { validateFromCoordinator, validateFromWorker } from '../src/cluster/remote/validation.js';

describe('validation tables', () => {
  const view = { welcomed: false, spec: undefined, batchSize: 0 };
  const hello = { t: 'hello', protocol: PROTOCOL_VERSION, mac: new Uint8Array(0), nonce: new Uint8Array(32), engine: 'onnx', device: 'cpu', backend: 'b', threads: 1, dataSha256: '' };

  it('takes a hello with a rank (a launched job\'s) or without one, and nothing else in its place', () => {
    expect(validateFromWorker(hello, undefined)).not.toHaveProperty('rank');
    expect(validateFromWorker({ ...hello, rank: 2 }, undefined)).toMatchObject({ t: 'hello', rank: 2 });
    for (const rank of [-1, 1.5, '1', null, 1 << 21]) {
      expect(() => validateFromWorker({ ...hello, rank }, undefined)).toThrow(`hello: field "rank" must be an integer in [0, ${1 << 20}], got ${JSON.stringify(rank)}`);
    }
  });

  it.each(['nope', 'constructor', 'toString', '__proto__', 'hasOwnProperty'])('refuses message type %j on both sides as unknown', (t) => {
    expect(() => validateFromWorker({ t }, undefined)).toThrow(`unknown message type ${JSON.stringify(t)}`);
    expect(() => validateFromCoordinator({ t }, view)).toThrow(`unknown message type ${JSON.stringify(t)}`);
  });

  it('takes nothing past the handshake from the coordinator before its welcome proved it knows the token', () => {
    expect(() => validateFromCoordinator({ t: 'check', step: 0 }, view)).toThrow(new ProtocolError('check: sent before the welcome'));
    expect(validateFromCoordinator({ t: 'check', step: 0 }, { ...view, welcomed: true })).toEqual({ t: 'check', step: 0 });
    expect(validateFromCoordinator({ t: 'error', message: 'bye' }, view)).toEqual({ t: 'error', message: 'bye' });
  });
});
