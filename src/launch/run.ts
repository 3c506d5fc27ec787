/**
 * `dtrain run`: the one command every rank of a launched job runs (mpirun, srun, torchrun, a Kubernetes
 * Indexed Job). The launcher's environment (environment.ts) says which rank this process is. Rank 0 is the
 * coordinator: it computes with its own threads and listens for the others. Every other rank is a remote
 * worker that connects to it, retrying while rank 0 starts. Step 0 waits for the whole world
 * (--min-workers = world size − 1, within --join-timeout-ms); after that the run is elastic like any other.
 *
 * Ranks on one host each join as a participant of their own: the remote-worker design has no way yet for
 * them to join as one participant with several threads (see docs/launchers.md, "Locality").
 */
import { readFileSync } from 'node:fs';
import { dashboardSettings, DEFAULTS, isLoopback, joinHostPort, resolveConfig, validateRunConfig, type RunConfig, type TrainConfig } from '../config.js';
import type { WorkerOptions } from '../cluster/remote/client.js';
import { incompatibleOptions, launchNeedsToken, tokenFileUnreadable } from '../errors.js';
import { COORDINATOR_VARIABLE, detectLaunch, SERVICE_VARIABLE, WORLD_SIZE_VARIABLE, type Env, type Launch } from './environment.js';

/**
 * Rank 0's port when the launcher has none of its own: torchrun's default MASTER_PORT (29500) + 1, so that
 * one firewall rule fits every launcher.
 */
export const DEFAULT_PORT = 29501;

/** What a worker rank runs: runWorker()'s options, with the dataset still to load (`data`: rank 0's, so rows travel as indices). */
export type WorkerPlan = Omit<WorkerOptions, 'maxFrameBytes' | 'dataset' | 'onEvent' | 'signal'> & { data: string };

export type LaunchPlan =
  | { role: 'coordinator'; launch: Launch; summary: string; train: Partial<TrainConfig>; expectedRanks: number[] }
  | { role: 'worker'; launch: Launch; summary: string; worker: WorkerPlan };

/** What this process is to do, from its flags and environment; throws a one-line error when it cannot say. */
export function planLaunch(flags: Partial<RunConfig>, env: Env, readToken: (file: string) => string = readTokenFile): LaunchPlan {
  const { port, host, coordinator, service, worldSize, tokenFile, tlsCert, tlsKey, ca, ...shared } = validateRunConfig(flags);
  // Checked on every rank, so that workers fail with rank 0: a worker needs the certificate (or its CA) to
  // verify rank 0, rank 0 its key too.
  if ((tlsCert === undefined) !== (tlsKey === undefined)) throw incompatibleOptions('tls');
  if (ca !== undefined && tlsCert === undefined) throw incompatibleOptions('ca');
  // Flags win over the variables they stand for, so detection reads one environment.
  const launch = detectLaunch({
    ...env,
    ...(coordinator !== undefined && { [COORDINATOR_VARIABLE]: coordinator }),
    ...(service !== undefined && { [SERVICE_VARIABLE]: service }),
    ...(worldSize !== undefined && { [WORLD_SIZE_VARIABLE]: String(worldSize) }),
  });
  const token = tokenFile !== undefined ? readToken(tokenFile) : env.DTRAIN_TOKEN || undefined;
  const listenPort = port ?? (launch.launcherPort !== undefined ? launch.launcherPort + 1 : DEFAULT_PORT);
  const loopback = isLoopback(joinHostPort(launch.coordinatorHost, 0));
  // '::' is both stacks (IPv4 arrives mapped): a launcher's rank-0 host may resolve to either; on a host
  // without IPv6 the listener falls back to 0.0.0.0 (listener.ts).
  const listenHost = host ?? (loopback ? '127.0.0.1' : '::');
  const listen = joinHostPort(listenHost, listenPort);
  // Checked on every rank, so that workers fail with rank 0 rather than wait for a rank 0 that refused to start.
  if (!token && !isLoopback(listen)) throw launchNeedsToken(listen);
  const tls = tlsCert !== undefined ? { tlsCert, tlsKey } : {};
  const train: Partial<TrainConfig> = { threads: 1, ...shared, listen, token: token ?? null, minWorkers: launch.worldSize - 1, ...tls };
  // A resumed run takes options from rank 0's checkpoint, which the other ranks cannot read: only rank 0 checks
  // them. The dashboard's are session options, not the checkpoint's: every rank checks them, to fail alike.
  if (shared.resume && train.dashboard) dashboardSettings(train);
  const config = shared.resume ? { ...DEFAULTS, ...train } : resolveConfig(train);
  const where = `rank ${launch.rank} of ${launch.worldSize}${localRank(launch)}`;
  const said = `dtrain run: ${launch.launcher} (${launch.evidence.join(', ')}): ${where}`;
  if (launch.rank === 0) {
    const others = launch.worldSize - 1;
    const expectedRanks = Array.from({ length: others }, (_, i) => i + 1);
    const summary = `${said}: the coordinator, listening on ${listen} for ${others} worker${others === 1 ? '' : 's'}`;
    return { role: 'coordinator', launch, summary, train, expectedRanks };
  }
  // Dial the launcher's rank-0 host; on one host, where rank 0 listens: the --host it was given (unless a
  // wildcard), else 127.0.0.1 ("localhost" may resolve to ::1 first, where a rank 0 on 127.0.0.1 does not listen).
  const wildcard = host === undefined || host === '0.0.0.0' || host === '::';
  const dial = !loopback ? launch.coordinatorHost : wildcard ? '127.0.0.1' : host;
  const connect = `${tlsCert !== undefined ? 'wss' : 'ws'}://${joinHostPort(dial, listenPort)}`;
  const worker: WorkerPlan = {
    connect,
    token,
    threads: config.threads,
    engine: config.engine,
    device: config.device,
    allowSoftwareGpu: config.allowSoftwareGpu,
    data: config.data ?? 'embedded',
    rank: launch.rank,
    retryForMs: config.joinTimeoutMs,
    maxRetries: 0,
    // Resumed, the run's engine and device are in rank 0's checkpoint: the worker takes them from rank 0.
    ...(shared.resume ? { engineFromCoordinator: true } : {}),
    ...(tlsCert !== undefined ? { ca: ca ?? tlsCert } : {}),
  };
  return { role: 'worker', launch, summary: `${said}: a worker of the coordinator at ${connect}`, worker };
}

function localRank(launch: Launch): string {
  if (launch.localRank === undefined) return '';
  return `, local rank ${launch.localRank}${launch.localWorldSize === undefined ? '' : ` of ${launch.localWorldSize}`}`;
}

/** The token in a file (a mounted Secret, or one written with echo): trailing whitespace is not part of it. */
export function readTokenFile(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw tokenFileUnreadable(file, (e as Error).message);
  }
  const token = text.replace(/\s+$/, '');
  if (token === '') throw tokenFileUnreadable(file, 'the file is empty');
  if (/[\r\n]/.test(token)) throw tokenFileUnreadable(file, 'expected the token alone on one line');
  return token;
}
