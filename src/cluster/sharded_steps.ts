/**
 * The sharded plan on the coordinator (--threads 0, remote replicas): each replica reduces and updates only
 * its share of every layer's output units, and the updated parameters are all-gathered through the hub
 * (remote/peer_work.ts requestSlices and slice). This module keeps who owns which units, the last step's
 * slices in flight, and the state gathered back from the owners' shards.
 *
 * An owner's Adam moments are current only for its own units, so the assignment is fixed from the moment
 * every owner was sent the full state (admit) until membership changes: then the state is gathered (or,
 * when an owner was lost, replayed here from the last one gathered) and sent to everyone again with new
 * shares. Every unit's gradient is still one reduction over the whole batch (cluster/plan.ts), so the
 * result is bitwise the one of any other plan.
 */
import type { ModelSpec } from '../model/spec.js';
import { paramLayout } from '../model/spec.js';
import { shareUnits, type Range } from './plan.js';
import type { RemoteHub, RemotePeer } from './remote/hub.js';
import type { Snapshot } from './remote/peer_work.js';
import type { StateArrays } from './training_state.js';
import { placeSlice } from './unit_slices.js';

export class ShardedSteps {
  private owners = new Map<RemotePeer, Range[]>();
  /** The last step's slices, until settled. */
  private inFlight?: Promise<void>;
  /** A slice was lost (its owner dropped): the replicas are torn mid-step, and only a replay mends the state. */
  private torn = false;

  constructor(
    private readonly hub: RemoteHub,
    private readonly spec: ModelSpec,
  ) {}

  /** Whether the units must be shared anew: a slice was lost, an owner left, or a member owns nothing. */
  get stale(): boolean {
    const ready = this.hub.ready();
    return this.torn || ready.length !== this.owners.size || ready.some((p) => !this.owners.has(p));
  }

  /**
   * Whether steps are sharded now: with a sole owner there is nobody to share the units with, and it runs
   * as a replicated run's replica (compact rows, the next rows asked for early, plain updates).
   */
  get active(): boolean {
    return this.owners.size > 1;
  }

  /**
   * Sends the committed state to every member, joiners and owners alike (units move, and each owner's
   * moments must be current for its new ones), and shares the units among them by measured speed.
   */
  admit(snapshot: Snapshot): void {
    for (const peer of this.hub.ready()) this.hub.resync(peer);
    this.hub.admit(snapshot, this.hub.joining().length > 1);
    const members = this.hub.ready();
    // A newcomer is assumed as fast as the average so far (as rows are shared: Scheduler.plan).
    const known = members.filter((p) => p.speed > 0).map((p) => p.speed);
    const average = known.length ? known.reduce((a, b) => a + b, 0) / known.length : 1;
    // Nobody left (every owner lost): nothing to share until someone joins.
    const shares = members.length ? shareUnits(this.spec.sizes.slice(1), members.map((p) => p.speed || average)) : [];
    this.owners = new Map(members.map((p, i) => [p, shares[i]]));
    this.torn = false;
  }

  /** Sends the step's update to the owners (active() only); settle() awaits their slices. */
  request(step: number, batch: number): void {
    const answers = this.hub.requestSlices(step, batch, this.owners);
    this.inFlight = Promise.all(answers).then(
      () => {},
      () => {
        this.torn = true;
      },
    );
  }

  /** Waits for the last step's slices (each came, or its owner was dropped); false when one was lost. */
  async settle(): Promise<boolean> {
    await this.inFlight;
    this.inFlight = undefined;
    return !this.torn;
  }

  /** The full state of `step` put together from the owners' shards, or undefined when an owner is gone. */
  async gather(step: number): Promise<StateArrays | undefined> {
    if (!(await this.settle()) || this.stale || this.owners.size === 0) return undefined;
    const total = paramLayout(this.spec).total;
    const state: StateArrays = { params: new Float32Array(total), m: new Float32Array(total), v: new Float32Array(total) };
    try {
      const shards = await Promise.all([...this.owners].map(async ([peer, units]) => ({ units, shard: await this.hub.fetchState(peer, step, units) })));
      for (const { units, shard } of shards) {
        placeSlice(this.spec, state.params, units, shard.params);
        placeSlice(this.spec, state.m, units, shard.m);
        placeSlice(this.spec, state.v, units, shard.v);
      }
      return state;
    } catch {
      // an owner left or timed out (and was dropped): its moments are gone with it
      return undefined;
    }
  }
}
