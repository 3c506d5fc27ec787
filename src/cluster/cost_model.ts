/**
 * What a step costs under each plan that distributes it among remote workers (--threads 0), estimated
 * from the model's FLOPs and bytes and the members' measured speed; `--plan auto` takes the cheapest
 * (replica_plan.ts), and docs/plans.md's figures for 8–64 machines come from the same formulas.
 *
 * A member's compute rate is its measured row rate times the FLOPs of a row (forward, and backward to the
 * first hidden layer). Per plan, a member's step is its compute plus its bytes at a cost per byte, and the
 * step is the slowest member's:
 *
 *   replicated  rows of its share, the other rows' inner deltas rebuilt (compact rows, when the engine can
 *               rebuild them), the whole weight pass and Adam; bytes: every row of the batch once (its own
 *               out, the others' in), compact or in full
 *   sharded     rows of its share; the weight pass and Adam of its units; bytes: every row in full, its
 *               units' parameters out and everyone else's in — through the coordinator's relay, or between
 *               peers (context.direct: a full mesh, so its own rows and units go out once to each other
 *               member, and the coordinator's link carries only the rows requests)
 *   server      rows of its share, then (after the slowest member's rows) the coordinator's whole weight
 *               pass and Adam, at the coordinator's rate; bytes: its own rows in full out, every
 *               parameter in; on a real link the coordinator's sends of the parameters to every member
 *               follow its weight pass, so the star's time adds to the step instead of overlapping it
 *
 * The cost per byte is not a link's nominal rate: it is calibrated from the measured steps of the plan that
 * runs (what a step took beyond the estimated compute, per byte a member moves), so that it holds what the
 * bytes really cost there — loopback copies, the coordinator's relay and validation on shared cores, or a
 * real link — with what overlaps already netted out. test/cost_model.test.ts states the factor it holds within.
 */
import { paramLayout, type ModelSpec } from '../model/spec.js';

import { REMOTE_PLANS, type RemotePlan } from '../config.js';

/** What is measured of a member: rows of the row pass per millisecond, as it reports its compute. */
export interface MemberCost {
  rowsPerMs: number;
}

export interface PlanEstimate {
  plan: RemotePlan;
  /** The estimated step: the slowest member's compute plus wire. */
  ms: number;
  computeMs: number;
  wireMs: number;
}

/**
 * Adam in FLOPs of the row pass a parameter costs as much as: it reads and writes four floats a parameter
 * and is bound by memory, ~1.3 ns a parameter against ~0.01 ns a GEMM FLOP on this project's machine.
 */
const ADAM_FLOPS_PER_PARAMETER = 130;

/** The sizes a plan's cost is made of, for one step of `batch` rows. */
export function stepSizes(spec: ModelSpec, batch: number) {
  const { layers, total } = paramLayout(spec);
  const macs = layers.map((l) => l.fanIn * l.fanOut);
  const all = macs.reduce((a, b) => a + b, 0);
  const hidden = spec.sizes.slice(1, -1).reduce((a, b) => a + b, 0);
  const outputs = spec.sizes.slice(1).reduce((a, b) => a + b, 0);
  return {
    parameters: total,
    /** Forward, and backward down to the first hidden layer's delta. */
    rowFlops: 2 * all + 2 * (all - macs[0]),
    /** Rebuilding a compact row's inner deltas from its last one. */
    rebuildFlops: 2 * (all - macs[0]),
    /** The weight pass over the whole batch, and Adam, as row-pass FLOPs. */
    weightFlops: 2 * batch * all + ADAM_FLOPS_PER_PARAMETER * total,
    /** A row on the wire: activations and the last delta (compact), or every delta too (full). */
    compactRowBytes: 4 * (hidden + spec.sizes[spec.sizes.length - 1]),
    fullRowBytes: 4 * (hidden + outputs),
  };
}

/** What a plan's estimate needs besides the members: how rows travel, and the coordinator's link and rate. */
export interface PlanContext {
  /** Whether replicated rows travel compact (the engine can rebuild their inner deltas); default true. */
  compact?: boolean;
  /**
   * The cost of a byte on the coordinator's own link, when it is a real link of known rate (predictions for
   * many machines); on loopback it is part of the calibrated cost per byte, and left at 0 (the default).
   */
  starMsPerByte?: number;
  /** The coordinator's rate for the server plan's weight pass (measured); by default the average member's. */
  coordinator?: MemberCost;
  /**
   * Whether the sharded plan's rows and slices go between peers (every member announced a peer listener:
   * remote/peer_mesh.ts), not through the coordinator.
   */
  direct?: boolean;
}

type StepSizes = ReturnType<typeof stepSizes>;

/**
 * Replicated and sharded: what a member moves a step, in and out — every row of the batch once (its own
 * out, the others' in; compact when the engine rebuilds them), and (sharded) every unit's parameters once
 * (its own units' out, the others' in).
 */
