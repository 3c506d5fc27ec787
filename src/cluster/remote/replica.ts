/**
 * The training state a worker mirrors (its replica) and the threads that compute on it. It computes the
 * rows it is asked for, takes in the rows the others computed, and applies each step with the same
 * kernels as the coordinator, so every replica stays bit-identical to the coordinator's state (and a
 * coordinator without compute threads of its own can take its state from a replica). It outlives a
 * connection: after a reconnect a fresh snapshot is loaded into it if the model still fits.
 * Kept apart from the connection (worker_session.ts): this file knows training, not the wire.
 */
import type { RemotePlan } from '../../config.js';
import type { Dataset } from '../../data/datasets.js';
import { paramsSha256 } from '../../model/checksum.js';
import { allUnits, missingRanges, splitRange, type Range } from '../plan.js';
import type { Task } from '../slot_runner.js';
import { createTrainingMemory, gatherBatchRows, placeBatchRows, type TrainingMemory } from '../training_memory.js';
import { TrainingState } from '../training_state.js';
import { createTeam } from '../create_team.js';
import type { Team } from '../team.js';
import type { ReplicaOptions } from './worker_options.js';
import { packSlice, placeSlice, unitsIn } from '../unit_slices.js';
import { ProtocolError, type ReplicaState, type RowsDone, type RowsMessage, type SliceMessage, type StateMessage, type UpdateMessage } from './messages.js';

/** The training state a worker mirrors, and the threads that compute on it. */
export class Replica {
  /** The mirrored state: parameters, moments, generation and step, as the coordinator's TrainingState. */
  readonly state: TrainingState;
  /** The current step's batch size (0 before its rows request) and the rows held: computed here or forwarded. */
  private batchRows = 0;
  private held: Range[] = [];
  /**
   * True between applying a step as soon as every row of it was here and the coordinator's update for it
   * (which then only confirms: the step's rows are accepted once forwarded, so its result is settled).
   */
  private appliedEarly = false;
  /**
   * How steps come (the state message says): replicated, each applied here; sharded, only its units when
   * the update names them, never early, committed once the slices (its own and the others') cover every
   * unit; server, never applied here: the coordinator's slice of every unit is committed.
   */
  private plan: RemotePlan = 'replicated';
  /**
   * The unit ranges of each layer the current sharded step has been applied to, here or by the slices
   * received (never overlapping), and whether its own were applied.
   */
  private covered: Range[][] = [];
  private ownApplied = false;
  private readonly allUnits: number;
  private constructor(
    readonly memory: TrainingMemory,
    readonly team: Team,
    initial: StateMessage,
  ) {
    this.state = new TrainingState(memory);
    this.allUnits = unitsIn(allUnits(memory.spec.sizes.slice(1)));
    this.load(initial);
  }

  get step(): number {
    return this.state.step;
  }

  private get generation(): number {
    return this.state.generation;
  }

  static async create(state: StateMessage, options: ReplicaOptions): Promise<Replica> {
    const features = state.spec.sizes[0];
    const classes = state.spec.sizes[state.spec.sizes.length - 1];
    const dataset: Dataset = state.useLocalData && options.dataset ? options.dataset : emptyDataset(features, classes);
    const memory = createTrainingMemory(state.spec, dataset, state.batchSize, options.threads);
    const { engine, device, allowSoftwareGpu, webgpu } = options;
    const team = await createTeam({ memory, engine: { engine, device, allowSoftwareGpu, webgpu }, adam: state.adam }, options.threads);
    return new Replica(memory, team, state);
  }

  fits(state: StateMessage): boolean {
    const spec = this.memory.spec;
    return state.batchSize === this.memory.batchSize && state.spec.activation === spec.activation && state.spec.sizes.join() === spec.sizes.join();
  }

  load(state: StateMessage): void {
    // Rows held from before a reconnect belong to another connection's step: a fresh snapshot starts clean.
    this.batchRows = 0;
    this.held = [];
    this.appliedEarly = false;
    this.plan = state.plan;
    this.covered = [];
    this.ownApplied = false;
    this.state.load(state, state.step, state.generation);
  }

