/**
 * Every user-facing error message lives here, as a named factory (piscina style), so that the wording is
 * pinned by one test and the rest of the code says what went wrong, not how to phrase it.
 * Each message is one line that names the thing and what was expected.
 */

export class DtrainError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = 'DtrainError';
  }
}

const fail = (code: string, message: string) => new DtrainError(message, code);

export function invalidOption(name: string, expected: string, got: unknown): TypeError {
  return new TypeError(`option "${name}" must be ${expected}, got ${show(got)}`);
}

export function unknownOption(key: string, known: readonly string[]): TypeError {
  return new TypeError(`unknown option "${key}" (known options: ${known.join(', ')})`);
}

export function incompatibleOptions(problem: 'microBatch' | 'threads0' | 'minWorkers' | 'tls' | 'ca' | 'token' | 'plan' | 'server', detail: Record<string, unknown> = {}): TypeError {
  switch (problem) {
    case 'microBatch':
      return new TypeError(`option "microBatch" (${detail.microBatch}) must not exceed "batchSize" (${detail.batchSize})`);
    case 'threads0':
      return new TypeError('option "threads" may be 0 only with "listen": then remote workers compute; give --listen HOST:PORT or at least 1 thread');
    case 'minWorkers':
      return new TypeError('option "minWorkers" waits for remote workers, which need "listen": give --listen HOST:PORT or --min-workers 0');
    case 'tls':
      return new TypeError('options "tlsCert" and "tlsKey" go together: give both to serve wss://, or neither');
    case 'ca':
      return new TypeError('option "ca" is the CA that signed rank 0\'s certificate: give --tls-cert and --tls-key too, or leave --ca out');
    case 'token':
      return new TypeError(`option "listen" (${detail.listen}) reaches beyond loopback, so a "token" is required: give --token or set DTRAIN_TOKEN`);
    case 'plan':
      return new TypeError(`option "plan" (${detail.plan}) says how remote replicas share a step, which they do only with "threads" 0 (got ${detail.threads}): give --threads 0, --plan server (whose threads run only the weight pass) or leave --plan out`);
    case 'server':
      return new TypeError('option "plan" server serves the parameters to remote workers, which need "listen": give --listen HOST:PORT or leave --plan out');
  }
}

/** The shortest token accepted, in UTF-8 bytes: 128 bits, as much as a random 22-character base64 string holds. */
export const MIN_TOKEN_BYTES = 16;

/** The token's length only, never the token: error messages end up in logs. */
export function tokenTooShort(bytes: number, option = 'token'): TypeError {
  const given = option === 'token' ? '--token or DTRAIN_TOKEN' : '--dashboard-token or DTRAIN_DASHBOARD_TOKEN';
  return new TypeError(
    `option "${option}" must be at least ${MIN_TOKEN_BYTES} bytes (128 bits), got ${bytes} bytes: generate one with \`openssl rand -base64 24\` and give it with ${given}`,
  );
}

/** A dashboard beyond loopback lacks TLS or its viewer token; the simple way to look from afar is a tunnel. */
export function dashboardBeyondLoopback(address: string, missing: 'tls' | 'token'): TypeError {
  const need = missing === 'tls' ? 'TLS: give --tls-cert and --tls-key' : 'a viewer token: give --dashboard-token or DTRAIN_DASHBOARD_TOKEN';
  return new TypeError(`option "dashboard" (${address}) reaches beyond loopback, so it needs ${need}, or keep it on 127.0.0.1 and look through an SSH tunnel (ssh -L PORT:127.0.0.1:PORT HOST)`);
}

export function dashboardTokenReused(): TypeError {
  return new TypeError('option "dashboardToken" must differ from "token": a browser sends the viewer token as it is, and the workers\' token must never cross the wire');
}

export function dashboardAddressInUse(address: string): DtrainError {
  return fail('ERR_DASHBOARD', `--dashboard ${address}: the address is already in use; give another port (or 0 for any free one)`);
}

/** A warning: the dashboard's thread failed; the run it shows goes on. */
export function dashboardFailed(reason: string): string {
  return `the dashboard stopped (${reason}); the run goes on without it`;
}

export function runDirUnreadable(dir: string, reason: string): DtrainError {
  return fail('ERR_RUN_DIR', `${dir}: not a run directory to show (${reason}); give the --out directory of a run`);
}

