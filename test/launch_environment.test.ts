import { describe, expect, it } from 'vitest';
import { detectLaunch, type Env } from '../src/launch/environment.js';
import { expandHostList, firstHost } from '../src/launch/hostlist.js';

/** The message of what `f` throws (every launch error is one line). */
function failure(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect((e as Error).message).not.toContain('\n');
    return (e as Error).message;
  }
  throw new Error('expected a throw');
}

describe('Slurm host lists', () => {
  it.each([
    ['vm', ['vm']],
    ['node[01-04,07],gpu3', ['node01', 'node02', 'node03', 'node04', 'node07', 'gpu3']],
    ['node[08-10]', ['node08', 'node09', 'node10']],
    ['n[9-11]', ['n9', 'n10', 'n11']],
    ['rack[1-2]-n[1-2]', ['rack1-n1', 'rack1-n2', 'rack2-n1', 'rack2-n2']],
    ['a[1,3]-ib,b', ['a1-ib', 'a3-ib', 'b']],
    ['gpu3,node[1-2]', ['gpu3', 'node1', 'node2']],
    ['node[7]', ['node7']],
    [' a , b ', ['a', 'b']],
  ])('expands %s', (list, hosts) => {
    expect(expandHostList(list)).toEqual(hosts);
    expect(firstHost(list)).toBe(hosts[0]);
  });

  it.each([
    ['node[01-04', 'a "[" is never closed'],
    ['node]1[', 'unbalanced "]" at character 5'],
    ['node[[1]]', 'unbalanced "[" at character 6'],
    ['node[a-b]', '"[a-b]" is not a list of numbers and ranges'],
    ['node[4-2]', 'range "4-2" runs backwards'],
    ['node[]', '"[]" is not a list of numbers and ranges'],
    ['', 'no host in the list'],
  ])('refuses %j', (list, reason) => {
    expect(failure(() => expandHostList(list))).toBe(reason);
  });
});

const TORCHRUN: Env = { RANK: '1', WORLD_SIZE: '3', MASTER_ADDR: 'localhost', MASTER_PORT: '29500', LOCAL_RANK: '1', LOCAL_WORLD_SIZE: '3', TORCHELASTIC_RUN_ID: 'x' };
const OMPI: Env = { OMPI_COMM_WORLD_RANK: '2', OMPI_COMM_WORLD_SIZE: '4', OMPI_COMM_WORLD_LOCAL_RANK: '0', OMPI_COMM_WORLD_LOCAL_SIZE: '2' };
const SLURM: Env = {
  SLURM_JOB_ID: '7',
  SLURM_STEP_ID: '0',
  SLURM_PROCID: '5',
  SLURM_NTASKS: '8',
  SLURM_LOCALID: '1',
  SLURM_JOB_NODELIST: 'node[01-04,07],gpu3',
  SLURM_STEP_NODELIST: 'node[02-05]',
  SLURM_STEP_NUM_NODES: '4',
};
const K8S: Env = { JOB_COMPLETION_INDEX: '2', DTRAIN_WORLD_SIZE: '4', DTRAIN_SERVICE: 'dtrain-ranks', HOSTNAME: 'dtrain-mnist-2' };

