/**
 * The token handshake, both ways (HMAC-SHA256 challenge–response): each side sends a fresh nonce, and the
 * other answers with an HMAC of its role and that nonce under the shared token. A worker thus proves it
 * may join, the coordinator proves it is the one the worker meant to reach, and the token itself never
 * crosses the wire. Kept apart so that the one place touching secrets is small enough to read at once.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export type Role = 'worker' | 'coordinator' | 'dialer' | 'listener';

export function newNonce(): Uint8Array {
  return randomBytes(32);
}

/** HMAC-SHA256 of a role and a nonce under the shared token: the token itself never crosses the wire. */
export function proof(token: string | Uint8Array, role: Role, nonce: Uint8Array): Uint8Array {
  return createHmac('sha256', token).update(`dtrain-${role}`).update(nonce).digest();
}

/** Whether `mac` is the proof for `role` and `nonce`, compared in constant time. */
export function proofMatches(token: string | Uint8Array, role: Role, nonce: Uint8Array, mac: Uint8Array): boolean {
  const expected = proof(token, role, nonce);
  return mac.length === expected.length && timingSafeEqual(expected, mac);
}

/**
 * The key of the peer link between members `a` and `b` in admission `epoch`: an HMAC of the run's peer secret
 * (random, handed out by the coordinator; never the workers' token), so that a key learnt from one link or
 * epoch opens no other.
 */
export function pairKey(secret: Uint8Array, epoch: number, a: number, b: number): Uint8Array {
  return createHmac('sha256', secret).update(`dtrain-peer ${epoch} ${Math.min(a, b)} ${Math.max(a, b)}`).digest();
}

/** The run's peer secret: fresh for every coordinator. */
export function newPeerSecret(): Uint8Array {
  return randomBytes(32);
}
