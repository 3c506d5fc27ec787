/**
 * Who computed how many rows this epoch, how fast each participant is (the scheduler hands out rows in
 * proportion), and how long the coordinator waited on the network: what `epoch` events and metrics report.
 */
export interface WorkShares {
  rows: Record<string, number>;
  networkWaitSeconds: number;
}

/** The name the local team's rows are credited to. */
export const LOCAL = 'local';

/** An exponential moving average; the first sample is taken as is. */
export function smooth(previous: number, sample: number): number {
  return previous === 0 ? sample : 0.7 * previous + 0.3 * sample;
}

/**
 * Speeds with the unknown ones (0) replaced by the average of the known, or 1 when none is known: a
 * newcomer is assumed as fast as the average so far, so that it gets work at once and a measured speed.
 */
export function withAverage(speeds: number[]): number[] {
  const known = speeds.filter((v) => v > 0);
  const average = known.length ? known.reduce((a, b) => a + b, 0) / known.length : 1;
  return speeds.map((v) => v || average);
}

export class WorkLedger {
  /** Rows per millisecond of the local slots together, smoothed. */
  localSpeed = 0;
  private readonly rows = new Map<string, number>();
  private networkWaitMs = 0;

  credit(name: string, rows: number): void {
    this.rows.set(name, (this.rows.get(name) ?? 0) + rows);
  }

  /** Rows the local team computed in `ms`. */
  local(rows: number, ms: number): void {
    this.localSpeed = smooth(this.localSpeed, rows / Math.max(0.01, ms));
    this.credit(LOCAL, rows);
  }

  waited(ms: number): void {
    this.networkWaitMs += Math.max(0, ms);
  }

  /** The shares since the last call. */
  take(): WorkShares {
    const result = { rows: Object.fromEntries(this.rows), networkWaitSeconds: this.networkWaitMs / 1000 };
    this.rows.clear();
    this.networkWaitMs = 0;
    return result;
  }
}
