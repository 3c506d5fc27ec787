/**
 * One TensorBoard event file (one folder is one TensorBoard "run"): events are framed as they come and
 * held in memory; the file is written only when flushed (by the run's log, every few seconds at most; or
 * here, when a megabyte is waiting), so that a training step rarely does file I/O for it.
 */
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, writeFileSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { decodeEventHeading, encodeFileVersionEvent, encodeScalarEvent, scalarEventSize, writeScalarEvent, type ScalarEvent } from './event.js';
import { frameRecord, readRecords, RECORD_DATA_AT, RECORD_FRAMING, sealRecord } from './tfrecord.js';

const FLUSH_BYTES = 1 << 20;

/** TensorBoard reads the files whose name holds "tfevents", in name order: the time first, as TensorFlow names them. */
let filesNamed = 0;
function eventFileName(): string {
  const host = hostname().replace(/[^A-Za-z0-9.-]/g, '_');
  return `events.out.tfevents.${Math.floor(Date.now() / 1000)}.${host}.${process.pid}.${filesNamed++}`;
}

export const isEventFile = (name: string) => name.includes('tfevents');

export class EventFileWriter {
  readonly file: string;
  private pending: Buffer[];
  private pendingBytes = 0;
  private created = false;
  /** Opened at the first flush, kept until close(). */
  private fd?: number;

  constructor(readonly dir: string) {
    this.file = join(dir, eventFileName());
    this.pending = [frameRecord(encodeFileVersionEvent(Date.now() / 1000))];
  }

  add(event: ScalarEvent): void {
    this.hold(frameRecord(encodeScalarEvent(event)));
  }

  /**
   * add()'s record for scalars whose tags were encoded once (scalarPrefix; `values[i]` is `prefixes[i]`'s),
   * encoded and framed in one buffer of its exact size.
   */
  addScalars(wallTime: number, step: number, prefixes: readonly Buffer[], values: ArrayLike<number>): void {
    const record = Buffer.allocUnsafe(scalarEventSize(step, prefixes) + RECORD_FRAMING);
    writeScalarEvent(record, RECORD_DATA_AT, wallTime, step, prefixes, values);
    this.hold(sealRecord(record));
  }

  private hold(record: Buffer): void {
    this.pending.push(record);
    this.pendingBytes += record.length;
    if (this.pendingBytes >= FLUSH_BYTES) this.flush();
  }

  flush(): void {
    if (this.pending.length === 0) return;
    const bytes = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending);
    if (this.fd === undefined) {
      if (!this.created) mkdirSync(this.dir, { recursive: true });
      this.fd = openSync(this.file, this.created ? 'a' : 'w');
      this.created = true;
    }
    for (let at = 0; at < bytes.length; ) at += writeSync(this.fd, bytes, at);
    this.pending = [];
    this.pendingBytes = 0;
  }

  /** Flushes and closes the file (a later add opens it again, to append). */
  close(): void {
    this.flush();
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/**
 * Rewrites every event file under `dir` (its subfolders included) keeping the records `keep` accepts,
 * given each event's step and scalar tags; the file-version record is always kept.
 */
export function filterEventFiles(dir: string, keep: (event: { step: number; tags: string[] }) => boolean): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) filterEventFiles(path, keep);
    if (!entry.isFile() || !isEventFile(entry.name)) continue;
    const kept = readRecords(readFileSync(path)).filter((data) => {
      const heading = decodeEventHeading(data);
      return heading.tags.length === 0 || keep(heading);
    });
    // Through a temporary file (not named as an event file), so that a crash leaves the old file or the new one.
    const temporary = join(dir, '.rewrite.tmp');
    writeFileSync(temporary, Buffer.concat(kept.map(frameRecord)));
    renameSync(temporary, path);
  }
}
