/** summary.json, the record of a run. */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PlanChoice } from '../cluster/replica_plan.js';

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
  /** How steps were distributed at the end: whole, split, or with remote replicas replicated or sharded. */
  plan: string;
  /** With remote replicas: each plan chosen, from which step, why, the cost model's estimates and the measured mean (ms a step). */
  plans: readonly (PlanChoice & { measuredMs: number | null })[];
  /** Every engine/device that computed, e.g. ["onnx/webgpu"]; more than one only with --allow-mixed-devices. */
  devices: string[];
  /** Workers on other engines or devices took part: the result then depends on who computed what. */
  mixedDevices: boolean;
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

/** A run folder's summary.json. */
export const summaryFile = (dir: string) => join(dir, 'summary.json');

/** Writes summary.json atomically (temporary file, then rename). */
export function writeSummary(dir: string, summary: RunSummary): string {
  mkdirSync(dir, { recursive: true });
  const file = summaryFile(dir);
  writeFileSync(`${file}.tmp`, `${JSON.stringify(summary, null, 2)}\n`);
  renameSync(`${file}.tmp`, file);
  return file;
}

/** Reads a run folder's summary.json (throws as readFileSync and JSON.parse do). */
export function readSummary(dir: string): RunSummary {
  return JSON.parse(readFileSync(summaryFile(dir), 'utf8')) as RunSummary;
}
