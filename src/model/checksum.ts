/**
 * paramsSha256, the fingerprint runs are compared by: the same bits whatever the number of workers and
 * however they are connected. Low in the layers, since replicas check themselves with it too.
 */
import { createHash } from 'node:crypto';
import { endianness } from 'node:os';

/** SHA-256 of the parameters as little-endian float32 in layer order (W then b of each layer). */
export function paramsSha256(params: Float32Array): string {
  const bytes = new Uint8Array(params.buffer, params.byteOffset, params.byteLength).slice();
  if (endianness() === 'BE') {
    for (let i = 0; i < bytes.length; i += 4) bytes.subarray(i, i + 4).reverse();
  }
  return createHash('sha256').update(bytes).digest('hex');
}
