/**
 * The frame format (remote/codec.ts): arrays travel after the header at 4-aligned offsets, so that a
 * receiver validates them in place; references that point outside the frame are refused.
 */
import { describe, expect, it } from 'vitest';
import { Packr } from 'msgpackr';
import { closeReason, decodeRaw, encode } from '../src/cluster/remote/codec.js';
import { ProtocolError } from '../src/cluster/remote/messages.js';
import { validateFromWorker, type CoordinatorView } from '../src/cluster/remote/validation.js';
import { makeSpec } from '../src/model/spec.js';
import { sliceLength } from '../src/cluster/unit_slices.js';
import type { Range } from '../src/cluster/plan.js';

const spec = makeSpec(4, [3], 2, 'sigmoid');
const units: Range[] = [[0, 2], [1, 2]];

describe('the frame format', () => {
  it('puts every array at a 4-aligned offset: a slice validates as a view of the frame, not a copy', () => {
    const params = Float32Array.from({ length: sliceLength(spec, units) }, (_, i) => i / 7);
    const frame = encode({ t: 'slice', step: 3, units, params });
    // A large message arrives in a buffer of its own (ws allocates it): a copy at offset 0 stands for it.
    const received = Buffer.from(frame);
    expect(received.byteOffset % 4).toBe(0);
    const view: CoordinatorView = { spec, batchSize: 4, pendingStep: undefined, pendingRange: undefined, pendingSnapshot: undefined, pendingCompact: false, pendingLossOnly: false, pendingSlice: { step: 3, units } };
    const slice = validateFromWorker(decodeRaw(received), view);
    if (slice.t !== 'slice') throw new Error('expected a slice');
    expect(slice.params.buffer).toBe(received.buffer);
    expect([...slice.params]).toEqual([...params]);
  });

  it('gives the same bytes for the same message (the padding is zeroed)', () => {
    const message = { t: 'slice', step: 1, units, params: new Float32Array(sliceLength(spec, units)).fill(0.5) } as const;
    expect(encode(message).equals(encode(message))).toBe(true);
  });

  it('refuses a header longer than its frame, and array references outside it, with a ProtocolError', () => {
    const packr = new Packr({ useRecords: false, moreTypes: false });
    const frameOf = (header: unknown, extra = 0) => {
      const h = packr.pack(header);
      const frame = Buffer.alloc(4 + h.length + extra);
      frame.writeUInt32LE(h.length, 0);
      h.copy(frame, 4);
      return frame;
    };
    const bad = [
      Buffer.from([9, 0, 0, 0, 1]),
      Buffer.from([1, 2]),
      frameOf({ t: 'slice', params: { '@b': [0, 8] } }, 8),
      frameOf({ t: 'slice', params: { '@b': [1000, 8] } }, 8),
      frameOf({ t: 'slice', params: { '@b': 'x' } }),
      // Nesting deeper than any message: refused before a walk over it could exhaust the stack.
      frameOf({ t: 'slice', params: JSON.parse('['.repeat(20) + ']'.repeat(20)) }),
    ];
    for (const frame of bad) {
      expect(() => decodeRaw(frame)).toThrow(ProtocolError);
      expect(() => decodeRaw(frame)).toThrow(/^undecodable frame/);
    }
  });

  it('cuts close reasons to 123 bytes of UTF-8 on a character boundary', () => {
    for (const text of ['é'.repeat(100), '中'.repeat(100), '😀'.repeat(100), 'a'.repeat(200)]) {
      const reason = closeReason(text);
      expect(Buffer.byteLength(reason)).toBeLessThanOrEqual(123);
      expect(reason.endsWith('...')).toBe(true);
      expect(text.startsWith(reason.slice(0, -3))).toBe(true);
    }
    expect(closeReason('short')).toBe('short');
  });
});
