/**
 * Which launcher started this process, read from the environment it was given: this process's rank, the
 * world size, where rank 0 is reached, and the local rank (for locality, see docs/launchers.md). Pure: the
 * environment comes in as a plain object, so every launcher is unit-tested without being installed.
 *
 * When several launchers' variables are present (one launcher inside another's allocation), the one that
 * started this very process wins, which is the innermost: torchrun, then Open MPI, then PMI (MPICH, Intel
 * MPI), then Slurm, then Kubernetes. mpirun or torchrun run inside an sbatch script inherit the batch
 * step's SLURM_PROCID=0 on every rank, and torchrun in a Kubernetes pod inherits JOB_COMPLETION_INDEX.
 *
 * An environment that is half there (a rank without a world size, a world without rank 0's address) is an
 * error naming the missing variable: guessing would start a run that waits for ranks that never come.
 */
import { launchIncomplete, launchNotFound, launchVariableInvalid } from '../errors.js';
import { firstHost } from './hostlist.js';

export type Env = Readonly<Record<string, string | undefined>>;

export interface Launch {
  /** Who started this process, as printed. */
  launcher: string;
  rank: number;
  worldSize: number;
  /** This process's rank among those on its host, when the launcher says. */
  localRank?: number;
  localWorldSize?: number;
  /** Where the other ranks reach rank 0: loopback when the launcher says every rank runs on this host. */
  coordinatorHost: string;
  /** A port the launcher itself listens on at rank 0 (torchrun's MASTER_PORT: its rendezvous store). */
  launcherPort?: number;
  /** The variables it was read from, NAME=value, for the one-line report. */
  evidence: string[];
}

/** Rank 0's host, given by the user (mpirun -x DTRAIN_COORDINATOR=HOST, or --coordinator): wins over any derivation. */
export const COORDINATOR_VARIABLE = 'DTRAIN_COORDINATOR';
/** Kubernetes: the headless Service that is the pods' subdomain, and the Job's completions. */
export const SERVICE_VARIABLE = 'DTRAIN_SERVICE';
export const WORLD_SIZE_VARIABLE = 'DTRAIN_WORLD_SIZE';

const LOOPBACK = '127.0.0.1';

/** The variables that say "a launcher started me", in precedence order (named when none is set). */
const TRIGGERS = ['RANK', 'WORLD_SIZE', 'OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE', 'PMI_RANK', 'PMI_SIZE', 'SLURM_PROCID', 'SLURM_JOB_ID', 'JOB_COMPLETION_INDEX'];

/** The launcher of this process; throws a one-line error when there is none or it is half there. */
export function detectLaunch(env: Env): Launch {
  const has = (...names: string[]) => names.some((n) => env[n] !== undefined && env[n] !== '');
  if (has('RANK', 'WORLD_SIZE')) return torchrun(env);
  if (has('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE')) return mpiLike(env, OPEN_MPI);
  if (has('PMI_RANK', 'PMI_SIZE')) return mpiLike(env, PMI);
  if (has('SLURM_PROCID', 'SLURM_JOB_ID')) return slurm(env);
  if (has('JOB_COMPLETION_INDEX')) return kubernetes(env);
  throw launchNotFound(TRIGGERS);
}

// ---------------------------------------------------------------- reading variables

/** A variable that must be set, or the launch is half there: `present` is what made it look like a launch. */
function required(env: Env, launcher: string, present: string, name: string, hint: string): string {
  const value = env[name];
  if (value === undefined || value === '') throw launchIncomplete(launcher, present, name, hint);
  return value;
}

function integer(name: string, value: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = /^\s*\d+\s*$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    const expected = max < Number.MAX_SAFE_INTEGER ? `an integer from ${min} to ${max}` : min === 0 ? 'a non-negative integer' : `an integer of at least ${min}`;
    throw launchVariableInvalid(name, expected, value);
  }
  return n;
}

/** An optional integer variable (a local rank): absent is undefined, present must be valid. */
function optionalInteger(env: Env, name: string | undefined, min: number): number | undefined {
  const value = name === undefined ? undefined : env[name];
  return value === undefined || value === '' ? undefined : integer(name!, value, min);
}

