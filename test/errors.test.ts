import { describe, expect, it } from 'vitest';
import * as errors from '../src/errors.js';

// Every user-facing message, pinned: a change of wording is a deliberate change of this table.
const cases: [string, Error, string, string?][] = [
  ['invalidOption', errors.invalidOption('threads', 'a non-negative integer', '-1'), 'option "threads" must be a non-negative integer, got "-1"'],
  ['unknownOption', errors.unknownOption('thread', ['threads', 'epochs']), 'unknown option "thread" (known options: threads, epochs)'],
  ['incompatibleOptions microBatch', errors.incompatibleOptions('microBatch', { microBatch: 128, batchSize: 64 }), 'option "microBatch" (128) must not exceed "batchSize" (64)'],
  [
    'tokenTooShort',
    errors.tokenTooShort(11),
    'option "token" must be at least 16 bytes (128 bits), got 11 bytes: generate one with `openssl rand -base64 24` and give it with --token or DTRAIN_TOKEN',
  ],
  ['workerNeedsConnect', errors.workerNeedsConnect(), 'dtrain worker needs --connect ws://HOST:PORT (the coordinator started with --listen)'],
  ['unknownConfigKey', errors.unknownConfigKey('c.json', 'epoch', ['epochs']), 'c.json: unknown key "epoch" (known keys: epochs)'],
  ['invalidConfigValue', errors.invalidConfigValue('c.json', 'lr', 'a positive number', 'fast'), 'c.json: key "lr" must be a positive number, got "fast"'],
  ['configUnreadable', errors.configUnreadable('c.json', 'Unexpected end of JSON input'), 'c.json: cannot read the configuration: Unexpected end of JSON input', 'ERR_CONFIG'],
  ['idxInvalid', errors.idxInvalid('f', 'unknown element type 0x07'), 'f: not a valid IDX file: unknown element type 0x07', 'ERR_IDX'],
  ['datasetMismatch', errors.datasetMismatch('d', 'x has 3 images but y has 4 labels'), 'd: x has 3 images but y has 4 labels', 'ERR_DATASET'],
  ['datasetMissing', errors.datasetMissing('d', 'train-images-idx3-ubyte'), 'd: missing train-images-idx3-ubyte (or train-images-idx3-ubyte.gz)', 'ERR_DATASET'],
  ['engineUnavailable', errors.engineUnavailable('tfjs', 'no backend'), 'engine "tfjs" is not available: no backend', 'ERR_ENGINE'],
  [
    'webGpuUnavailable loader',
    errors.webGpuUnavailable('loader', "Couldn't load Vulkan: libvulkan.so.1: cannot open shared object file"),
    '--device webgpu: no Vulkan loader (Couldn\'t load Vulkan: libvulkan.so.1: cannot open shared object file); install libvulkan1 (Debian, Ubuntu) and a Vulkan driver, check with vulkaninfo --summary, or for a software device run eval "$(scripts/software-gpu.sh)" and give --allow-software-gpu',
    'ERR_DEVICE',
  ],
  [
    'webGpuUnavailable driver',
    errors.webGpuUnavailable('driver', 'vkCreateInstance: Found no drivers!'),
    '--device webgpu: a Vulkan loader but no Vulkan driver (vkCreateInstance: Found no drivers!); install the GPU vendor\'s Vulkan driver, check with vulkaninfo --summary, or for a software device run eval "$(scripts/software-gpu.sh)" and give --allow-software-gpu',
    'ERR_DEVICE',
  ],
  [
    'softwareGpuRefused',
    errors.softwareGpuRefused('mesa, software, llvmpipe'),
    '--device webgpu: the only WebGPU adapter is a software one (mesa, software, llvmpipe), slower than --device cpu; give --allow-software-gpu to use it anyway',
    'ERR_DEVICE',
  ],
  [
    'mixedDevices',
    errors.mixedDevices('onnx/cpu', 'onnx/webgpu'),
    'mixed devices: the run computes on onnx/cpu, the worker on onnx/webgpu, whose results differ in the last bits; give the coordinator --allow-mixed-devices to accept it (recorded in summary.json)',
    'ERR_MIXED_DEVICES',
  ],
  ['deviceStateLost', errors.deviceStateLost(40, 30, 'device lost'), "the device's state of step 40 could not be read back (device lost); the run ends on the state of step 30, the last this process held", 'ERR_DEVICE'],
  ['nonFiniteGradient', errors.nonFiniteGradient(12, 'layer 0 (W0, b0)'), 'step 12: non-finite gradient in layer 0 (W0, b0); training stopped with the last good parameters kept', 'ERR_NONFINITE'],
  ['nonFiniteLoss', errors.nonFiniteLoss(3, 'micro-shard 1'), 'step 3: non-finite loss in micro-shard 1; training stopped with the last good parameters kept', 'ERR_NONFINITE'],
  ['checkpointInvalid', errors.checkpointInvalid('a.ckpt', 'checksum mismatch (truncated or corrupt)'), 'a.ckpt: checksum mismatch (truncated or corrupt)', 'ERR_CHECKPOINT'],
  ['checkpointMismatch', errors.checkpointMismatch('a.ckpt', 'model', '4→2 (relu)', '5→2 (relu)'), 'a.ckpt: the checkpoint is for model 4→2 (relu), this run has 5→2 (relu)', 'ERR_CHECKPOINT'],
  ['incompatibleOptions ca', errors.incompatibleOptions('ca'), 'option "ca" is the CA that signed rank 0\'s certificate: give --tls-cert and --tls-key too, or leave --ca out'],
  ['incompatibleOptions minWorkers', errors.incompatibleOptions('minWorkers'), 'option "minWorkers" waits for remote workers, which need "listen": give --listen HOST:PORT or --min-workers 0'],
  ['incompatibleOptions plan', errors.incompatibleOptions('plan', { plan: 'sharded', threads: 2 }), 'option "plan" (sharded) says how remote replicas share a step, which they do only with "threads" 0 (got 2): give --threads 0, --plan server (whose threads run only the weight pass) or leave --plan out'],
  ['incompatibleOptions server', errors.incompatibleOptions('server'), 'option "plan" server serves the parameters to remote workers, which need "listen": give --listen HOST:PORT or leave --plan out'],
  ['workersMissing', errors.workersMissing(3, 1, 5000), '2 of 3 remote workers missing after 5000 ms (--min-workers 3): start them with dtrain worker --connect, or raise --join-timeout-ms', 'ERR_WORKERS_MISSING'],
  ['outHoldsCheckpoints', errors.outHoldsCheckpoints('runs/a', 40), 'runs/a holds the checkpoints of an earlier run (newest at step 40): continue it with --resume runs/a, or give another --out', 'ERR_CHECKPOINT'],
  ['stoppedWaiting', errors.stoppedWaiting(5), 'step 5: stopped while waiting for remote workers; the last good state is kept', 'ERR_STOPPED'],
  ['resumeConflict', errors.resumeConflict('lr', 0.01, 0.001), '--resume: option "lr" (0.01) differs from the checkpoint\'s (0.001); a resumed run keeps the checkpoint\'s model, data and optimizer options'],
  [
    'workersMissingRanks',
    errors.workersMissingRanks(3, 1, 5000, [2, 3]),
    '2 of 3 remote workers missing after 5000 ms (--min-workers 3): ranks 2, 3 have not joined; see their output, or raise --join-timeout-ms',
    'ERR_WORKERS_MISSING',
  ],
  ['workersMissingRanks one', errors.workersMissingRanks(2, 1, 100, [2]), '1 of 2 remote workers missing after 100 ms (--min-workers 2): rank 2 has not joined; see their output, or raise --join-timeout-ms', 'ERR_WORKERS_MISSING'],
  [
    'launchNotFound',
    errors.launchNotFound(['RANK', 'PMI_RANK']),
    'dtrain run found no launcher in its environment (none of RANK, PMI_RANK is set): start it with mpirun, srun, torchrun or as a Kubernetes Indexed Job, or use dtrain coordinator and dtrain worker',
    'ERR_LAUNCH',
  ],
  ['launchIncomplete', errors.launchIncomplete('torchrun', 'RANK', 'WORLD_SIZE', 'the launcher sets both'), 'torchrun: RANK is set but WORLD_SIZE is not: the launcher sets both', 'ERR_LAUNCH'],
  ['launchVariableInvalid', errors.launchVariableInvalid('RANK', 'a non-negative integer', 'x'), 'environment variable RANK must be a non-negative integer, got "x"', 'ERR_LAUNCH'],
  [
    'launchNeedsToken',
    errors.launchNeedsToken('0.0.0.0:29501'),
    'dtrain run: rank 0 listens on 0.0.0.0:29501, beyond loopback, so the ranks need a shared token: set DTRAIN_TOKEN or give --token-file FILE',
    'ERR_LAUNCH',
  ],
  ['tokenFileUnreadable', errors.tokenFileUnreadable('/run/secrets/token', 'the file is empty'), '--token-file /run/secrets/token: the file is empty', 'ERR_TOKEN_FILE'],
  [
    'frameTooLarge',
    errors.frameTooLarge(1 << 20),
    "a frame from the coordinator is larger than this worker's limit of 1 MiB (--max-frame-bytes): its model's state snapshot (12 bytes a parameter) does not fit",
    'ERR_FRAME_LIMIT',
  ],
  [
    'tlsUntrusted',
    errors.tlsUntrusted('wss://10.0.0.1:7000', 'self-signed certificate', 'DEPTH_ZERO_SELF_SIGNED_CERT'),
    "wss://10.0.0.1:7000: the coordinator's TLS certificate was not accepted (self-signed certificate): give --ca FILE with the certificate of the CA that signed it (for a self-signed one, the certificate itself)",
    'ERR_TLS',
  ],
  [
    'tlsUntrusted altname',
    errors.tlsUntrusted('wss://10.0.0.1:7000', "Hostname/IP does not match certificate's altnames: IP: 10.0.0.1 is not in the cert's list: 10.0.0.2", 'ERR_TLS_CERT_ALTNAME_INVALID'),
    "wss://10.0.0.1:7000: the coordinator's TLS certificate was not accepted (Hostname/IP does not match certificate's altnames: IP: 10.0.0.1 is not in the cert's list: 10.0.0.2): connect by the name or address the certificate is for (--connect)",
    'ERR_TLS',
  ],
  ['imageInvalid', errors.imageInvalid('a.png', 'expected 28×28 pixels (784), got 30×30'), 'a.png: expected 28×28 pixels (784), got 30×30', 'ERR_IMAGE'],
  [
    'tokenTooShort dashboardToken',
    errors.tokenTooShort(5, 'dashboardToken'),
    'option "dashboardToken" must be at least 16 bytes (128 bits), got 5 bytes: generate one with `openssl rand -base64 24` and give it with --dashboard-token or DTRAIN_DASHBOARD_TOKEN',
  ],
  [
    'dashboardBeyondLoopback',
    errors.dashboardBeyondLoopback('0.0.0.0:8080', 'tls'),
    'option "dashboard" (0.0.0.0:8080) reaches beyond loopback, so it needs TLS: give --tls-cert and --tls-key, or keep it on 127.0.0.1 and look through an SSH tunnel (ssh -L PORT:127.0.0.1:PORT HOST)',
  ],
  [
    'dashboardBeyondLoopback token',
    errors.dashboardBeyondLoopback('0.0.0.0:8080', 'token'),
    'option "dashboard" (0.0.0.0:8080) reaches beyond loopback, so it needs a viewer token: give --dashboard-token or DTRAIN_DASHBOARD_TOKEN, or keep it on 127.0.0.1 and look through an SSH tunnel (ssh -L PORT:127.0.0.1:PORT HOST)',
  ],
  [
    'dashboardTokenReused',
    errors.dashboardTokenReused(),
    'option "dashboardToken" must differ from "token": a browser sends the viewer token as it is, and the workers\' token must never cross the wire',
  ],
  ['dashboardAddressInUse', errors.dashboardAddressInUse('127.0.0.1:8080'), '--dashboard 127.0.0.1:8080: the address is already in use; give another port (or 0 for any free one)', 'ERR_DASHBOARD'],
  ['runDirUnreadable', errors.runDirUnreadable('runs/x', 'no summary.json'), 'runs/x: not a run directory to show (no summary.json); give the --out directory of a run', 'ERR_RUN_DIR'],
];

