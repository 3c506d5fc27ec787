/**
 * The coordinator's side of the peer links (the workers' side: peer_links.ts): who links with whom, and
 * whether a step's bytes can go between peers now.
 *
 * At each sharded admission every member is sent the state; when every one announced a peer listener
 * (hello.peerAddress), each state also carries the roster of a new epoch — the members' ids and addresses,
 * and the run's peer secret, random and never the token, from which each pair derives its key. The members
 * link and report (peerLinks). A step goes between peers (`direct`) only while every member's last report
 * of this epoch holds a link to every other; otherwise its rows and slices go through here, as they always
 * could (the relay). A report that a link broke after steps went between peers makes the mesh `broken`: the
 * members are sent the state again (ReplicaPlan.stale), from which a new epoch links anew. Before any step
 * went between peers a missing link tears nothing: when a dial tried again brings it, the route comes back.
 */
import { newPeerSecret } from './auth.js';
import type { PeerLinksReport, PeerRoster } from './messages.js';
import type { RemotePeer } from './peer.js';

export class PeerMesh {
  private readonly secret = newPeerSecret();
  private epoch = 0;
  private members: RemotePeer[] = [];
  /** What each member of this epoch reported linked. */
  private readonly reports = new Map<RemotePeer, number[]>();
  /** Steps of this epoch went between peers: a link lost now tears the step under way. */
  private used = false;
  /**
   * A member gave up a step for a lost link, or reported one missing after steps went between peers: relay
   * until the members are sent the state again (broken). A link missing before any step went between peers
   * tears nothing: the route comes back once every member reports every link (a dial tried again).
   */
  private torn = false;
  /** The route was last announced as through the coordinator (one line per change, not per report). */
  private relaying = false;

  constructor(
    /** Whether peer links are allowed at all (no: --verify keeps every row on the coordinator's path). */
    private readonly enabled: boolean,
  ) {}

  /**
   * A new admission of `members`, all sent the state now: a roster for each when they all announced a
   * listener (and there are two or more), else none (their steps go through the coordinator).
   */
  admit(members: RemotePeer[]): ((peer: RemotePeer) => PeerRoster) | undefined {
    this.reports.clear();
    this.used = false;
    this.torn = false;
    this.relaying = false;
    this.members = members;
    if (!this.capable(members)) {
      this.members = [];
      return undefined;
    }
    const epoch = ++this.epoch;
    const list = members.map((p) => ({ id: p.id, address: p.hello!.peerAddress! }));
    return (peer) => ({ epoch, secret: this.secret, self: peer.id, members: list });
  }

  /** Whether these members would be handed a roster: links allowed, two or more, each announcing a listener. */
  capable(members: RemotePeer[]): boolean {
    return this.enabled && members.length >= 2 && members.every((p) => !!p.hello?.peerAddress);
  }

  /**
   * A member's report of its links: whether it gave up an answer it owed (its open requests then fail), and
   * what changed, in words, when the route of the steps did (every member linked; or one not, or no longer).
   */
  report(peer: RemotePeer, report: PeerLinksReport): { abandoned: boolean; news?: string } {
    const abandoned = report.abandoned !== undefined;
    if (report.epoch !== this.epoch || !this.members.includes(peer)) return { abandoned };
    const wasWhole = this.whole;
    this.reports.set(peer, report.linked);
    const missing = this.members.filter((p) => p !== peer && !report.linked.includes(p.id));
    // A member reports once every link is up, or once the wait for them is over, or when one broke.
    if (abandoned || (missing.length > 0 && this.used)) this.torn = true;
    const epoch = `epoch ${this.epoch}, ${this.members.length} members`;
    if ((missing.length > 0 || abandoned) && !this.relaying) {
      this.relaying = true;
      const what = missing.length > 0 ? `holds no link to ${missing.map((p) => `worker ${p.id}`).join(', ')}` : 'lost a peer link in the middle of a step';
      return { abandoned, news: `peer links (${epoch}): ${peer.name} ${what}: steps go through the coordinator${this.used ? ', from the state sent again' : ''}` };
    }
    if (!wasWhole && this.whole) {
      this.relaying = false;
      return { abandoned, news: `peer links (${epoch}): every member linked to every other: rows and slices go between them` };
    }
    return { abandoned };
  }

  /** Every member's last report of this epoch holds a link to every other, and no step was torn. */
  private get whole(): boolean {
    return (
      !this.torn &&
      this.members.length >= 2 &&
      this.members.every((p) => {
        const linked = this.reports.get(p);
        return linked !== undefined && this.members.every((q) => q === p || linked.includes(q.id));
      })
    );
  }

  /**
   * Whether the step about to be asked for can go between peers: every member of this epoch still here and
   * ready, each reporting a link to every other, none lost. Taking it marks the epoch used.
   */
  direct(ready: RemotePeer[]): boolean {
    if (!this.whole || ready.length !== this.members.length || !ready.every((p) => this.members.includes(p))) return false;
    this.used = true;
    return true;
  }

  /** A link broke after steps went between peers: the members must be sent the state again. */
  get broken(): boolean {
    return this.torn;
  }
}