/**
 * A warning, not an error: listening beyond loopback without TLS works, but the risk is the user's to
 * take knowingly. The token itself is safe (only HMAC proofs cross the wire); what travels is not.
 */
export function plaintextListen(listen: string): string {
  return `--listen ${listen} reaches beyond loopback without TLS: the token never crosses the wire, but rows and parameters travel in clear and anyone on the path can read or alter them; give --tls-cert and --tls-key to serve wss://`;
}

export function workerNeedsConnect(): TypeError {
  return new TypeError('dtrain worker needs --connect ws://HOST:PORT (the coordinator started with --listen)');
}

export function unknownConfigKey(file: string, key: string, known: readonly string[]): TypeError {
  return new TypeError(`${file}: unknown key "${key}" (known keys: ${known.join(', ')})`);
}

export function invalidConfigValue(file: string, key: string, expected: string, got: unknown): TypeError {
  return new TypeError(`${file}: key "${key}" must be ${expected}, got ${show(got)}`);
}

export function configUnreadable(file: string, reason: string): DtrainError {
  return fail('ERR_CONFIG', `${file}: cannot read the configuration: ${reason}`);
}

export function idxInvalid(file: string, problem: string): DtrainError {
  return fail('ERR_IDX', `${file}: not a valid IDX file: ${problem}`);
}

export function datasetMismatch(dir: string, problem: string): DtrainError {
  return fail('ERR_DATASET', `${dir}: ${problem}`);
}

export function datasetMissing(dir: string, stem: string): DtrainError {
  return fail('ERR_DATASET', `${dir}: missing ${stem} (or ${stem}.gz)`);
}

export function engineUnavailable(engine: string, reason: string): DtrainError {
  return fail('ERR_ENGINE', `engine "${engine}" is not available: ${reason}`);
}

/** No WebGPU adapter: what is missing (Dawn's own words in `detail`), and how to check or get one. */
export function webGpuUnavailable(missing: 'loader' | 'driver' | 'adapter', detail: string): DtrainError {
  const [what, fix] = {
    loader: ['no Vulkan loader', 'install libvulkan1 (Debian, Ubuntu) and a Vulkan driver'],
    driver: ['a Vulkan loader but no Vulkan driver', 'install the GPU vendor\'s Vulkan driver'],
    adapter: ['no WebGPU adapter', 'see that the GPU has a Vulkan driver'],
  }[missing];
  return fail(
    'ERR_DEVICE',
    `--device webgpu: ${what} (${detail}); ${fix}, check with vulkaninfo --summary, or for a software device run eval "$(scripts/software-gpu.sh)" and give --allow-software-gpu`,
  );
}

export function softwareGpuRefused(adapter: string): DtrainError {
  return fail('ERR_DEVICE', `--device webgpu: the only WebGPU adapter is a software one (${adapter}), slower than --device cpu; give --allow-software-gpu to use it anyway`);
}

/** A remote worker that computes on another engine or device than the run (their results differ in the last bits). */
export function mixedDevices(ours: string, theirs: string): DtrainError {
  return fail(
    'ERR_MIXED_DEVICES',
    `mixed devices: the run computes on ${ours}, the worker on ${theirs}, whose results differ in the last bits; give the coordinator --allow-mixed-devices to accept it (recorded in summary.json)`,
  );
}

export function nonFiniteGradient(step: number, where: string): DtrainError {
  return fail('ERR_NONFINITE', `step ${step}: non-finite gradient in ${where}; training stopped with the last good parameters kept`);
}

export function nonFiniteLoss(step: number, where: string): DtrainError {
  return fail('ERR_NONFINITE', `step ${step}: non-finite loss in ${where}; training stopped with the last good parameters kept`);
}

/** The GPU holding the state (whole steps there) failed before it gave it back: the run keeps an older one. */
export function deviceStateLost(step: number, kept: number, cause: string): DtrainError {
  return fail('ERR_DEVICE', `the device's state of step ${step} could not be read back (${cause}); the run ends on the state of step ${kept}, the last this process held`);
}

export function workersMissing(wanted: number, joined: number, waitedMs: number): DtrainError {
  return fail('ERR_WORKERS_MISSING', `${wanted - joined} of ${wanted} remote workers missing after ${waitedMs} ms (--min-workers ${wanted}): start them with dtrain worker --connect, or raise --join-timeout-ms`);
}

