/**
 * One TensorBoard event file (one folder is one TensorBoard "run"): events are framed as they come and
 * held in memory; the file is written only when flushed (by the run's log, every few seconds at most; or
 * here, when a megabyte is waiting), so that a training step rarely does file I/O for it.
 */
import { appendFileSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { decodeEventHeading, encodeFileVersionEvent, encodeScalarEvent, type ScalarEvent } from './event.js';
import { frameRecord, readRecords } from './tfrecord.js';

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

  constructor(readonly dir: string) {
    this.file = join(dir, eventFileName());
    this.pending = [frameRecord(encodeFileVersionEvent(Date.now() / 1000))];
  }

  add(event: ScalarEvent): void {
    const record = frameRecord(encodeScalarEvent(event));
    this.pending.push(record);
    this.pendingBytes += record.length;
    if (this.pendingBytes >= FLUSH_BYTES) this.flush();
  }

  flush(): void {
    if (this.pending.length === 0) return;
    const bytes = Buffer.concat(this.pending);
    if (this.created) appendFileSync(this.file, bytes);
    else {
      mkdirSync(this.dir, { recursive: true });
      writeFileSync(this.file, bytes);
      this.created = true;
    }
    this.pending = [];
    this.pendingBytes = 0;
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