describe('launcher detection', () => {
  it('reads torchrun: rank 0 on loopback when every rank is on this host, MASTER_PORT kept for the port', () => {
    expect(detectLaunch(TORCHRUN)).toEqual({
      launcher: 'torchrun',
      rank: 1,
      worldSize: 3,
      localRank: 1,
      localWorldSize: 3,
      coordinatorHost: '127.0.0.1',
      launcherPort: 29500,
      evidence: ['RANK=1', 'WORLD_SIZE=3', 'MASTER_ADDR=localhost', 'MASTER_PORT=29500'],
    });
  });

  it('reads torchrun on several nodes and PyTorchJob pods: rank 0 is MASTER_ADDR', () => {
    expect(detectLaunch({ ...TORCHRUN, MASTER_ADDR: 'node01', LOCAL_WORLD_SIZE: '2', WORLD_SIZE: '4' })).toMatchObject({ coordinatorHost: 'node01', localWorldSize: 2 });
    const pod = detectLaunch({ RANK: '2', WORLD_SIZE: '3', MASTER_ADDR: 'job-master-0', MASTER_PORT: '23456' });
    expect(pod).toMatchObject({ launcher: 'torch.distributed environment (PyTorchJob)', rank: 2, coordinatorHost: 'job-master-0', launcherPort: 23456 });
    expect(pod.localRank).toBeUndefined();
  });

  it('reads Open MPI, and MPICH\'s PMI with Hydra\'s local variables', () => {
    expect(detectLaunch({ ...OMPI, OMPI_COMM_WORLD_LOCAL_SIZE: '4' })).toEqual({
      launcher: 'Open MPI',
      rank: 2,
      worldSize: 4,
      localRank: 0,
      localWorldSize: 4,
      coordinatorHost: '127.0.0.1',
      evidence: ['OMPI_COMM_WORLD_RANK=2', 'OMPI_COMM_WORLD_SIZE=4'],
    });
    const pmi = { PMI_RANK: '1', PMI_SIZE: '2', MPI_LOCALRANKID: '1', MPI_LOCALNRANKS: '2' };
    expect(detectLaunch(pmi)).toMatchObject({ launcher: 'PMI (MPICH, Intel MPI)', rank: 1, worldSize: 2, localRank: 1, coordinatorHost: '127.0.0.1' });
  });

  it('finds rank 0 of MPI ranks on several hosts from DTRAIN_COORDINATOR, or inside Slurm from the first node', () => {
    expect(detectLaunch({ ...OMPI, DTRAIN_COORDINATOR: 'head' }).coordinatorHost).toBe('head');
    expect(detectLaunch({ ...OMPI, SLURM_JOB_ID: '7', SLURM_PROCID: '0', SLURM_JOB_NODELIST: 'cn[3-4]' })).toMatchObject({ launcher: 'Open MPI', rank: 2, coordinatorHost: 'cn3' });
    expect(failure(() => detectLaunch(OMPI))).toBe(
      'Open MPI: OMPI_COMM_WORLD_SIZE (4 ranks, 2 on this host) is set but DTRAIN_COORDINATOR is not: the ranks span several hosts: give rank 0\'s host with --coordinator HOST or mpirun -x DTRAIN_COORDINATOR=HOST',
    );
    expect(failure(() => detectLaunch({ PMI_RANK: '0', PMI_SIZE: '2' }))).toMatch(/^PMI \(MPICH, Intel MPI\): PMI_SIZE is set but DTRAIN_COORDINATOR is not: /);
  });

  it('reads a Slurm task: rank 0 on the step\'s first node (compressed list), local rank SLURM_LOCALID', () => {
    expect(detectLaunch(SLURM)).toEqual({
      launcher: 'Slurm',
      rank: 5,
      worldSize: 8,
      localRank: 1,
      localWorldSize: undefined,
      coordinatorHost: 'node02',
      evidence: ['SLURM_PROCID=5', 'SLURM_NTASKS=8', 'SLURM_STEP_NODELIST=node[02-05]'],
    });
    const { SLURM_STEP_NODELIST: _, ...jobOnly } = SLURM;
    expect(detectLaunch(jobOnly).coordinatorHost).toBe('node01');
    expect(detectLaunch({ ...SLURM, SLURM_STEP_NUM_NODES: '1', SLURM_NTASKS: '6' })).toMatchObject({ coordinatorHost: '127.0.0.1', localWorldSize: 6 });
    expect(detectLaunch({ ...SLURM, SLURM_NTASKS: undefined, SLURM_NPROCS: '8' }).worldSize).toBe(8);
  });

  it('reads a Kubernetes Indexed Job pod: rank 0 is <job>-0.<service>', () => {
    expect(detectLaunch(K8S)).toEqual({
      launcher: 'Kubernetes Indexed Job',
      rank: 2,
      worldSize: 4,
      coordinatorHost: 'dtrain-mnist-0.dtrain-ranks',
      evidence: ['JOB_COMPLETION_INDEX=2', 'DTRAIN_WORLD_SIZE=4', 'DTRAIN_SERVICE=dtrain-ranks', 'HOSTNAME=dtrain-mnist-2'],
    });
    expect(detectLaunch({ ...K8S, DTRAIN_SERVICE: undefined, DTRAIN_COORDINATOR: '10.0.0.5' }).coordinatorHost).toBe('10.0.0.5');
  });

  it('lets the launcher that started this very process win over the one around it', () => {
    const inSbatch = { SLURM_JOB_ID: '7', SLURM_PROCID: '0', SLURM_NTASKS: '4', SLURM_JOB_NODELIST: 'vm' };
    expect(detectLaunch({ ...inSbatch, ...OMPI, OMPI_COMM_WORLD_LOCAL_SIZE: '4' }).launcher).toBe('Open MPI');
    expect(detectLaunch({ ...SLURM, ...TORCHRUN }).launcher).toBe('torchrun');
    expect(detectLaunch({ ...K8S, ...TORCHRUN }).launcher).toBe('torchrun');
    expect(detectLaunch({ ...SLURM, PMI_RANK: '5', PMI_SIZE: '8' }).launcher).toBe('PMI (MPICH, Intel MPI)');
  });

  it('names the missing variable of an environment that is half there', () => {
    expect(failure(() => detectLaunch({ RANK: '1' }))).toBe('torch.distributed environment (PyTorchJob): RANK is set but WORLD_SIZE is not: the launcher sets both for every process');
    expect(failure(() => detectLaunch({ WORLD_SIZE: '2' }))).toBe('torch.distributed environment (PyTorchJob): WORLD_SIZE is set but RANK is not: the launcher sets both for every process');
    expect(failure(() => detectLaunch({ ...TORCHRUN, MASTER_ADDR: undefined }))).toBe('torchrun: RANK is set but MASTER_ADDR is not: it names rank 0\'s host');
    expect(failure(() => detectLaunch({ ...TORCHRUN, MASTER_PORT: '' }))).toBe('torchrun: RANK is set but MASTER_PORT is not: dtrain listens beside it');
    expect(failure(() => detectLaunch({ OMPI_COMM_WORLD_RANK: '0' }))).toBe('Open MPI: OMPI_COMM_WORLD_RANK is set but OMPI_COMM_WORLD_SIZE is not: the launcher sets both for every process');
    expect(failure(() => detectLaunch({ ...SLURM, SLURM_NTASKS: undefined }))).toBe('Slurm: SLURM_PROCID is set but SLURM_NTASKS is not: give srun --ntasks');
    expect(failure(() => detectLaunch({ ...SLURM, SLURM_STEP_NODELIST: undefined, SLURM_JOB_NODELIST: undefined }))).toBe(
      'Slurm: SLURM_PROCID is set but SLURM_JOB_NODELIST is not: it names the hosts of the job, rank 0\'s first',
    );
    expect(failure(() => detectLaunch({ ...K8S, DTRAIN_WORLD_SIZE: undefined }))).toBe(
      'Kubernetes Indexed Job: JOB_COMPLETION_INDEX is set but DTRAIN_WORLD_SIZE is not: set it to the Job\'s completions, or give --world-size',
    );
    expect(failure(() => detectLaunch({ ...K8S, DTRAIN_SERVICE: undefined }))).toBe(
      'Kubernetes Indexed Job: JOB_COMPLETION_INDEX is set but DTRAIN_SERVICE is not: name the headless Service that is the pods\' subdomain, or give --service NAME',
    );
    expect(failure(() => detectLaunch({ ...K8S, HOSTNAME: undefined }))).toBe('Kubernetes Indexed Job: JOB_COMPLETION_INDEX is set but HOSTNAME is not: a pod\'s hostname is <job>-<index>');
  });

  it('tells the batch script of a Slurm job, which is no task, to start dtrain run with srun', () => {
    const hint = 'this is the job\'s batch script or shell, not one of its tasks: start dtrain run with srun';
    expect(failure(() => detectLaunch({ ...SLURM, SLURM_STEP_ID: undefined }))).toBe(`Slurm: SLURM_PROCID is set but SLURM_STEP_ID is not: ${hint}`);
    expect(failure(() => detectLaunch({ SLURM_JOB_ID: '7', SLURM_NTASKS: '2' }))).toBe(`Slurm: SLURM_JOB_ID is set but SLURM_STEP_ID is not: ${hint}`);
    expect(detectLaunch({ ...SLURM, SLURM_STEP_ID: undefined, SLURM_STEPID: '0' }).rank).toBe(5);
  });

  it('refuses values that are not ranks, naming the variable', () => {
    expect(failure(() => detectLaunch({ ...TORCHRUN, RANK: 'one' }))).toBe('environment variable RANK must be a non-negative integer, got "one"');
    expect(failure(() => detectLaunch({ ...TORCHRUN, RANK: '-1' }))).toBe('environment variable RANK must be a non-negative integer, got "-1"');
    expect(failure(() => detectLaunch({ ...TORCHRUN, RANK: '3' }))).toBe('environment variable RANK must be below WORLD_SIZE (3), got "3"');
    expect(failure(() => detectLaunch({ ...TORCHRUN, WORLD_SIZE: '0' }))).toBe('environment variable WORLD_SIZE must be an integer of at least 1, got "0"');
    expect(failure(() => detectLaunch({ ...TORCHRUN, LOCAL_RANK: '1.5' }))).toBe('environment variable LOCAL_RANK must be a non-negative integer, got "1.5"');
    // dtrain listens on MASTER_PORT + 1: 65535 would leave it no port.
    expect(failure(() => detectLaunch({ ...TORCHRUN, MASTER_PORT: '65535' }))).toBe('environment variable MASTER_PORT must be an integer from 1 to 65534, got "65535"');
    expect(failure(() => detectLaunch({ ...TORCHRUN, MASTER_PORT: 'http' }))).toBe('environment variable MASTER_PORT must be an integer from 1 to 65534, got "http"');
    expect(failure(() => detectLaunch({ ...K8S, JOB_COMPLETION_INDEX: '4' }))).toBe('environment variable JOB_COMPLETION_INDEX must be below DTRAIN_WORLD_SIZE (4), got "4"');
    expect(failure(() => detectLaunch({ ...K8S, HOSTNAME: 'laptop' }))).toBe('environment variable HOSTNAME must be <job name>-2 (the pod of an Indexed Job), got "laptop"');
    expect(failure(() => detectLaunch({ ...SLURM, SLURM_STEP_NODELIST: 'node[1-' }))).toBe(
      'environment variable SLURM_STEP_NODELIST must be a Slurm host list such as node[01-04,07] (a "[" is never closed), got "node[1-"',
    );
  });

  it('says which variables it looks for when no launcher started this process', () => {
    expect(failure(() => detectLaunch({ HOME: '/root', PATH: '/bin', LOCAL_RANK: '0' }))).toBe(
      'dtrain run found no launcher in its environment (none of RANK, WORLD_SIZE, OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, PMI_RANK, PMI_SIZE, SLURM_PROCID, SLURM_JOB_ID, JOB_COMPLETION_INDEX is set): start it with mpirun, srun, torchrun or as a Kubernetes Indexed Job, or use dtrain coordinator and dtrain worker',
    );
    // Empty values are unset: a launcher never sets them empty, a shell export of nothing does.
    expect(failure(() => detectLaunch({ RANK: '', WORLD_SIZE: '' }))).toMatch(/^dtrain run found no launcher/);
  });
});
