/**
 * The hub's one request/response mechanism. Whatever the coordinator asks a peer for (the rows of a
 * step, its replica's state, a checksum) is registered in that peer's Pending under its kind, with what
 * was asked (the key), and ends exactly once: resolved by the answer, rejected when the peer drops, or
 * timed out. Validation checks an answer against the open request's key (an answer nobody asked for is
 * a protocol error), so the coordinator's view of what a peer owes is read from here and nowhere else.
 *
 * Why one mechanism: rows, snapshots and checksums each had their own (fields on the peer, a map of
 * callbacks), each clearing timers and failing on a drop in its own way. What a late answer costs is the
 * caller's policy: rows, slices and snapshots drop the peer, a checksum only goes unanswered.
 */
import type { Range } from '../plan.js';
import type { ReplicaState, RowsDone, RowsForm, SliceDone, SliceMessage } from './messages.js';
import { stallTolerantTimeout, type StallTimer } from './stall_timer.js';

/** Each kind of request: what it asked for (its key) and what it resolves with. */
export interface RequestKinds {
  rows: { key: { step: number; range: Range } & RowsForm; answer: RowsDone };
  /** units: the owner's units of a sharded run (the state comes as packed slices of them). */
  snapshot: { key: { step: number; units?: Range[] }; answer: ReplicaState };
  /** An owner's units of a sharded step, applied: their new parameters (or, sent to the others over peer links, that they went). */
  slice: { key: { step: number; units: Range[] }; answer: SliceMessage | SliceDone };
  checksum: { key: { step: number }; answer: string };
}
export type RequestKind = keyof RequestKinds;
export type RequestKey<K extends RequestKind> = RequestKinds[K]['key'];
export type RequestAnswer<K extends RequestKind> = RequestKinds[K]['answer'];

interface Open<K extends RequestKind> {
  key: RequestKey<K>;
  resolve(answer: RequestAnswer<K>): void;
  reject(error: Error): void;
  timer: StallTimer;
}

/** The requests one peer has open, at most one of each kind. */
export class Pending {
  private readonly open = new Map<RequestKind, Open<RequestKind>>();
  /** Set once the peer is gone: later requests fail at once with it. */
  private closed?: Error;

  /**
   * Registers a request (a new one of a kind supersedes the open one, which is rejected) and resolves
   * with its answer. After `timeoutMs`, `onTimeout` runs with the request still open: the hub drops the
   * peer there, which rejects it with the reason. A request still open after that is rejected as timed
   * out, and the peer stays. The deadline follows stall_timer.ts: an answer that came by it but is not read yet
   * (the coordinator was held up) still counts.
   */
  expect<K extends RequestKind>(kind: K, key: RequestKey<K>, timeoutMs: number, onTimeout?: () => void): Promise<RequestAnswer<K>> {
    if (this.closed) return Promise.reject(this.closed);
    this.take(kind)?.reject(new Error(`superseded by a new ${kind} request`));
    return new Promise<RequestAnswer<K>>((resolve, reject) => {
      const expire = () => {
        onTimeout?.();
        this.take(kind, request)?.reject(new Error(`no ${kind} answer within ${timeoutMs} ms`));
      };
      const request: Open<K> = { key, resolve, reject, timer: stallTolerantTimeout(timeoutMs, expire) };
      this.open.set(kind, request as unknown as Open<RequestKind>);
    });
  }

  /** What the open request of `kind` asked for, or undefined when none is open. */
  keyOf<K extends RequestKind>(kind: K): RequestKey<K> | undefined {
    return this.open.get(kind)?.key as RequestKey<K> | undefined;
  }

  /** Ends the open request of `kind` with its answer; false if none was open. */
  answer<K extends RequestKind>(kind: K, value: RequestAnswer<K>): boolean {
    const request = this.take(kind);
    request?.resolve(value);
    return request !== undefined;
  }

  /** Ends the open request of `kind` with an error; false if none was open. */
  fail(kind: RequestKind, error: Error): boolean {
    const request = this.take(kind);
    request?.reject(error);
    return request !== undefined;
  }

  /** The peer is gone: every open request fails with `error`, and so does every later one. */
  close(error: Error): void {
    this.closed ??= error;
    for (const kind of [...this.open.keys()]) this.fail(kind, error);
  }

  /** Removes and returns the open request of `kind` (only if it is `only`, when given), its timer stopped. */
  private take<K extends RequestKind>(kind: K, only?: Open<K>): Open<K> | undefined {
    const request = this.open.get(kind) as Open<K> | undefined;
    if (!request || (only && request !== only)) return undefined;
    this.open.delete(kind);
    request.timer.clear();
    return request;
  }
}