/** The rank and world size from the pair of variables a launcher sets, each requiring the other. */
function world(env: Env, launcher: string, rankName: string, sizeName: string, sizeHint: string) {
  const present = env[rankName] !== undefined && env[rankName] !== '' ? rankName : sizeName;
  const rank = integer(rankName, required(env, launcher, present, rankName, 'the launcher sets both for every process'), 0);
  const worldSize = integer(sizeName, required(env, launcher, present, sizeName, sizeHint), 1);
  if (rank >= worldSize) throw launchVariableInvalid(rankName, `below ${sizeName} (${worldSize})`, env[rankName]!);
  return { rank, worldSize, evidence: [`${rankName}=${rank}`, `${sizeName}=${worldSize}`] };
}

/** DTRAIN_COORDINATOR when the user gave it: rank 0's host, whatever the launcher says. */
function override(env: Env): string | undefined {
  const host = env[COORDINATOR_VARIABLE]?.trim();
  return host ? host : undefined;
}

// ---------------------------------------------------------------- the launchers

/** torchrun (and PyTorchJob, which sets the same variables in each pod). */
function torchrun(env: Env): Launch {
  const launcher = env.TORCHELASTIC_RUN_ID ? 'torchrun' : 'torch.distributed environment (PyTorchJob)';
  const w = world(env, launcher, 'RANK', 'WORLD_SIZE', 'the launcher sets both for every process');
  const present = 'RANK';
  const addr = required(env, launcher, present, 'MASTER_ADDR', 'it names rank 0\'s host');
  // dtrain listens on MASTER_PORT + 1 unless told otherwise: that must be a port too.
  const port = integer('MASTER_PORT', required(env, launcher, present, 'MASTER_PORT', 'dtrain listens beside it'), 1, 65534);
  const localRank = optionalInteger(env, 'LOCAL_RANK', 0);
  const localWorldSize = optionalInteger(env, 'LOCAL_WORLD_SIZE', 1);
  // Every rank on this host (torchrun --standalone, one node): rank 0 is reached on loopback, without a token.
  const host = override(env) ?? (localWorldSize === w.worldSize ? LOOPBACK : addr);
  return { launcher, ...w, localRank, localWorldSize, coordinatorHost: host, launcherPort: port, evidence: [...w.evidence, `MASTER_ADDR=${addr}`, `MASTER_PORT=${port}`] };
}

interface MpiVariables {
  launcher: string;
  rank: string;
  size: string;
  localRank: string;
  localSize: string;
}

const OPEN_MPI: MpiVariables = {
  launcher: 'Open MPI',
  rank: 'OMPI_COMM_WORLD_RANK',
  size: 'OMPI_COMM_WORLD_SIZE',
  localRank: 'OMPI_COMM_WORLD_LOCAL_RANK',
  localSize: 'OMPI_COMM_WORLD_LOCAL_SIZE',
};

/** MPICH's and Intel MPI's Hydra (mpiexec), and srun --mpi=pmi2; the local variables are Hydra's. */
const PMI: MpiVariables = { launcher: 'PMI (MPICH, Intel MPI)', rank: 'PMI_RANK', size: 'PMI_SIZE', localRank: 'MPI_LOCALRANKID', localSize: 'MPI_LOCALNRANKS' };

/**
 * MPI launchers name no host. Rank 0 is on this host when all ranks are; inside a Slurm allocation mpirun
 * maps rank 0 to the allocation's first node; elsewhere the user names it (DTRAIN_COORDINATOR).
 */
function mpiLike(env: Env, vars: MpiVariables): Launch {
  const w = world(env, vars.launcher, vars.rank, vars.size, 'the launcher sets both for every process');
  const localRank = optionalInteger(env, vars.localRank, 0);
  const localWorldSize = optionalInteger(env, vars.localSize, 1);
  const nodes = env.SLURM_JOB_NODELIST || env.SLURM_NODELIST;
  let host = override(env) ?? (localWorldSize === w.worldSize ? LOOPBACK : undefined);
  if (host === undefined && nodes) host = slurmFirstHost(env.SLURM_JOB_NODELIST ? 'SLURM_JOB_NODELIST' : 'SLURM_NODELIST', nodes);
  if (host === undefined) {
    const spread = localWorldSize === undefined ? vars.size : `${vars.size} (${w.worldSize} ranks, ${localWorldSize} on this host)`;
    throw launchIncomplete(vars.launcher, spread, COORDINATOR_VARIABLE, 'the ranks span several hosts: give rank 0\'s host with --coordinator HOST or mpirun -x DTRAIN_COORDINATOR=HOST');
  }
  return { launcher: vars.launcher, ...w, localRank, localWorldSize, coordinatorHost: host };
}

