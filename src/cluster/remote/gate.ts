/**
 * The hub's door: a connection from its arrival until it has authenticated or is gone. Admission control
 * (admission.ts) answers first, before the upgrade (listener.ts); an admitted connection is challenged, may send only a few frames' worth
 * before it authenticates and must do so within authTimeoutMs; its hello must prove the token (auth.ts)
 * and name the run's engine and device. A stranger told to go is hung up on without reading it further.
 * Kept apart so that what an unauthenticated connection may cost is decided in one place, and the hub
 * deals with members.
 */
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { mixedDevices } from '../../errors.js';
import { Admission, ADMISSION_DEFAULTS, MAX_UNAUTHENTICATED_BYTES, RefusalLog, type AdmissionOptions, type AdmissionStats } from './admission.js';
import { proof, proofMatches } from './auth.js';
import { closeReason } from './codec.js';
import type { HubContext } from './hub_context.js';
import { MAX_FRAME_BYTES, PROTOCOL_VERSION, RefusedError, type Hello } from './messages.js';
import type { RemotePeer } from './peer.js';
import { stallTolerantTimeout } from './stall_timer.js';
import type { Device, EngineName } from '../../engine/engine.js';

/** The admission control's settings (admission.ts) are optional: ADMISSION_DEFAULTS fill what is not given. */
export interface GateOptions extends Partial<AdmissionOptions> {
  token?: string;
  engine: EngineName;
  /** The run's device: a worker on another engine or device is refused unless allowMixedDevices. */
  device: Device;
  allowMixedDevices: boolean;
  /** How long a new connection may take to authenticate. */
  authTimeoutMs: number;
  /** The heartbeat period, told to a worker in its welcome. */
  heartbeatMs: number;
}

export class Gate {
  private readonly admission: Admission;
  private readonly refusals: RefusalLog;
  /** Sockets of strangers told to go, until they are gone (hangUp). */
  private readonly hungUp = new Set<Socket>();

  constructor(
    private readonly options: GateOptions,
    private readonly hub: HubContext,
    /** The largest frame of this run (codec.ts maxFrameBytes), told to each worker in its welcome. */
    private readonly maxFrameBytes: number,
  ) {
    const keys = Object.keys(ADMISSION_DEFAULTS) as (keyof AdmissionOptions)[];
    this.admission = new Admission(Object.fromEntries(keys.map((k) => [k, options[k] ?? ADMISSION_DEFAULTS[k]])) as unknown as AdmissionOptions);
    this.refusals = new RefusalLog((count, reason) => hub.report({ type: 'refused', count, reason }));
  }

  /** Connections authenticating now, the most there were at once, and how many were turned away. */
  get stats(): AdmissionStats {
    return this.admission.stats;
  }

  /**
   * Whether a connection from `ip` may start authenticating, asked before its upgrade (listener.ts):
   * undefined lets it in (it holds an admission slot until release or abandoned), or why not (logged
   * without flooding the log).
   */
  admit(ip: string): string | undefined {
    const refusal = this.admission.admit(ip);
    if (refusal) this.refusals.add(refusal);
    return refusal;
  }

  /** A connection let in whose upgrade never completed: its slot is given back, as a failure of its address. */
  abandoned(ip: string): void {
    const blocked = this.admission.settle(ip, false);
    if (blocked) this.hub.report({ type: 'rejected', peer: ip, reason: blocked });
  }

  /** Starts a let-in peer's authentication: its input limited, its deadline set, its challenge sent. */
  challenge(peer: RemotePeer): void {
    const { socket } = peer;
    // Until it authenticated a peer may send only a few frames' worth: a hello is a few hundred bytes.
    const limitInput = this.hub.guarded(peer, 'data', () => {
      if (!peer.holdsAuthSlot) return void socket.off('data', limitInput);
      if (socket.bytesRead > MAX_UNAUTHENTICATED_BYTES) this.hub.reject(peer, `sent more than ${MAX_UNAUTHENTICATED_BYTES} bytes before authenticating`);
    });
    socket.on('data', limitInput);
    const ms = this.options.authTimeoutMs;
    // By stall_timer.ts's rule: a hello that came by the deadline but is not read yet (the coordinator was held up) counts.
    peer.authTimer = stallTolerantTimeout(ms, this.hub.guarded(peer, 'authentication timer', () => this.hub.reject(peer, `did not authenticate within ${ms} ms`)));
    this.hub.send(peer, { t: 'challenge', protocol: PROTOCOL_VERSION, nonce: peer.challenge, engine: this.options.engine, device: this.options.device });
  }

  /**
   * Takes a peer's hello: the token must be proved, then the engine and device must be the run's (or
   * mixed devices allowed), else a RefusedError says why. A peer that passes is welcomed and joining;
   * returns its engine/device.
   */
  authenticate(peer: RemotePeer, hello: Hello): string {
    const token = this.options.token;
    if (token && !proofMatches(token, 'worker', peer.challenge, hello.mac)) throw new RefusedError('authentication failed: wrong or missing token');
    // It proved the token: whatever else is wrong with it is a configuration error, not an attack.
    this.release(peer, true);
    const [ours, theirs] = [`${this.options.engine}/${this.options.device}`, `${hello.engine}/${hello.device}`];
    if (theirs !== ours && !this.options.allowMixedDevices) throw new RefusedError(mixedDevices(ours, theirs).message);
    peer.authTimer?.clear();
    peer.hello = hello;
    peer.status = 'joining';
    this.hub.send(peer, {
      t: 'welcome',
      proof: token ? proof(token, 'coordinator', hello.nonce) : new Uint8Array(0),
      workerId: peer.id,
      heartbeatMs: this.options.heartbeatMs,
      maxFrameBytes: Math.min(MAX_FRAME_BYTES, this.maxFrameBytes),
    });
    return theirs;
  }

  /** Gives back a peer's admission slot, once: it authenticated, or it failed to (counted against its address). */
  release(peer: RemotePeer, authenticated: boolean): void {
    if (!peer.holdsAuthSlot) return;
    peer.holdsAuthSlot = false;
    const blocked = this.admission.settle(peer.ip, authenticated);
    if (blocked) this.hub.report({ type: 'rejected', peer: peer.ip, reason: blocked });
  }

  /**
   * Closes a connection that never authenticated without reading it any further: the close frame with
   * the reason, then the end of the stream. Nothing it sends after is buffered (otherwise up to a whole
   * frame of the size limit, for as long as the close grace), and the peer sees the close at once; its
   * socket is destroyed at the end of the close grace, or when the hub closes.
   */
  hangUp(ws: WebSocket, socket: Socket, code: number, reason: string): void {
    ws.close(code, closeReason(reason));
    ws.pause();
    socket.end();
    this.hungUp.add(socket);
    socket.once('close', () => this.hungUp.delete(socket));
  }

  /** The hub closes: refusals still held are reported, and strangers' sockets destroyed. */
  close(): void {
    this.refusals.close();
    for (const socket of this.hungUp) socket.destroy();
  }

}
