/**
 * TFRecord framing, the container of TensorBoard's event files: per record its length (u64 little-endian),
 * the masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data.
 */
import { maskedCrc32c } from './crc32c.js';

export function frameRecord(data: Uint8Array): Buffer {
  const record = Buffer.alloc(8 + 4 + data.length + 4);
  record.writeBigUInt64LE(BigInt(data.length), 0);
  record.writeUInt32LE(maskedCrc32c(record.subarray(0, 8)), 8);
  record.set(data, 12);
  record.writeUInt32LE(maskedCrc32c(data), 12 + data.length);
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