function exchangedBytes(size: StepSizes, batch: number, plan: RemotePlan, compact: boolean): number {
  const rowBytes = plan === 'replicated' && compact ? size.compactRowBytes : size.fullRowBytes;
  return batch * rowBytes + (plan === 'sharded' ? 4 * size.parameters : 0);
}

/**
 * Sharded between peers: what a member of `members` with `share` of the rows and units moves a step — its
 * rows and units out to each of the others, everyone else's in.
 */
function meshBytes(size: StepSizes, batch: number, share: number, members: number): number {
  const everyone = exchangedBytes(size, batch, 'sharded', false);
  const own = share * everyone;
  return (members - 1) * own + (everyone - own);
}

/**
 * Each member's compute (ms) and bytes under `plan`; members share rows and units by speed. The server
 * plan's compute holds the coordinator's weight pass too: it follows every member's rows.
 */
function perMember(size: StepSizes, batch: number, members: MemberCost[], plan: RemotePlan, { compact = true, coordinator, direct = false }: PlanContext) {
  const total = members.reduce((a, m) => a + m.rowsPerMs, 0);
  // Replicated rows travel compact (and the others' inner deltas are rebuilt) when the engine can rebuild them.
  const rebuild = plan === 'replicated' && compact;
  return members.map((m) => {
    const share = m.rowsPerMs / total;
    const rows = share * batch;
    const rowsMs = rows / m.rowsPerMs;
    if (plan === 'server') {
      const serverMs = size.weightFlops / ((coordinator?.rowsPerMs ?? total / members.length) * size.rowFlops);
      return { computeMs: rowsMs + serverMs, bytes: rows * size.fullRowBytes + 4 * size.parameters };
    }
    const flops = plan === 'replicated' ? (rebuild ? (batch - rows) * size.rebuildFlops : 0) + size.weightFlops : share * size.weightFlops;
    const bytes = plan === 'sharded' && direct ? meshBytes(size, batch, share, members.length) : exchangedBytes(size, batch, plan, compact);
    return { computeMs: rowsMs + flops / (m.rowsPerMs * size.rowFlops), bytes };
  });
}

/**
 * The cost of a byte (ms) that makes `plan`'s estimate meet its measured step: the estimate is the slowest
 * member's compute plus bytes, so the cost is the least of each member's (what the step took beyond its
 * compute, over its bytes) — the member that reaches the measured step first sets it, whether by compute
 * or by bytes (at least a nanosecond's millionth: never free).
 */
export function byteCost(spec: ModelSpec, batch: number, members: MemberCost[], plan: RemotePlan, measuredMs: number, context: PlanContext = {}): number {
  const each = perMember(stepSizes(spec, batch), batch, members, plan, context).map((m) => (measuredMs - m.computeMs) / m.bytes);
  return Math.max(1e-12, Math.min(...each));
}

/**
 * The bytes the coordinator sends a step, the busier direction of its link: every member gets the rows it
 * did not compute, and (sharded) the parameters of the units it does not own; (server) every member gets
 * every parameter. In a star this grows with the members while each member's own bytes do not: it is
 * where the star saturates.
 */
export function coordinatorBytes(spec: ModelSpec, batch: number, members: number, plan: RemotePlan, compact = true, direct = false): number {
  const size = stepSizes(spec, batch);
  // Between peers it sends each member the batch's samples (as dataset indices: 4 bytes a row) and no row or slice.
  if (plan === 'sharded' && direct) return members * 4 * batch;
  return plan === 'server' ? members * 4 * size.parameters : (members - 1) * exchangedBytes(size, batch, plan, compact);
}

/** Each plan's estimated step for these members at `msPerByte`, cheapest first. */
export function estimatePlans(spec: ModelSpec, batch: number, members: MemberCost[], msPerByte: number, context: PlanContext = {}): PlanEstimate[] {
  const size = stepSizes(spec, batch);
  const { compact = true, starMsPerByte = 0, direct = false } = context;
  const estimates = REMOTE_PLANS.map((plan) => {
    const costs = perMember(size, batch, members, plan, context).map((c) => ({ computeMs: c.computeMs, wireMs: c.bytes * msPerByte }));
    const slowest = costs.reduce((a, b) => (b.computeMs + b.wireMs > a.computeMs + a.wireMs ? b : a));
    const star = coordinatorBytes(spec, batch, members.length, plan, compact, direct) * starMsPerByte;
    if (plan === 'server') {
      // The parameters leave only after the coordinator's weight pass, to one member after another on its
      // link: beyond what a member's own link takes for them, the star's time adds to the step.
      const wireMs = slowest.wireMs + Math.max(0, star - 4 * size.parameters * msPerByte);
      return { plan, ms: slowest.computeMs + wireMs, computeMs: slowest.computeMs, wireMs };
    }
    return { plan, ms: Math.max(slowest.computeMs + slowest.wireMs, star), ...slowest };
  });
  return estimates.sort((a, b) => a.ms - b.ms);
}
