/**
 * Checkpoints: everything a run needs to continue exactly where it was — parameters, Adam's moments,
 * the step, the position in the epoch, the shuffle RNG, the configuration and the results so far.
 *
 * One file per checkpoint: "DTRAINCK", a format version, a JSON header, the three float32 arrays
 * (little-endian) and a SHA-256 of all that. Written atomically (temporary file, fsync, rename, fsync of
 * the directory), the last K kept. A file that is truncated or whose checksum does not match is skipped
 * in favour of the previous one.
 */
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { checkpointInvalid } from '../errors.js';
import type { ModelSpec } from '../model/spec.js';
import type { EpochResult } from '../report/summary.js';

const MAGIC = Buffer.from('DTRAINCK');
const FORMAT = 1;

export interface CheckpointHeader {
  format: number;
  step: number;
  /** Where training continues: this epoch (1-based) at this batch. */
  epoch: number;
  batch: number;
  /** State of the shuffle RNG before this epoch's order was drawn, so the same order is drawn again. */
  epochRngState: number[];
  /** What the current epoch had accumulated when the checkpoint was written. */
  partial: { seconds: number; samples: number; lossSum: number; steps: number };
  config: Record<string, unknown>;
  spec: ModelSpec;
  datasetSha256: string;
  epochs: EpochResult[];
  trainSeconds: number;
  samplesSeen: number;
  paramsSha256: string;
}

export interface Checkpoint {
  header: CheckpointHeader;
  params: Float32Array;
  m: Float32Array;
  v: Float32Array;
  file: string;
}

export const checkpointDir = (runDir: string) => join(runDir, 'checkpoints');
const fileName = (step: number) => `step-${String(step).padStart(9, '0')}.ckpt`;

function littleEndian(a: Float32Array): Buffer {
  const bytes = Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  if (endianness() === 'LE') return bytes;
  const copy = Buffer.from(bytes);
  copy.swap32();
  return copy;
}

/** Writes a checkpoint atomically and deletes all but the newest `keep`; returns its path. */
export function writeCheckpoint(runDir: string, header: Omit<CheckpointHeader, 'format'>, arrays: { params: Float32Array; m: Float32Array; v: Float32Array }, keep: number): string {
  const dir = checkpointDir(runDir);
  mkdirSync(dir, { recursive: true });
  const json = Buffer.from(JSON.stringify({ format: FORMAT, ...header }));
  const lengths = Buffer.alloc(8);
  lengths.writeUInt32LE(FORMAT, 0);
  lengths.writeUInt32LE(json.length, 4);
  const parts = [MAGIC, lengths, json, littleEndian(arrays.params), littleEndian(arrays.m), littleEndian(arrays.v)];
  const hash = createHash('sha256');
  for (const p of parts) hash.update(p);
  parts.push(hash.digest());
  const file = join(dir, fileName(header.step));
  const tmp = `${file}.tmp`;
  const fd = openSync(tmp, 'w');
  try {
    for (const p of parts) writeSync(fd, p);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  // The rename itself must reach the disk before older checkpoints are deleted.
  const dirFd = openSync(dir, 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
  // Newer files than this one are an abandoned future of the run (it was resumed from an earlier or a
  // valid checkpoint past a corrupt one): they go, and of the rest the newest `keep` stay.
  const files = listCheckpoints(runDir);
  const later = files.filter((f) => stepOf(f) > header.step);
  for (const old of [...later, ...files.filter((f) => stepOf(f) <= header.step).slice(keep)]) rmSync(old, { force: true });
  return file;
}

/** The step a checkpoint file (one of listCheckpoints) was written at. */
export const stepOf = (file: string) => Number(/step-(\d+)\.ckpt$/.exec(file)![1]);

/** Checkpoint files of a run, newest first. */
export function listCheckpoints(runDir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(checkpointDir(runDir));
  } catch {
    return [];
  }
  return names
    .filter((n) => /^step-\d+\.ckpt$/.test(n))
    .sort()
    .reverse()
    .map((n) => join(checkpointDir(runDir), n));
}

export function readCheckpoint(file: string): Checkpoint {
  const bytes = readFileSync(file);
  if (bytes.length < MAGIC.length + 8 + 32 || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw checkpointInvalid(file, 'not a dtrain checkpoint (bad magic or too short)');
  }
  const body = bytes.subarray(0, bytes.length - 32);
  const digest = createHash('sha256').update(body).digest();
  if (!digest.equals(bytes.subarray(bytes.length - 32))) throw checkpointInvalid(file, 'checksum mismatch (truncated or corrupt)');
  const format = bytes.readUInt32LE(MAGIC.length);
  if (format !== FORMAT) throw checkpointInvalid(file, `format ${format} is not supported (expected ${FORMAT})`);
  const jsonLength = bytes.readUInt32LE(MAGIC.length + 4);
  const start = MAGIC.length + 8;
  const header = JSON.parse(bytes.subarray(start, start + jsonLength).toString('utf8')) as CheckpointHeader;
  const arrays = body.subarray(start + jsonLength);
  const n = arrays.length / 12;
  if (!Number.isInteger(n)) throw checkpointInvalid(file, 'the parameter arrays have an odd length');
  const floats = (k: number) => {
    const copy = Buffer.from(arrays.subarray(k * n * 4, (k + 1) * n * 4));
    if (endianness() === 'BE') copy.swap32();
    return new Float32Array(copy.buffer, copy.byteOffset, n);
  };
  return { header, params: floats(0), m: floats(1), v: floats(2), file };
}

/**
 * The newest valid checkpoint of a run; invalid ones are reported through `skipped` and passed over.
 * `dir` may be the run directory or its checkpoints/ directory.
 */
export function latestCheckpoint(dir: string, skipped: (file: string, reason: string) => void): Checkpoint {
  const runDir = dir.replace(/[/\\]checkpoints[/\\]?$/, '');
  const files = listCheckpoints(runDir);
  if (files.length === 0) throw checkpointInvalid(checkpointDir(runDir), 'no checkpoint files (step-*.ckpt) to resume from');
  for (const file of files) {
    try {
      return readCheckpoint(file);
    } catch (e) {
      skipped(file, (e as Error).message);
    }
  }
  throw checkpointInvalid(checkpointDir(runDir), 'every checkpoint is corrupt');
}