/** A task of a Slurm job step (srun): rank 0 is task 0, which runs on the step's first node. */
function slurm(env: Env): Launch {
  const launcher = 'Slurm';
  if (!env.SLURM_PROCID || !(env.SLURM_STEP_ID || env.SLURM_STEPID)) {
    // The batch script and salloc's shell have a job but are no task of a step.
    const present = env.SLURM_PROCID ? 'SLURM_PROCID' : 'SLURM_JOB_ID';
    throw launchIncomplete(launcher, present, 'SLURM_STEP_ID', 'this is the job\'s batch script or shell, not one of its tasks: start dtrain run with srun');
  }
  const sizeName = env.SLURM_NTASKS ? 'SLURM_NTASKS' : env.SLURM_NPROCS ? 'SLURM_NPROCS' : 'SLURM_NTASKS';
  const w = world(env, launcher, 'SLURM_PROCID', sizeName, 'give srun --ntasks');
  const listName = ['SLURM_STEP_NODELIST', 'SLURM_JOB_NODELIST', 'SLURM_NODELIST'].find((n) => env[n]) ?? 'SLURM_JOB_NODELIST';
  const nodes = required(env, launcher, 'SLURM_PROCID', listName, 'it names the hosts of the job, rank 0\'s first');
  const nodeCount = env.SLURM_STEP_NUM_NODES || env.SLURM_NNODES;
  const singleHost = nodeCount === '1';
  const host = override(env) ?? (singleHost ? LOOPBACK : slurmFirstHost(listName, nodes));
  return {
    launcher,
    ...w,
    localRank: optionalInteger(env, 'SLURM_LOCALID', 0),
    localWorldSize: singleHost ? w.worldSize : undefined,
    coordinatorHost: host,
    evidence: [...w.evidence, `${listName}=${nodes}`],
  };
}

function slurmFirstHost(name: string, list: string): string {
  try {
    return firstHost(list);
  } catch (e) {
    throw launchVariableInvalid(name, `a Slurm host list such as node[01-04,07] (${(e as Error).message})`, list);
  }
}

/**
 * A pod of a Kubernetes Indexed Job: its index is the rank, its hostname is `<job>-<index>`, and with the
 * pods' subdomain set to a headless Service, rank 0 is reached as `<job>-0.<service>`. The world size (the
 * Job's completions) is not in any variable Kubernetes sets: the manifest passes it.
 */
function kubernetes(env: Env): Launch {
  const launcher = 'Kubernetes Indexed Job';
  const present = 'JOB_COMPLETION_INDEX';
  const rank = integer(present, env.JOB_COMPLETION_INDEX!, 0);
  const worldSize = integer(WORLD_SIZE_VARIABLE, required(env, launcher, present, WORLD_SIZE_VARIABLE, 'set it to the Job\'s completions, or give --world-size'), 1);
  if (rank >= worldSize) throw launchVariableInvalid(present, `below ${WORLD_SIZE_VARIABLE} (${worldSize})`, env.JOB_COMPLETION_INDEX!);
  const evidence = [`${present}=${rank}`, `${WORLD_SIZE_VARIABLE}=${worldSize}`];
  const given = override(env);
  if (given) return { launcher, rank, worldSize, coordinatorHost: given, evidence };
  const service = required(env, launcher, present, SERVICE_VARIABLE, 'name the headless Service that is the pods\' subdomain, or give --service NAME').trim();
  const hostname = required(env, launcher, present, 'HOSTNAME', 'a pod\'s hostname is <job>-<index>');
  const suffix = `-${rank}`;
  if (!hostname.endsWith(suffix) || hostname.length === suffix.length) {
    throw launchVariableInvalid('HOSTNAME', `<job name>${suffix} (the pod of an Indexed Job)`, hostname);
  }
  const job = hostname.slice(0, -suffix.length);
  return { launcher, rank, worldSize, coordinatorHost: `${job}-0.${service}`, evidence: [...evidence, `${SERVICE_VARIABLE}=${service}`, `HOSTNAME=${hostname}`] };
}