  /**
   * Takes the batch's samples, computes rows message.range, and returns them for the coordinator (the
   * connection adds its apply and wait times).
   */
  async rows(message: RowsMessage): Promise<Omit<RowsDone, 'applyMs' | 'waitMs' | 'queuedMs'>> {
    if (message.step !== this.step) throw new ProtocolError(`rows: step ${message.step} does not follow this replica's step ${this.step}`);
    const started = performance.now();
    const { batch: b, spec, train } = this.memory;
    const [r0, r1] = message.range;
    const classes = spec.sizes[spec.sizes.length - 1];
    if (message.x) b.x.set(message.x);
    else {
      const outside = message.index!.find((i) => i < 0 || i >= train.count);
      if (outside !== undefined) throw new ProtocolError(`rows: sample ${outside} is outside the local dataset of ${train.count}`);
      b.index.set(message.index!);
      gatherBatchRows(this.memory, [0, message.batch], true);
    }
    for (let r = 0; r < message.batch; r++) {
      b.target.fill(0, r * classes, (r + 1) * classes);
      b.target[r * classes + message.labels[r]] = 1;
    }
    await this.team.runPass(
      this.split(message.range).map((range) => ({ kind: 'rows', step: this.step, generation: this.generation, batch: message.batch, range, gather: false }) as Task),
    );
    this.batchRows = message.batch;
    // Rows that are not finite are the coordinator's to judge: this replica then waits for its update.
    if (b.rowLoss.subarray(r0, r1).every(Number.isFinite)) this.held.push(message.range);
    const rowsOf = (a: Float32Array, width: number) => a.subarray(r0 * width, r1 * width);
    const deltas = message.lossOnly ? [] : b.deltas.map((d, l) => rowsOf(d, spec.sizes[l + 1]));
    return {
      t: 'rowsDone',
      step: message.step,
      range: message.range,
      rowLoss: b.rowLoss.subarray(r0, r1),
      hidden: message.lossOnly ? [] : b.hidden.map((h, l) => rowsOf(h, spec.sizes[l + 1])),
      deltas: message.compact ? deltas.slice(-1) : deltas,
      ms: performance.now() - started,
    };
  }

  /** Copies rows [r0, …) into the batch buffers; compact ones (last delta only) get their other deltas rebuilt. */
  private async place([r0, r1]: Range, hidden: Float32Array[], deltas: Float32Array[]): Promise<void> {
    if (!placeBatchRows(this.memory, r0, hidden, deltas)) return;
    await this.team.runPass(this.split([r0, r1]).map((range) => ({ kind: 'deltas', step: this.step, generation: this.generation, range }) as Task));
  }

  /** Batch rows `range` split evenly among this replica's threads. */
  private split(range: Range): Range[] {
    return splitRange(range, this.team.size);
  }

  /** Rows of this step another worker computed (this replica has their samples from its rows request). */
  async received(message: RowsDone): Promise<void> {
    if (message.step !== this.step) throw new ProtocolError(`rowsDone: step ${message.step} does not follow this replica's step ${this.step}`);
    await this.place(message.range, message.hidden, message.deltas);
    this.held.push(message.range);
  }

  /**
   * Applies the current step at once if every row of its batch is here (own rows finite, the others'
   * validated and accepted by the coordinator before it forwarded them), without waiting for the update.
   * Returns true if it did.
   */
  async applyIfComplete(): Promise<boolean> {
    if (this.plan !== 'replicated' || this.batchRows === 0 || missingRanges(this.batchRows, this.held).length > 0) return false;
    await this.apply(this.batchRows);
    this.appliedEarly = true;
    return true;
  }