// Warnings: printed, not thrown, and pinned the same way.
const warnings: [string, string, string][] = [
  ['dashboardFailed', errors.dashboardFailed('out of memory'), 'the dashboard stopped (out of memory); the run goes on without it'],
  [
    'plaintextListen',
    errors.plaintextListen('0.0.0.0:7070'),
    '--listen 0.0.0.0:7070 reaches beyond loopback without TLS: the token never crosses the wire, but rows and parameters travel in clear and anyone on the path can read or alter them; give --tls-cert and --tls-key to serve wss://',
  ],
];

describe('error messages', () => {
  it.each(cases)('%s', (_, error, message, code) => {
    expect(error.message).toBe(message);
    expect(error.message).not.toContain('\n');
    if (code) expect((error as errors.DtrainError).code).toBe(code);
    else expect(error).toBeInstanceOf(TypeError);
  });

  it.each(warnings)('warning %s', (_, warning, message) => {
    expect(warning).toBe(message);
    expect(warning).not.toContain('\n');
  });

  it('covers every factory', () => {
    const factories = Object.keys(errors).filter((k) => typeof (errors as Record<string, unknown>)[k] === 'function' && !['DtrainError', 'show'].includes(k));
    expect(factories.sort()).toEqual([...new Set([...cases, ...warnings].map(([name]) => name.split(' ')[0]))].sort());
  });
});
