/** Counters the bench reads from the real server's Prometheus endpoint around each pass. */
export interface ServerCounters {
  /** Decisions answered without the store (fail-open) or failed: not what the figures claim. */
  failures: number;
  /** Main-thread GC pauses of every kind, seconds since the server started. */
  gcSeconds: number;
}

const FAILURE_METRICS = ['ratekeeper_store_failures_total', 'ratekeeper_rpc_errors_total'];
/** prom-client's GC pauses: one series per kind (minor, major, incremental, weakcb). */
const GC_SUM = 'ratekeeper_nodejs_gc_duration_seconds_sum';

export const parseServerMetrics = (text: string): ServerCounters => {
  const out: ServerCounters = { failures: 0, gcSeconds: 0 };
  for (const line of text.split('\n')) {
    const value = () => Number(line.slice(line.lastIndexOf(' ') + 1)) || 0;
    if (FAILURE_METRICS.some((m) => line.startsWith(m))) out.failures += value();
    else if (line.startsWith(GC_SUM)) out.gcSeconds += value();
  }
  return out;
};

export const scrapeServer = async (url: string): Promise<ServerCounters> =>
  parseServerMetrics(await (await fetch(url)).text());