  /** Applies step message.step with the rows it still lacked; false if it was applied already (early). */
  async update(message: UpdateMessage): Promise<boolean> {
    if (this.appliedEarly && message.step === this.step - 1) {
      if (message.parts.length > 0) throw new ProtocolError(`update: step ${message.step} sends rows this replica already had`);
      this.appliedEarly = false;
      return false;
    }
    if (message.step !== this.step) throw new ProtocolError(`update: step ${message.step} does not follow this replica's step ${this.step}`);
    if (this.plan !== 'replicated') throw new ProtocolError(`update: a whole step sent to a replica whose state said its steps come ${this.plan}`);
    await this.placeLacking(message);
    await this.apply(message.batch);
    return true;
  }

  /** The rows of the update's batch this replica neither holds nor is sent in it (a peer step: they come over the links). */
  lacking(message: UpdateMessage): Range[] {
    return missingRanges(message.batch, [...this.held, ...message.parts.map((p) => p.range)]);
  }

  /** Sharded: its own units of the current step are applied, and the others' slices have not all come yet. */
  get midStep(): boolean {
    return this.plan === 'sharded' && this.ownApplied;
  }

  /** Places the rows of an update this replica still lacked; fails if any row of the batch would be missing. */
  private async placeLacking(message: UpdateMessage): Promise<void> {
    // The coordinator sends what it believes this replica lacks; rows forwarded to it but lost on the way
    // would leave the last step's rows in the buffers, and the replica would diverge without a word.
    const lacking = this.lacking(message);
    if (lacking.length > 0) throw new ProtocolError(`update: rows ${lacking[0][0]}–${lacking[0][1] - 1} of step ${message.step} never arrived`);
    const { batch: b, spec } = this.memory;
    for (const part of message.parts) {
      b.x.set(part.x, part.range[0] * spec.sizes[0]);
      await this.place(part.range, part.hidden, part.deltas);
    }
  }

  /**
   * A sharded step's update: places the rows it lacked, reduces and updates only its units (split among
   * its threads) into the next generation, and returns their new parameters for the others, and whether
   * the step committed (it does once the slices cover every unit: at once when it owns them all). With
   * `onLayer` each layer's new parameters go there as soon as they are computed (and the slice returned
   * holds none).
   */
  async applyUnits(message: UpdateMessage, units: Range[], onLayer?: (slice: SliceMessage) => void): Promise<{ slice: SliceMessage; committed: boolean }> {
    if (this.plan !== 'sharded') throw new ProtocolError(`update: units sent to a replica whose state said its steps come ${this.plan}`);
    if (message.step !== this.step || this.ownApplied) throw new ProtocolError(`update: sharded step ${message.step} does not follow this replica's step ${this.step}`);
    await this.placeLacking(message);
    // With onLayer, a layer at a time (the last first, as a backward pass would): each layer's slice can go
    // out while the next is computed. Every unit's reduction and Adam are the same either way.
    const passes = onLayer ? units.map((_, l) => units.map((r, k) => (k === l ? r : ([r[0], r[0]] as Range)))).reverse() : [units];
    for (const within of passes) {
      if (unitsIn(within) === 0) continue;
      const results = await this.team.runPass(this.state.weightTasks(message.batch, this.team.size, within));
      if (results.some((r) => r.nonFiniteLayers.length > 0)) throw new ProtocolError(`update: step ${this.step} gave a non-finite gradient on this replica`);
      if (onLayer) onLayer({ t: 'slice', step: message.step, units: within, params: packSlice(this.memory.spec, this.state.arrays(this.generation ^ 1).params, within) });
    }
    const params = onLayer ? new Float32Array(0) : packSlice(this.memory.spec, this.state.arrays(this.generation ^ 1).params, units);
    this.ownApplied = true;
    const slice: SliceMessage = { t: 'slice', step: message.step, units, params };
    return { slice, committed: this.cover(units) };
  }

  /**
   * Another owner's units of the current sharded step, or (server plan) the coordinator's new parameters,
   * into the next generation; true if the step committed.
   */
  slice(message: SliceMessage): boolean {
    if (this.plan === 'replicated') throw new ProtocolError('slice: sent to a replica whose state said its steps come replicated');
    if (message.step !== this.step) throw new ProtocolError(`slice: step ${message.step} does not follow this replica's step ${this.step}`);
    placeSlice(this.memory.spec, this.state.arrays(this.generation ^ 1).params, message.units, message.params);
    return this.cover(message.units);
  }

