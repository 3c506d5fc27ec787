/**
 * TFRecord framing, the container of TensorBoard's event files: per record its length (u64 little-endian),
 * the masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data.
 */
import { maskedCrc32c } from './crc32c.js';

/** Where a record's data starts, and the bytes the framing adds around it. */
export const RECORD_DATA_AT = 12;
export const RECORD_FRAMING = 16;

export function frameRecord(data: Uint8Array): Buffer {
  const record = Buffer.allocUnsafe(data.length + RECORD_FRAMING);
  record.set(data, RECORD_DATA_AT);
  return sealRecord(record);
}

/**
 * Frames, in place, a record whose data was written at RECORD_DATA_AT (the rest of `record`, less the last 4
 * bytes): its length (as two 32-bit halves: no BigInt a record) and both checksums.
 */
export function sealRecord(record: Buffer): Buffer {
  const length = record.length - RECORD_FRAMING;
  record.writeUInt32LE(length % 0x1_0000_0000, 0);
  record.writeUInt32LE(Math.floor(length / 0x1_0000_0000), 4);
  record.writeUInt32LE(maskedCrc32c(record, 0, 8), 8);
  record.writeUInt32LE(maskedCrc32c(record, RECORD_DATA_AT, RECORD_DATA_AT + length), RECORD_DATA_AT + length);
  return record;
}

/**
 * The records of a file, in order. Reading stops at the first record that is cut short or fails its
 * checksum: a process killed while writing leaves a torn tail, and what comes before it is intact.
 */
export function readRecords(file: Buffer): Buffer[] {
  const records: Buffer[] = [];
  let at = 0;
  while (at + 12 <= file.length) {
    const header = file.subarray(at, at + 8);
    if (file.readUInt32LE(at + 8) !== maskedCrc32c(header)) break;
    const length = Number(file.readBigUInt64LE(at));
    const end = at + 12 + length;
    if (end + 4 > file.length) break;
    const data = file.subarray(at + 12, end);
    if (file.readUInt32LE(end) !== maskedCrc32c(data)) break;
    records.push(data);
    at = end + 4;
  }
  return records;
}
