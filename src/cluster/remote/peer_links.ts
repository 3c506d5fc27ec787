/**
 * A worker's links to the other members of a sharded run (worker side): its peer listener, the links of the
 * current admission (an epoch of the roster the coordinator hands out in the state message), and what came
 * over them — the others' rows and slices — until the replica takes them (the inbox).
 *
 * Who links with whom: every member with every other (a full mesh, a few members); of each pair the member
 * with the higher id dials, the other accepts. Both prove they hold the pair's key (auth.ts pairKey: an HMAC
 * of the run's peer secret, never the token) by an HMAC challenge each way; every frame after that is
 * validated (validation.ts validateFromPeer) before it is kept. Once every link is up, or LINK_WAIT_MS passed,
 * the coordinator is told which are (peerLinks): it routes a step between peers only when every member holds
 * every link, and through itself otherwise. A dial that ends before its handshake did (a reset, a refused
 * connect) is dialled again a few times (REDIAL_BACKOFF_MS), then reported at once, and dialled again every
 * REDIAL_EVERY_MS for the rest of the epoch; a link that comes up late is reported too, and the steps go
 * between peers from then on. A link that breaks once up fails every
 * wait of its epoch (PeerLost): the member gives up what it was asked and says so, and the coordinator sends
 * everyone the state again.
 *
 * The replica is driven by the coordinator's messages alone, in their order; what the links bring is only
 * kept here, and taken by those messages' handlers (worker_session.ts) when they need it.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { newNonce, pairKey, proof, proofMatches } from './auth.js';
import { decodeRaw, encode } from './codec.js';
import { ProtocolError, type PeerHello, type PeerLinksReport, type PeerRoster, type RowsDone, type SliceMessage, type ToPeer } from './messages.js';
import { PeerLink } from './peer_link.js';
import { validateFromPeer, type PeerView } from './validation.js';
import { joinHostPort, splitHostPort } from '../../config.js';
import type { Range } from '../plan.js';

/** How long a new epoch's links may take before the coordinator is told which came up (the rest: relay). */
export const LINK_WAIT_MS = 3000;
/** How long an unauthenticated connection may take to prove itself. */
const HANDSHAKE_MS = 5000;
/**
 * The waits before each new dial of a link that ended before its handshake did (a reset, a refused connect):
 * three more tries, 1.3 s in all, so that a link that comes up on one is in the report of LINK_WAIT_MS.
 */
export const REDIAL_BACKOFF_MS: readonly number[] = [100, 300, 900];
/** After those, the wait between dials for the rest of the epoch (a connect attempt: nearly free). */
export const REDIAL_EVERY_MS = 5000;
/** The largest frame before a link's handshake is done (a handshake message is ~150 bytes). */
const PEER_HANDSHAKE_FRAME_BYTES = 4096;
/** Connections waiting for their handshake at once: more are refused (a stranger cannot pile them up). */
const MAX_PENDING = 64;

/** A wait on the links that cannot end well: a link of the epoch broke, or the coordinator sent a new state. */
export class PeerLost extends Error {
  override name = 'PeerLost';
}

export interface PeerLinksOptions {
  /** [HOST:]PORT to listen on ('' or absent: an ephemeral port on the address the coordinator is reached from); for --peer-listen off no PeerLinks is made. */
  listen?: string;
  /** HOST[:PORT] the others should dial (default: the listening address). */
  advertise?: string;
  /** The largest frame a peer may send, until the coordinator's welcome says this run's (frameLimit). */
  maxFrameBytes: number;
  /** The wait between dials once the quick ones failed (default REDIAL_EVERY_MS; tests shorten it). */
  redialEveryMs?: number;
}

/** Where the links' news go: the current connection to the coordinator (set per connection). */
export interface PeerLinksSink {
  /** Tells the coordinator which links are up. */
  report(report: PeerLinksReport): void;
  /** A line for the worker's log. */
  note(message: string): void;
}

interface Inbound {
  link: PeerLink;
  nonce: Uint8Array;
  hello?: PeerHello;
  timer: NodeJS.Timeout;
  /** The member it proved to be: its frames are a link's while this.links holds it under that id. */
  id?: number;
}