  /**
   * Records a slice's units (refused if they overlap units already covered: some unit would then never be
   * updated); commits the step once every unit is covered and (sharded) its own were applied. A server
   * plan's replica owns no units; its moments, which nothing here reads, stay as they were.
   */
  private cover(units: Range[]): boolean {
    units.forEach(([u0, u1], l) => {
      const clash = (this.covered[l] ??= []).find(([a, b]) => u0 < b && a < u1 && u0 < u1);
      if (clash) throw new ProtocolError(`slice: units ${u0}–${u1 - 1} of layer ${l} overlap units ${clash[0]}–${clash[1] - 1} already applied at step ${this.step}`);
      if (u0 < u1) this.covered[l].push([u0, u1]);
    });
    if ((this.plan === 'sharded' && !this.ownApplied) || unitsIn(this.covered.flat()) < this.allUnits) return false;
    this.committed();
    return true;
  }

  /** The step is applied: the next generation becomes the state, and nothing of the step is held any more. */
  private committed(): void {
    this.state.commit();
    this.batchRows = 0;
    this.held = [];
    this.covered = [];
    this.ownApplied = false;
  }

  /** The weight pass and Adam over the rows in the batch buffers: the replica moves to the next step. */
  private async apply(batch: number): Promise<void> {
    const results = await this.team.runPass(this.state.weightTasks(batch, this.team.size));
    if (results.some((r) => r.nonFiniteLayers.length > 0)) throw new ProtocolError(`update: step ${this.step} gave a non-finite gradient on this replica`);
    this.committed();
  }

  /** SHA-256 of its parameters at `step` (the state before a step applied early is still there). */
  async checksumAt(step: number): Promise<string> {
    await this.onHost(step);
    return paramsSha256(this.state.arrays(this.state.generation ^ this.back(step)).params);
  }

  /**
   * Brings the state of `step` back from the device (a GPU replica applies its steps there) before it is
   * read here: its latest, or the one before a step applied early.
   */
  private async onHost(step: number): Promise<void> {
    if (!this.state.onDevice) return;
    const back = this.back(step);
    await this.team.runPass([{ kind: 'pull', step: this.step - back, generation: this.generation ^ back, committed: !back }]);
  }

  /** 1 when `step` is the state before the step this replica applied early, else 0. */
  private back(step: number): number {
    return this.appliedEarly && step === this.step - 1 ? 1 : 0;
  }

  /**
   * The replica's state, for a coordinator that does not apply the steps itself; with `units` (an owner of
   * a sharded run, whose moments are current only there) packed slices of those units.
   */
  async stateAt(step: number, units?: Range[]): Promise<ReplicaState> {
    // A step applied early left the state before it intact in the other generation.
    if (this.plan === 'server') throw new ProtocolError('snapshot: this replica only mirrors the parameters (server plan): the coordinator holds the moments');
    const back = this.back(step);
    if (step !== this.step - back) throw new ProtocolError(`snapshot: asked for step ${step}, this replica is at step ${this.step}`);
    await this.onHost(step);
    const { params, m, v } = this.state.arrays(this.generation ^ back);
    if (!units) return { t: 'replicaState', step, params, m, v };
    const pack = (a: Float32Array) => packSlice(this.memory.spec, a, units);
    return { t: 'replicaState', step, params: pack(params), m: pack(m), v: pack(v) };
  }

  close(): Promise<void> {
    return this.team.close();
  }
}

function emptyDataset(features: number, classes: number): Dataset {
  const empty = { count: 0, images: new Float32Array(0), targets: new Float32Array(0), labels: new Uint8Array(0) };
  return { name: 'none', dir: '', features, classes, train: empty, test: empty, sha256: '' };
}