export function workersMissingRanks(wanted: number, joined: number, waitedMs: number, ranks: readonly number[]): DtrainError {
  const which = `rank${ranks.length === 1 ? '' : 's'} ${ranks.join(', ')} ${ranks.length === 1 ? 'has' : 'have'} not joined`;
  return fail('ERR_WORKERS_MISSING', `${wanted - joined} of ${wanted} remote workers missing after ${waitedMs} ms (--min-workers ${wanted}): ${which}; see their output, or raise --join-timeout-ms`);
}

export function launchNotFound(variables: readonly string[]): DtrainError {
  return fail(
    'ERR_LAUNCH',
    `dtrain run found no launcher in its environment (none of ${variables.join(', ')} is set): start it with mpirun, srun, torchrun or as a Kubernetes Indexed Job, or use dtrain coordinator and dtrain worker`,
  );
}

export function launchIncomplete(launcher: string, present: string, missing: string, hint: string): DtrainError {
  return fail('ERR_LAUNCH', `${launcher}: ${present} is set but ${missing} is not: ${hint}`);
}

export function launchVariableInvalid(name: string, expected: string, got: string): DtrainError {
  return fail('ERR_LAUNCH', `environment variable ${name} must be ${expected}, got ${show(got)}`);
}

export function launchNeedsToken(listen: string): DtrainError {
  return fail('ERR_LAUNCH', `dtrain run: rank 0 listens on ${listen}, beyond loopback, so the ranks need a shared token: set DTRAIN_TOKEN or give --token-file FILE`);
}

export function tokenFileUnreadable(file: string, reason: string): DtrainError {
  return fail('ERR_TOKEN_FILE', `--token-file ${file}: ${reason}`);
}

export function stoppedWaiting(step: number): DtrainError {
  return fail('ERR_STOPPED', `step ${step}: stopped while waiting for remote workers; the last good state is kept`);
}

export function checkpointInvalid(file: string, problem: string): DtrainError {
  return fail('ERR_CHECKPOINT', `${file}: ${problem}`);
}

export function outHoldsCheckpoints(dir: string, step: number): DtrainError {
  return fail('ERR_CHECKPOINT', `${dir} holds the checkpoints of an earlier run (newest at step ${step}): continue it with --resume ${dir}, or give another --out`);
}

export function checkpointMismatch(file: string, what: string, theirs: string, ours: string): DtrainError {
  return fail('ERR_CHECKPOINT', `${file}: the checkpoint is for ${what} ${theirs}, this run has ${ours}`);
}

export function resumeConflict(key: string, given: unknown, saved: unknown): TypeError {
  return new TypeError(
    `--resume: option "${key}" (${show(given)}) differs from the checkpoint's (${show(saved)}); a resumed run keeps the checkpoint's model, data and optimizer options`,
  );
}

export function imageInvalid(file: string, problem: string): DtrainError {
  return fail('ERR_IMAGE', `${file}: ${problem}`);
}

/** A worker given --max-frame-bytes below what the run it joins sends (its welcome says, or a frame shows). */
export function frameTooLarge(limitBytes: number): DtrainError {
  const mib = Math.round(limitBytes / 2 ** 20);
  return fail('ERR_FRAME_LIMIT', `a frame from the coordinator is larger than this worker's limit of ${mib} MiB (--max-frame-bytes): its model's state snapshot (12 bytes a parameter) does not fit`);
}

/**
 * A worker that could not verify the coordinator's TLS certificate: retrying cannot help, so it stops with
 * the reason and the option that fixes it (`code`: Node's, e.g. DEPTH_ZERO_SELF_SIGNED_CERT).
 */
export function tlsUntrusted(url: string, reason: string, code: string): DtrainError {
  const fix =
    code === 'ERR_TLS_CERT_ALTNAME_INVALID'
      ? 'connect by the name or address the certificate is for (--connect)'
      : code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID'
        ? 'the coordinator needs a certificate valid now (--tls-cert)'
        : 'give --ca FILE with the certificate of the CA that signed it (for a self-signed one, the certificate itself)';
  return fail('ERR_TLS', `${url}: the coordinator's TLS certificate was not accepted (${reason}): ${fix}`);
}

export function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(show).join(', ')}]`;
  if (value === null || typeof value !== 'object') return String(value);
  try {
    return JSON.stringify(value);
  } catch {
    return Object.prototype.toString.call(value);
  }
}
