/** What the remote tests share: the small run they all make, a coordinator on loopback, reference hashes. */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { train, type TrainConfig, type TrainEvent } from '../src/index.js';
import type { AdmissionStats } from '../src/cluster/remote/admission.js';

export const out = mkdtempSync(join(tmpdir(), 'dtrain-remote-'));
let runs = 0;
// 145 samples: 2 full batches and a short one with a 1-row micro-shard, twice.
export const BASE: Partial<TrainConfig> = { trainSamples: 145, testSamples: 100, epochs: 2, logEvery: 1000, heartbeatMs: 500 };

/**
 * A coordinator run; `onReady` gets the ws:// URL once it listens (and its live connection counts),
 * `onEvent` every event, `beforeStep` is awaited before each step.
 */
export async function coordinator(
  config: Partial<TrainConfig>,
  onReady: (url: string, connections: AdmissionStats) => void,
  onEvent: (e: TrainEvent) => void = () => {},
  beforeStep?: (step: number) => Promise<void> | void,
) {
  return train(
    { ...BASE, listen: '127.0.0.1:0', out: join(out, String(runs++)), ...config },
    { onListening: ({ port, connections }) => onReady(`ws://127.0.0.1:${port}`, connections), onEvent, beforeStep },
  );
}

/** paramsSha256 of a run with local threads, computed once (per test file). */
export function referenceHash(config: Partial<TrainConfig>, name: string): () => Promise<string> {
  let hash: Promise<string> | undefined;
  return () => (hash ??= train({ ...BASE, ...config, out: join(out, name) }).then((s) => s.paramsSha256));
}