export class PeerLinks {
  private server?: Server;
  private address?: string;
  private roster?: PeerRoster;
  /** This epoch's authenticated links, by member id. */
  private readonly links = new Map<number, PeerLink>();
  /** Connections still proving themselves (or waiting for this member to learn their epoch). */
  private readonly inbound = new Set<Inbound>();
  /** What came over this epoch's links and is not taken yet. */
  private rows: RowsDone[] = [];
  private slices: SliceMessage[] = [];
  /** Set when a link of this epoch broke or a new state is coming: every wait fails with it. */
  private lost?: string;
  private wake: (() => void)[] = [];
  private reported = false;
  /** A new state is on its way: a wait it ended owes the coordinator nothing. */
  private superseded = false;
  private reportTimer?: NodeJS.Timeout;
  /** Dials of this epoch waiting for their next try (a link that ended in its handshake). */
  private readonly redials = new Set<NodeJS.Timeout>();

  /** What validation knows now (the replica's model and step), and where news go: the current connection's. */
  private view: () => Omit<PeerView, 'linked'> = () => ({ spec: undefined, batchSize: 0, step: 0 });
  private sink: PeerLinksSink = { report: () => {}, note: () => {} };

  /** The largest frame a peer may send: the run's, as the coordinator's welcome said. */
  private maxFrameBytes: number;

  constructor(private readonly options: PeerLinksOptions) {
    this.maxFrameBytes = options.maxFrameBytes;
  }

  /** Links formed from now on take frames up to `bytes` (the worker's own limit, raised by each welcome). */
  frameLimit(bytes: number): void {
    this.maxFrameBytes = bytes;
  }

  /** A connection to the coordinator began: what validation knows and where news go. */
  attach(view: () => Omit<PeerView, 'linked'>, sink: PeerLinksSink): void {
    this.view = view;
    this.sink = sink;
  }

