import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DEFAULTS,
  isLoopback,
  parseOptionValue,
  readConfigFile,
  resolveConfig,
  resolveWorkerConfig,
  splitHostPort,
  TRAIN_OPTIONS,
  WORKER_DEFAULTS,
  WORKER_OPTIONS,
} from '../src/config.js';
import { initParams, Rng, permutation } from '../src/model/init.js';
import { makeSpec, paramLayout } from '../src/model/spec.js';

const option = (key: string) => TRAIN_OPTIONS.find((o) => o.key === key)!;
const dir = mkdtempSync(join(tmpdir(), 'dtrain-config-'));
const configFile = (content: unknown) => {
  const path = join(dir, `c${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
};

describe('options', () => {
  it('has the tutorial as defaults', () => {
    expect(DEFAULTS).toMatchObject({ hidden: [512, 256, 128, 64], activation: 'sigmoid', lr: 0.001, batchSize: 64, epochs: 26, logEvery: 400, shuffle: false, engine: 'onnx' });
  });

  it.each([
    ['threads', '-1', 'option "threads" must be a non-negative integer, got "-1"'],
    ['threads', '1.5', 'option "threads" must be a non-negative integer, got "1.5"'],
    ['steps', '-1', 'option "steps" must be a non-negative integer, got "-1"'],
    ['lr', 'fast', 'option "lr" must be a positive number, got "fast"'],
    ['hidden', '512,,64', 'option "hidden" must be a list of positive integers, got "512,,64"'],
    ['activation', 'gelu', 'option "activation" must be one of sigmoid, relu, tanh, got "gelu"'],
    ['engine', 'torch', 'option "engine" must be one of onnx, tfjs, got "torch"'],
  ])('refuses --%s %s with an exact message', (key, raw, message) => {
    expect(() => parseOptionValue(option(key), raw)).toThrow(new TypeError(message));
  });

  it.each([
    ['lr', '0', 'option "lr" must be a positive number, got "0"'],
    ['lr', '-0.1', 'option "lr" must be a positive number, got "-0.1"'],
    ['lr', 'Infinity', 'option "lr" must be a positive number, got "Infinity"'],
    ['verify', '-0.1', 'option "verify" must be a number from 0 to 1, got "-0.1"'],
    ['verify', '1.5', 'option "verify" must be a number from 0 to 1, got "1.5"'],
  ])('honours a number option\'s declared bounds: --%s %s', (key, raw, message) => {
    expect(() => parseOptionValue(option(key), raw)).toThrow(new TypeError(message));
  });

  // The table's bounds, not hard-coded ones: every combination of min, an excluded min and max, each with the message it prints.
  it.each([
    [{ min: 0 }, '0', '-1', 'a non-negative number'],
    [{ min: 0, minExcluded: true }, '0.5', '0', 'a positive number'],
    [{ min: 2 }, '2', '1.9', 'a number of at least 2'],
    [{ min: 2, minExcluded: true }, '2.1', '2', 'a number above 2'],
    [{ min: 0, max: 1 }, '1', '1.01', 'a number from 0 to 1'],
    [{ min: 0, max: 1 }, '0', '-0.01', 'a number from 0 to 1'],
    [{ min: 1, minExcluded: true, max: 5 }, '5', '1', 'a number above 1 and at most 5'],
    [{ min: 1, minExcluded: true, max: 5 }, '4', '5.5', 'a number above 1 and at most 5'],
  ] as const)('a number kind %o accepts %s, refuses %s as "%s"', (bounds, good, bad, words) => {
    const spec = { key: 'x', flag: '--x <n>', description: '', kind: { type: 'number' as const, ...bounds } };
    expect(parseOptionValue(spec, good)).toBe(Number(good));
    expect(() => parseOptionValue(spec, bad)).toThrow(new TypeError(`option "x" must be ${words}, got "${bad}"`));
  });

  it('says an integer list\'s declared minimum', () => {
    const spec = (min: number) => ({ key: 'x', flag: '--x <list>', description: '', kind: { type: 'intList' as const, min } });
    expect(() => parseOptionValue(spec(1), '2,0')).toThrow(new TypeError('option "x" must be a list of positive integers, got "2,0"'));
    expect(parseOptionValue(spec(0), '2,0')).toEqual([2, 0]);
    expect(() => parseOptionValue(spec(3), '4,2')).toThrow(new TypeError('option "x" must be a list of integers of at least 3, got "4,2"'));
  });

  it('parses flags into typed values', () => {
    expect(parseOptionValue(option('hidden'), '32, 16')).toEqual([32, 16]);
    expect(parseOptionValue(option('lr'), '0.01')).toBe(0.01);
  });

  it('spreads defaults under user options and validates them', () => {
    expect(resolveConfig({ threads: 3 }).threads).toBe(3);
    expect(resolveConfig({}).microBatch).toBe(16);
    expect(() => resolveConfig({ threds: 3 } as never)).toThrow(/^unknown option "threds" \(known options: data, /);
    expect(() => resolveConfig({ epochs: 0 })).toThrow(new TypeError('option "epochs" must be an integer of at least 1, got 0'));
    expect(() => resolveConfig({ microBatch: 128 })).toThrow(new TypeError('option "microBatch" (128) must not exceed "batchSize" (64)'));
  });

  it('refuses invalid combinations with a sentence a user can act on', () => {
    expect(() => resolveConfig({ threads: 0 })).toThrow(
      new TypeError('option "threads" may be 0 only with "listen": then remote workers compute; give --listen HOST:PORT or at least 1 thread'),
    );
    expect(() => resolveConfig({ listen: '0.0.0.0:7000' })).toThrow(
      new TypeError('option "listen" (0.0.0.0:7000) reaches beyond loopback, so a "token" is required: give --token or set DTRAIN_TOKEN'),
    );
    expect(() => resolveConfig({ listen: '127.0.0.1:7000', threads: 0 })).not.toThrow();
    expect(() => resolveConfig({ listen: '127.0.0.1:7000', threads: 2, plan: 'sharded' })).toThrow(/^option "plan" \(sharded\) says how remote replicas share a step/);
    expect(() => resolveConfig({ listen: '127.0.0.1:7000', threads: 0, plan: 'sharded' })).not.toThrow();
    // The server plan's threads run the weight pass: any number, but it serves remote workers.
    expect(() => resolveConfig({ listen: '127.0.0.1:7000', threads: 2, plan: 'server' })).not.toThrow();
    expect(() => resolveConfig({ threads: 2, plan: 'server' })).toThrow(/^option "plan" server serves the parameters to remote workers, which need "listen"/);
    expect(() => resolveConfig({ listen: '[::1]:7000' })).not.toThrow();
    expect(() => resolveConfig({ listen: '10.0.0.5:7000', token: 's3cret-s3cret-s3' })).not.toThrow();
    expect(() => resolveConfig({ tlsCert: 'cert.pem' })).toThrow(new TypeError('options "tlsCert" and "tlsKey" go together: give both to serve wss://, or neither'));
  });

  it('refuses a token shorter than 16 bytes of UTF-8 on either side, wherever it listens, without quoting it', () => {
    const short = new TypeError(
      'option "token" must be at least 16 bytes (128 bits), got 15 bytes: generate one with `openssl rand -base64 24` and give it with --token or DTRAIN_TOKEN',
    );
    expect(() => resolveConfig({ listen: '127.0.0.1:7000', token: 'x'.repeat(15) })).toThrow(short);
    expect(() => resolveConfig({ listen: '0.0.0.0:7000', token: 'x'.repeat(15) })).toThrow(short);
    expect(() => resolveWorkerConfig({ connect: 'ws://h:1', token: 'x'.repeat(15) })).toThrow(short);
    // Bytes, not characters: 8 two-byte characters are 16 bytes.
    expect(() => resolveConfig({ listen: '0.0.0.0:7000', token: 'é'.repeat(8) })).not.toThrow();
    expect(() => resolveWorkerConfig({ connect: 'ws://h:1', token: 'x'.repeat(16) })).not.toThrow();
  });
});

describe('option tables', () => {
  it('have a row for every TrainConfig key, in the order of its defaults', () => {
    // The compiler demands the rows; this catches a table built some other way (a cast, a spread).
    expect(TRAIN_OPTIONS.map((o) => o.key)).toEqual(Object.keys(DEFAULTS));
    expect(new Set(TRAIN_OPTIONS.map((o) => o.flag.split(' ')[0])).size).toBe(TRAIN_OPTIONS.length);
  });

  it('have a row for every WorkerConfig key with a default', () => {
    const keys = WORKER_OPTIONS.map((o) => o.key);
    expect(keys).toEqual(['connect', 'name', 'token', 'ca', 'threads', 'engine', 'device', 'allowSoftwareGpu', 'data', 'maxRetries', 'maxFrameBytes', 'peerListen', 'advertise']);
    for (const key of Object.keys(WORKER_DEFAULTS)) expect(keys).toContain(key);
  });
});

describe('worker options', () => {
  it('spread the defaults under what was given', () => {
    expect(resolveWorkerConfig({ connect: 'ws://10.0.0.5:7000' })).toEqual({
      connect: 'ws://10.0.0.5:7000',
      threads: 1,
      engine: 'onnx',
      device: 'cpu',
      allowSoftwareGpu: false,
      maxRetries: 0,
    });
    expect(resolveWorkerConfig({ connect: 'wss://h:1', threads: 4, engine: 'tfjs', token: undefined, data: 'embedded' })).toEqual({
      connect: 'wss://h:1',
      threads: 4,
      engine: 'tfjs',
      device: 'cpu',
      allowSoftwareGpu: false,
      maxRetries: 0,
      data: 'embedded',
    });
  });

  it('need --connect', () => {
    expect(() => resolveWorkerConfig({ threads: 2 })).toThrow(new TypeError('dtrain worker needs --connect ws://HOST:PORT (the coordinator started with --listen)'));
  });

  it.each([
    [{ connect: 'localhost:7000' }, 'option "connect" must be a ws://HOST:PORT or wss://HOST:PORT URL, got "localhost:7000"'],
    [{ threads: 0 }, 'option "threads" must be an integer of at least 1, got 0'],
    [{ engine: 'torch' }, 'option "engine" must be one of onnx, tfjs, got "torch"'],
    [{ device: 'tpu' }, 'option "device" must be one of cpu, webgpu, cuda, gpu, got "tpu"'],
    [{ maxRetries: -1 }, 'option "maxRetries" must be a non-negative integer, got -1'],
    [{ name: 'my box' }, 'option "name" must be 1 to 64 of the characters A-Z a-z 0-9 . _ -, got "my box"'],
    [{ name: 'x'.repeat(65) }, `option "name" must be 1 to 64 of the characters A-Z a-z 0-9 . _ -, got "${'x'.repeat(65)}"`],
    [{ peerListen: '127.0.0.1:70000' }, 'option "peerListen" must be [HOST:]PORT, or off, got "127.0.0.1:70000"'],
    [{ advertise: 'node3:99999' }, 'option "advertise" must be HOST or HOST:PORT, got "node3:99999"'],
    [{ threds: 2 }, 'unknown option "threds" (known options: connect, name, token, ca, threads, engine, device, allowSoftwareGpu, data, maxRetries, maxFrameBytes, peerListen, advertise)'],
  ])('refuse %j with one line naming the option and what it takes', (given, message) => {
    const run = () => resolveWorkerConfig({ connect: 'ws://127.0.0.1:7000', ...given } as never);
    expect(run).toThrow(new TypeError(message));
  });

  it('parse their flags with the same messages', () => {
    const threads = WORKER_OPTIONS.find((o) => o.key === 'threads')!;
    expect(() => parseOptionValue(threads, '0')).toThrow(new TypeError('option "threads" must be an integer of at least 1, got "0"'));
  });
});

describe('config file', () => {
  it('reads known keys', () => {
    expect(readConfigFile(configFile({ threads: 2, hidden: [8], $comment: 'x' }))).toEqual({ threads: 2, hidden: [8] });
  });

  it('names an unknown key and the keys it knows', () => {
    const path = configFile({ thread: 2 });
    expect(() => readConfigFile(path)).toThrow(new RegExp(`^${path}: unknown key "thread" \\(known keys: data, trainSamples, `));
  });

  it('names an ill-typed key with what was expected', () => {
    const path = configFile({ threads: '2' });
    expect(() => readConfigFile(path)).toThrow(new TypeError(`${path}: key "threads" must be a non-negative integer, got "2"`));
  });

  it('refuses a file that is not a JSON object', () => {
    const path = configFile('[1, 2');
    expect(() => readConfigFile(path)).toThrow(new RegExp(`^${path}: cannot read the configuration: `));
    const arrayPath = configFile([1]);
    expect(() => readConfigFile(arrayPath)).toThrow(`${arrayPath}: cannot read the configuration: expected a JSON object of option keys`);
  });

  it('accepts the cluster.config.json shipped with the project', () => {
    const config = readConfigFile(new URL('../cluster.config.json', import.meta.url).pathname);
    expect(() => resolveConfig(config)).not.toThrow();
  });
});

describe('model', () => {
  it('lays parameters out as W then b per layer', () => {
    const layout = paramLayout(makeSpec(784, [512, 256, 128, 64], 10, 'sigmoid'));
    expect(layout.total).toBe(575050);
    expect(layout.layers[1]).toEqual({ fanIn: 512, fanOut: 256, weightOffset: 784 * 512 + 512, biasOffset: 784 * 512 + 512 + 512 * 256 });
  });

  it('refuses a bad spec', () => {
    expect(() => makeSpec(784, [0], 10, 'sigmoid')).toThrow('option "hidden" must be a comma-separated list of positive integers, got "0"');
  });

  it('initialises like nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), seeded', () => {
    const spec = makeSpec(100, [50], 10, 'relu');
    const a = initParams(spec, 0);
    expect(initParams(spec, 0)).toEqual(a);
    expect(initParams(spec, 1)).not.toEqual(a);
    for (const layer of paramLayout(spec).layers) {
      const bound = 1 / Math.sqrt(layer.fanIn);
      const values = a.subarray(layer.weightOffset, layer.biasOffset + layer.fanOut);
      const max = values.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      expect(max).toBeLessThanOrEqual(bound);
      expect(max).toBeGreaterThan(0.95 * bound);
      const mean = values.reduce((s, v) => s + v, 0) / values.length;
      expect(Math.abs(mean)).toBeLessThan(0.05 * bound);
    }
  });

  it('shuffles with a seeded permutation', () => {
    const p = permutation(1000, new Rng(5));
    expect([...p].sort((x, y) => x - y)).toEqual([...Array(1000).keys()]);
    expect(permutation(1000, new Rng(5))).toEqual(p);
    expect(permutation(1000, new Rng(6))).not.toEqual(p);
  });
});

describe('scheduling', () => {
  it('apportions work by speed, giving everyone at least one item when it can', async () => {
    const { apportion } = await import('../src/cluster/plan.js');
    expect(apportion(4, [1, 1])).toEqual([2, 2]);
    expect(apportion(4, [30, 1])).toEqual([3, 1]);
    expect(apportion(10, [3, 1])).toEqual([7, 3]);
    expect(apportion(1, [1, 5])).toEqual([0, 1]);
    expect(apportion(0, [1, 1])).toEqual([0, 0]);
  });
});

describe('listen addresses', () => {
  it('takes HOST:PORT and [IPv6]:PORT, and names a malformed one', () => {
    expect(() => resolveConfig({ listen: 'localhost' })).toThrow(new TypeError('option "listen" must be HOST:PORT, got "localhost"'));
    expect(resolveConfig({ listen: 'localhost:7070' }).listen).toBe('localhost:7070');
    expect(() => resolveConfig({ listen: '7070' })).toThrow(new TypeError('option "listen" must be HOST:PORT, got "7070"'));
    expect(() => resolveConfig({ listen: '127.0.0.1:65536' })).toThrow(new TypeError('option "listen" must be HOST:PORT, got "127.0.0.1:65536"'));
    expect(splitHostPort('[::1]:7070')).toEqual(['::1', 7070]);
  });

  it('takes --dashboard as [HOST:]PORT, a port alone on 127.0.0.1', () => {
    expect(splitHostPort(' 8080 ', 'dashboard')).toEqual(['127.0.0.1', 8080]);
    expect(splitHostPort('[::1]:0', 'dashboard')).toEqual(['::1', 0]);
    expect(() => splitHostPort('0.0.0.0:65536', 'dashboard')).toThrow(new TypeError('option "dashboard" must be [HOST:]PORT with a port from 0 to 65535, got "0.0.0.0:65536"'));
  });

  it('knows loopback by its host, whatever its case, with or without a port', () => {
    for (const address of ['127.0.0.1:7070', '127.1.2.3', 'LocalHost:8080', 'localhost', '[::1]:8080', '[::1]']) expect(isLoopback(address)).toBe(true);
    for (const address of ['0.0.0.0:7070', '[::]:7070', 'rebound.example:8080', '10.0.0.1', '128.0.0.1:80']) expect(isLoopback(address)).toBe(false);
  });
});
