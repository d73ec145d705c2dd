/**
 * A bounded window of recent samples (pause times, commit latencies) with percentiles: the last `capacity`
 * samples are kept, older ones drop out, so stats() never grows with uptime.
 */
export class LatencyWindow {
  private readonly samples: Float64Array;
  private count = 0;
  private next = 0;

  constructor(readonly capacity = 4096) {
    this.samples = new Float64Array(capacity);
  }

  add(valueMs: number): void {
    this.samples[this.next] = valueMs;
    this.next = (this.next + 1) % this.capacity;
    if (this.count < this.capacity) this.count += 1;
  }

  /** Number of samples held. */
  get size(): number {
    return this.count;
  }

  /** The p-th percentile (0..100) of the samples held, nearest-rank; NaN when empty. */
  percentile(p: number): number {
    if (this.count === 0) return Number.NaN;
    const sorted = Array.from(this.samples.subarray(0, this.count)).sort((a, b) => a - b);
    const rank = Math.min(this.count - 1, Math.max(0, Math.ceil((p / 100) * this.count) - 1));
    return sorted[rank]!;
  }

  /** p50, p99 and max, for reports. */
  summary(): { p50: number; p99: number; max: number; count: number } {
    return { p50: this.percentile(50), p99: this.percentile(99), max: this.percentile(100), count: this.count };
  }
}