  /**
   * Starts the listener (once: a reconnection keeps it) on --peer-listen, or an ephemeral port on `localHost`,
   * the address this worker reaches the coordinator from; resolves with the address to announce.
   */
  async listen(localHost: string): Promise<string> {
    if (this.address) return this.address;
    const { host, port } = parseListen(this.options.listen ?? '', localHost);
    const server = createServer((socket) => this.accepted(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    server.on('error', (e) => this.sink.note(`peer listener: ${e.message}`));
    this.server = server;
    const bound = server.address();
    const boundPort = typeof bound === 'object' && bound ? bound.port : port;
    this.address = advertised(this.options.advertise, host, boundPort);
    return this.address;
  }

  /** Fault injection (tests): every link of this epoch ends at once, as a network failure would end them. */
  cut(): void {
    for (const link of this.links.values()) link.socket.destroy();
  }

  /** Ends every link and the listener. */
  close(): void {
    this.reset('the worker stopped');
    this.server?.close();
    this.server = undefined;
  }

  /**
   * A new state: links and what came over them belong to the epoch before, and every wait ends (the state
   * is handled after the message a handler waits in). Called as soon as the state's frame arrives.
   */
  supersede(): void {
    this.superseded = true;
    this.fail('the coordinator sent the state again');
  }

  /** The state's roster (or none: the steps' bytes go through the coordinator): links of a new epoch. */
  join(roster: PeerRoster | undefined): void {
    this.reset(roster ? `epoch ${roster.epoch} began` : 'no peer links in this admission');
    this.superseded = false;
    this.roster = roster;
    if (!roster) return;
    this.lost = undefined;
    this.reported = false;
    clearTimeout(this.reportTimer);
    this.reportTimer = setTimeout(() => this.sendReport(), LINK_WAIT_MS);
    this.reportTimer.unref();
    for (const pending of [...this.inbound]) if (pending.hello) this.authenticate(pending, pending.hello);
    for (const member of roster.members) if (member.id < roster.self) this.dial(roster, member.id, member.address);
  }

  /** Whether every member of the roster is linked and nothing broke: a step's bytes can go between peers. */
  get complete(): boolean {
    return !!this.roster && !this.lost && this.links.size === this.roster.members.length - 1;
  }

  /** Sends a frame to every linked member; throws PeerLost unless every one is linked. */
  broadcast(message: RowsDone | SliceMessage): void {
    if (!this.complete) throw new PeerLost(this.lost ?? 'not every member is linked');
    const frame = encode(message);
    // A link closing but not closed yet (its close event still to come) takes nothing: that is a lost link too.
    for (const link of this.links.values()) {
      if (link.send(frame)) continue;
      this.fail('a peer link is closing');
      throw new PeerLost('a peer link is closing');
    }
  }

  /**
   * The rows of step `step` that came from peers and cover part of `gaps` (taken out of the inbox); waits
   * until at least one came when none has. Throws PeerLost when none can come any more.
   */
  async takeRows(step: number, gaps: Range[]): Promise<RowsDone[]> {
    for (;;) {
      const inGap = (r: RowsDone) => r.step === step && gaps.some(([g0, g1]) => r.range[0] >= g0 && r.range[1] <= g1);
      const taken = this.rows.filter(inGap);
      if (taken.length > 0) {
        this.rows = this.rows.filter((r) => !inGap(r));
        return taken;
      }
      await this.changed();
    }
  }

  /** The slices of step `step` that came from peers (taken out of the inbox); waits for one as takeRows. */
  async takeSlices(step: number): Promise<SliceMessage[]> {
    for (;;) {
      const taken = this.slices.filter((s) => s.step === step);
      if (taken.length > 0) {
        this.slices = this.slices.filter((s) => s.step !== step);
        return taken;
      }
      await this.changed();
    }
  }

  /** Resolves when something came or changed; throws PeerLost when a wait can no longer end well. */
  private async changed(): Promise<void> {
    if (this.lost !== undefined) throw new PeerLost(this.lost);
    if (!this.roster) throw new PeerLost('this admission has no peer links');
    await new Promise<void>((resolve) => this.wake.push(resolve));
    if (this.lost !== undefined) throw new PeerLost(this.lost);
  }

  private notify(): void {
    for (const wake of this.wake.splice(0)) wake();
  }

  /** Every wait of this epoch ends with `reason`; the coordinator is told what is still linked. */
  private fail(reason: string): void {
    if (this.lost !== undefined) return;
    this.lost = reason;
    this.notify();
  }

  private reset(reason: string): void {
    this.fail(reason);
    clearTimeout(this.reportTimer);
    for (const timer of this.redials) clearTimeout(timer);
    this.redials.clear();
    const links = [...this.links.values()];
    this.links.clear();
    for (const link of links) link.close(reason);
    this.rows = [];
    this.slices = [];
    this.roster = undefined;
  }

  /**
   * A handler gave up what it was asked because a wait failed: the coordinator is told (its answer will
   * not come) unless a new state is what ended the wait (nothing is owed then).
   */
  abandon(abandoned: PeerLinksReport['abandoned']): void {
    if (this.roster && this.lost !== undefined && !this.superseded) this.sendReport(abandoned);
  }

  private sendReport(abandoned?: PeerLinksReport['abandoned']): void {
    clearTimeout(this.reportTimer);
    const roster = this.roster;
    if (!roster) return;
    this.reported = true;
    this.sink.report({ t: 'peerLinks', epoch: roster.epoch, linked: [...this.links.keys()].sort((a, b) => a - b), ...(abandoned ? { abandoned } : {}) });
  }

  // ------------------------------------------------------------ links

  /** Dials member `id` (`tries`: the dials of this link before this one, which ended in their handshake). */
  private dial(roster: PeerRoster, id: number, address: string, tries = 0): void {
    const [host, port] = splitHostPort(address);
    const socket = connect({ host, port });
    let nonce: Uint8Array | undefined;
    /** Linked, or already ended: a later close is a lost link's (broken) or nothing, never a failed dial. */
    let settled = false;
    const key = pairKey(roster.secret, roster.epoch, roster.self, id);
    const ended = (reason: string) => {
      if (this.links.get(id) === link) return this.broken(id, link, reason);
      link.close(reason);
      if (settled) return;
      settled = true;
      this.dialFailed(roster, id, address, tries, reason);
    };
    const link: PeerLink = new PeerLink(socket, PEER_HANDSHAKE_FRAME_BYTES, {
      frame: (frame) => {
        try {
          const view = this.view();
          const message = validateFromPeer(decodeRaw(frame), { linked: this.links.get(id) === link, ...view });
          if (message.t === 'peerChallenge' && !nonce) {
            nonce = newNonce();
            link.send(encode({ t: 'peerHello', epoch: roster.epoch, from: roster.self, nonce, mac: proof(key, 'dialer', message.nonce) }));
          } else if (message.t === 'peerWelcome' && nonce && this.links.get(id) !== link) {
            if (!proofMatches(key, 'listener', nonce, message.proof)) throw new ProtocolError(`peer ${id} did not prove it holds the pair's key`);
            settled = true;
            if (tries > 0) this.sink.note(`peer link to worker ${id} up after ${tries + 1} dials`);
            this.linked(roster, id, link);
          } else this.received(message, view);
        } catch (e) {
          ended(`peer ${id} (${address}): ${(e as Error).message}`);
        }
      },
      closed: (reason) => ended(`peer ${id} (${address}): ${reason}`),
    });
    socket.setTimeout(HANDSHAKE_MS, () => {
      if (this.links.get(id) !== link) ended(`peer ${id} (${address}): handshake timed out`);
    });
  }

  /**
   * A dial of this epoch ended before its handshake did (a reset, a refused connect, a refusal): dialled again
   * after a backoff; once the quick tries failed, the coordinator is told at once which links are up (its
   * steps go through the coordinator), as for any lost link, and the dials go on, slowly, for the rest of the
   * epoch: a link that comes up is reported (linked) and the steps go between peers again.
   */
  private dialFailed(roster: PeerRoster, id: number, address: string, tries: number, reason: string): void {
    if (this.roster !== roster) return;
    const quick = REDIAL_BACKOFF_MS[tries];
    const wait = quick ?? this.options.redialEveryMs ?? REDIAL_EVERY_MS;
    if (quick !== undefined) this.sink.note(`peer link to worker ${id} ended in its handshake (${reason}): dialling again in ${wait} ms`);
    else if (tries === REDIAL_BACKOFF_MS.length) {
      this.sink.note(`no peer link to worker ${id} after ${tries + 1} dials (the last: ${reason}): steps go through the coordinator; dialling again every ${wait / 1000} s`);
      if (!this.reported && !this.superseded) this.sendReport();
    }
    const timer = setTimeout(() => {
      this.redials.delete(timer);
      if (this.roster === roster && !this.links.has(id)) this.dial(roster, id, address, tries + 1);
    }, wait);
    timer.unref();
    this.redials.add(timer);
  }

  /** A connection from another member (or anyone): challenged, and kept only if it proves it holds a pair's key. */
  private accepted(socket: Socket): void {
    if (this.inbound.size >= MAX_PENDING) {
      socket.destroy();
      return;
    }
    const pending = { nonce: newNonce() } as Inbound;
    pending.link = new PeerLink(socket, PEER_HANDSHAKE_FRAME_BYTES, {
      frame: (frame) => {
        try {
          const known = pending.id !== undefined && this.links.get(pending.id) === pending.link;
          const view = this.view();
          const message = validateFromPeer(decodeRaw(frame), { linked: known, ...view });
          if (known) return this.received(message, view);
          if (message.t !== 'peerHello' || pending.hello) throw new ProtocolError(`expected peerHello, got ${message.t}`);
          pending.hello = message;
          // A dialer that learnt of this epoch before this member did waits here until its state comes.
          if (this.roster && message.epoch <= this.roster.epoch) this.authenticate(pending, message);
        } catch (e) {
          this.inbound.delete(pending);
          clearTimeout(pending.timer);
          pending.link.close(`peer handshake: ${(e as Error).message}`);
        }
      },
      closed: () => {
        this.inbound.delete(pending);
        clearTimeout(pending.timer);
        if (pending.id !== undefined) this.broken(pending.id, pending.link, `peer ${pending.id}: link closed`);
      },
    });
    pending.timer = setTimeout(() => {
      this.inbound.delete(pending);
      pending.link.close('peer handshake timed out');
    }, HANDSHAKE_MS);
    pending.timer.unref();
    this.inbound.add(pending);
    pending.link.send(encode({ t: 'peerChallenge', nonce: pending.nonce }));
  }

  /** Checks a dialer's hello against this epoch's roster and the pair's key; welcomes it, or ends the connection. */
  private authenticate(pending: Inbound, hello: PeerHello): void {
    const roster = this.roster!;
    this.inbound.delete(pending);
    clearTimeout(pending.timer);
    const member = roster.members.find((m) => m.id === hello.from);
    const key = pairKey(roster.secret, roster.epoch, roster.self, hello.from);
    if (hello.epoch !== roster.epoch || !member || hello.from <= roster.self || !proofMatches(key, 'dialer', pending.nonce, hello.mac)) {
      pending.link.send(encode({ t: 'error', message: 'peer link refused: not a member of this epoch holding the pair\'s key' }));
      pending.link.close('refused');
      this.sink.note(`refused a peer link from ${pending.link.socket.remoteAddress ?? 'unknown'}: not a member of epoch ${roster.epoch} holding the pair's key`);
      return;
    }
    pending.link.send(encode({ t: 'peerWelcome', proof: proof(key, 'listener', hello.nonce) }));
    pending.id = hello.from;
    this.linked(roster, hello.from, pending.link);
  }

  /**
   * A link of this epoch proved itself. One it replaces (the dialer dialled again: its end of the first died in
   * the handshake, unknown to this end) carried no step: it is closed as no lost link. Reported when every
   * link is up — again if a report without one went before (the coordinator then routes between peers). An
   * epoch that lost a link keeps no new one: its waits fail whatever comes (the other end learns it as a
   * lost link), and it reports nothing linked that could route a step between peers.
   */
  private linked(roster: PeerRoster, id: number, link: PeerLink): void {
    if (this.roster !== roster) return link.close('epoch over');
    if (this.lost !== undefined) return link.close(`this member's epoch ${roster.epoch} lost a link`);
    const replaced = this.links.get(id);
    this.links.set(id, link);
    replaced?.close('replaced by a new link from the same member');
    link.socket.setTimeout(0);
    link.limit(this.maxFrameBytes);
    if (this.complete) this.sendReport();
  }

  /**
   * A link's rows or slice, validated: kept until the replica takes it. What two steps can bring is bounded
   * (each other member's rows and a slice a layer, for this step and the next, twice over): a member that
   * sends more is cut off, so that it cannot grow this process.
   */
  private received(message: ToPeer, view: Omit<PeerView, 'linked'>): void {
    const roster = this.roster;
    const layers = view.spec?.sizes.length ?? 2;
    if (roster && this.rows.length + this.slices.length >= 4 * roster.members.length * layers) throw new ProtocolError('more rows and slices than two steps bring');
    if (message.t === 'rowsDone') this.rows.push(message);
    else if (message.t === 'slice') this.slices.push(message);
    else if (message.t === 'error') throw new ProtocolError(`the peer reported: ${message.message}`);
    else throw new ProtocolError(`${message.t}: not expected on a link`);
    this.notify();
  }

  /** A link of this epoch ended: every wait fails, and the coordinator learns what is still linked. */
  private broken(id: number, link: PeerLink, reason: string): void {
    link.close(reason);
    if (this.links.get(id) !== link) return;
    this.links.delete(id);
    this.sink.note(`peer link lost: ${reason}`);
    this.fail(reason);
    if (this.reported) this.sendReport();
  }
}

/** --peer-listen's [HOST:]PORT (checked by config.ts), or `localHost` and an ephemeral port when it is empty. */
function parseListen(spec: string, localHost: string): { host: string; port: number } {
  if (spec === '') return { host: localHost, port: 0 };
  if (/^\d+$/.test(spec)) return { host: localHost, port: Number(spec) };
  const [host, port] = splitHostPort(spec);
  return { host, port };
}

/** The address to announce: --advertise's HOST[:PORT] (its port defaults to the bound one), else the bound one. */
function advertised(advertise: string | undefined, host: string, port: number): string {
  if (!advertise) return joinHostPort(host, port);
  let target: [string, number];
  try {
    target = splitHostPort(advertise);
  } catch {
    target = [advertise.replace(/^\[|\]$/g, ''), port];
  }
  return joinHostPort(...target);
}
