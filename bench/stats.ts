/** Latency samples in microseconds; percentiles by sorting once at the end (runs are short). */
export class Latencies {
  private buf = new Float64Array(1 << 16);
  private n = 0;

  add(us: number): void {
    if (this.n === this.buf.length) {
      const next = new Float64Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    this.buf[this.n++] = us;
  }

  get count(): number {
    return this.n;
  }

  summary(): LatencySummary {
    const s = this.buf.subarray(0, this.n).sort();
    return summarize(s);
  }
}

export interface LatencySummary {
  /** Milliseconds. */
  p50: number;
  p99: number;
  p999: number;
  max: number;
  mean: number;
}

/** Percentiles of sorted microsecond samples, in ms. */
export const summarize = (sorted: ArrayLike<number>): LatencySummary => {
  const n = sorted.length;
  if (n === 0)
    return { p50: Number.NaN, p99: Number.NaN, p999: Number.NaN, max: Number.NaN, mean: Number.NaN };
  const at = (q: number) => (sorted[Math.min(n - 1, Math.ceil(q * n) - 1)] ?? 0) / 1000;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += sorted[i] ?? 0;
  return {
    p50: at(0.5),
    p99: at(0.99),
    p999: at(0.999),
    max: (sorted[n - 1] ?? 0) / 1000,
    mean: sum / n / 1000,
  };
};
