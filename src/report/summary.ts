/** summary.json, the record of a run. */
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface EpochResult {
  epoch: number;
  steps: number;
  testAccuracy: number;
  testAvgLoss: number;
  trainLoss: number;
  seconds: number;
  samplesPerSecond: number;
}

export interface RunSummary {
  dataset: { name: string; sha256: string; trainSamples: number; testSamples: number };
  model: { sizes: number[]; activation: string; parameters: number };
  engine: string;
  workers: string;
  config: Record<string, unknown>;
  epochs: EpochResult[];
  steps: number;
  samplesPerSecond: number;
  msPerStep: number;
  paramsSha256: string;
  outDir: string | null;
  /** Set when the run failed; the parameters above are then the last good ones. */
  error?: string;
}

/** Writes summary.json atomically (temporary file, then rename). */
export function writeSummary(dir: string, summary: RunSummary): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'summary.json');
  writeFileSync(`${file}.tmp`, `${JSON.stringify(summary, null, 2)}\n`);
  renameSync(`${file}.tmp`, file);
  return file;
}
