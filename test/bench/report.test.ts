import { describe, expect, it } from 'vitest';
import { decisionsPerCall } from '../../bench/redis.js';
import { targets } from '../../bench/report.js';
import type { Pass } from '../../bench/run.js';
import { parseServerMetrics } from '../../bench/server-metrics.js';

const latency = (p99: number) => ({ p50: p99 / 4, p99, p999: p99 * 2, max: p99 * 3, mean: p99 / 3 });

const pass = (over: Partial<Pass>): Pass => ({
  scenario: 'c',
  title: 't',
  driver: 'h2load',
  mode: 'peak',
  rate: 1000,
  decisions: 1000,
  overLimit: 0,
  errors: {},
  latency: latency(10),
  limitedBy: 'server CPU',
  ...over,
});

describe('bench targets', () => {
  it('judges p99 on the closed-loop half-load pass and shows the open-loop one beside it', () => {
    const lines = targets([
      pass({ vsEmpty: 0.55, redisScriptsPerDecision: 0.04, redisCallsPerDecision: 0.04 }),
      pass({ mode: 'paced', targetRate: 500, rate: 499, latency: latency(30) }),
      pass({ mode: 'half', inFlight: 4, connections: 2, rate: 520, latency: latency(1.5) }),
    ]);
    expect(lines).toHaveLength(1);
    const [c] = lines as [string];
    expect(c).toContain('55% of the empty server (h2load) ok');
    expect(c).toContain('0.04 script calls/decision ok');
    expect(c).toContain(
      'p99 1.50 ms at 520/s at half of peak (closed loop, 4 in flight over 2 connection(s)) ok',
    );
    expect(c).toContain('open loop (h2load paced): p99 30.00 ms at 499/s');
  });

  it('misses below the ratio, above one script call per decision, and at p99 >= 2 ms', () => {
    const [c] = targets([
      pass({ vsEmpty: 0.3, redisScriptsPerDecision: 2, redisCallsPerDecision: 2 }),
      pass({ mode: 'half', inFlight: 8, rate: 500, latency: latency(2) }),
    ]) as [string];
    expect(c).toContain('30% of the empty server (h2load) MISS (target 50%)');
    expect(c).toContain('2.00 script calls/decision MISS (target <= 1)');
    expect(c).toContain('MISS (target < 2 ms)');
  });
});

describe('decisionsPerCall', () => {
  it("reads a captured decide call's decision count (ARGV[2])", () => {
    const call = ['evalsha', 'abc', '3', 'k1', 'k2', 'k3', '0', '2', '1', '', '1 0 0 1 w 5 1000 1 0'];
    expect(decisionsPerCall(call)).toBe(2);
  });

  it('counts 1 for a line not shaped as a decide call', () => {
    expect(decisionsPerCall(['evalsha', 'abc', '1', 'k', '0'])).toBe(1);
    expect(decisionsPerCall(['get', 'k'])).toBe(1);
  });
});

describe('server metrics read around a pass', () => {
  it('sums both failure counters over their labels and GC pauses over every kind, nothing else', () => {
    const text = [
      '# HELP ratekeeper_store_failures_total Store calls that failed.',
      'ratekeeper_store_failures_total{op="decide"} 3',
      'ratekeeper_store_failures_total{op="settle"} 2',
      'ratekeeper_rpc_errors_total{service="rls"} 1',
      'ratekeeper_nodejs_gc_duration_seconds_sum{kind="minor"} 0.25',
      'ratekeeper_nodejs_gc_duration_seconds_sum{kind="major"} 0.125',
      'ratekeeper_nodejs_gc_duration_seconds_count{kind="minor"} 40',
      'ratekeeper_nodejs_gc_duration_seconds_bucket{le="0.001",kind="minor"} 30',
      'ratekeeper_decisions_total{code="OK"} 1000',
    ].join('\n');
    expect(parseServerMetrics(text)).toEqual({ failures: 6, gcSeconds: 0.375 });
  });
});
