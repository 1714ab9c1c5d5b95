import { describe, expect, it, vi } from 'vitest';
import { defaultSignalSettings, type SignalSettings } from '../../src/policy/signals.js';
import { SignalEngine } from '../../src/report/engine.js';
import { MemoryReportStore } from '../../src/report/memory.js';
import type { Alert, ReportStore, Totals } from '../../src/report/types.js';
import { MemoryStore } from '../../src/store/memory.js';

const M = 60_000;
const T0 = Date.UTC(2026, 10, 25, 12, 0, 0);
const silent = { warn: () => {}, error: () => {} };

/**
 * A key's traffic through the real memory limiter store (60 requests/min, 5 concurrent, 10 min
 * leases), reporting decisions to the engine the way the inference path does.
 */
class Sim {
  now = T0;
  readonly store = new MemoryStore({ now: () => this.now, sweepIntervalMs: 0 });
  readonly alerts: Alert[] = [];
  private seq = 0;

  constructor(
    readonly reports: ReportStore = new MemoryReportStore(() => this.now),
    readonly engine = new SignalEngine(reports, () => defaultSignalSettings, silent),
  ) {
    reports.subscribe((a) => this.alerts.push(a));
  }

  /** Returns 0 when admitted, else the Retry-After in ms. */
  async call(key: string, opts: { account?: string; release?: boolean } = {}): Promise<number> {
    const requestId = `r${++this.seq}`;
    const r = await this.store.decide({
      atomic: true,
      ops: [
        {
          kind: 'slot',
          key: `c:${key}`,
          limit: 5,
          leaseMs: 10 * M,
          expiredKey: `x:${key}`,
          expiredWindowMs: 60 * M,
          longHeldMs: 5 * M,
        },
        { kind: 'window', key: `w:${key}`, limit: 60, windowMs: M, cost: 1 },
      ],
      reservation: { requestId, key: `res:${requestId}`, ttlMs: 20 * M },
    });
    const denied = r.states[r.denied];
    this.engine.record({
      kind: 'decision',
      atMs: r.nowMs,
      key,
      account: opts.account ?? key,
      admitted: r.admitted,
      retryMs: denied?.retryMs ?? 0,
      requestShare: (r.states[1]?.used ?? 0) / 60,
      longHeld: { count: r.states[0]!.longHeld ?? 0, oldestMs: r.states[0]!.heldMs ?? 0 },
    });
    if (r.expiredLeases > 0) {
      this.engine.record({
        kind: 'expired',
        atMs: r.nowMs,
        key,
        account: opts.account ?? key,
        count: r.expiredLeases,
      });
    }
    if (r.admitted && opts.release !== false) await this.store.release(`res:${requestId}`);
    return r.admitted ? 0 : Math.max(denied?.retryMs ?? 1, 1);
  }

  /** `perMinute` evenly spaced calls a minute for `minutes`. */
  async steady(key: string, perMinute: number, minutes: number, account?: string): Promise<void> {
    const gap = M / perMinute;
    const end = this.now + minutes * M;
    while (this.now < end) {
      await this.call(key, account ? { account } : {});
      this.now += gap;
    }
    await this.engine.idle();
  }

  async flags() {
    await this.engine.idle();
    return (await this.reports.listFlags({}, 100, '')).flags;
  }
}

describe('signal engine', () => {
  it('flags a client at 95% of its RPM for the sustained window once, not per request', async () => {
    const sim = new Sim();
    await sim.steady('hot', 57, 9);
    expect(await sim.flags()).toEqual([]);
    await sim.steady('hot', 57, 6);
    const flags = await sim.flags();
    expect(flags).toHaveLength(1);
    expect(flags[0]).toMatchObject({
      key: 'hot',
      account: 'hot',
      signal: 'excessive_request_rate',
      threshold: 0.9,
      windowMs: 10 * M,
      state: 'open',
    });
    expect(flags[0]!.observed).toBeGreaterThanOrEqual(0.9);
    expect(flags[0]!.lastSeenMs).toBeGreaterThan(flags[0]!.firstSeenMs);
    expect(sim.alerts.filter((a) => 'flag' in a)).toHaveLength(1);
  });

  it('leaves a client at 50% unflagged, and a burst that ends quickly', async () => {
    const sim = new Sim();
    await sim.steady('half', 30, 30);
    for (let i = 0; i < 70; i++) {
      await sim.call('bursty');
      sim.now += 100;
    }
    await sim.steady('bursty', 10, 20);
    expect(await sim.flags()).toEqual([]);
  });

  it('trips runaway on hung requests whose leases expire', async () => {
    const sim = new Sim();
    for (let i = 0; i < 5; i++) await sim.call('hung', { release: false });
    sim.now += 11 * M;
    expect(await sim.call('hung', { release: false })).toBe(0);
    const flags = await sim.flags();
    expect(flags.map((f) => [f.signal, f.observed, f.threshold])).toEqual([['runaway_requests', 5, 3]]);
  });

  it('trips runaway on slots held long before their leases expire, counting each request once', async () => {
    const sim = new Sim();
    for (let i = 0; i < 3; i++) await sim.call('stuck', { release: false });
    sim.now += 4 * M;
    await sim.call('stuck');
    expect(await sim.flags()).toEqual([]);
    sim.now += M;
    await sim.call('stuck');
    const [flag] = await sim.flags();
    expect([flag?.signal, flag?.observed]).toEqual(['runaway_requests', 3]);
    expect(flag?.detail).toContain('3 slots held over 5 min');
    // The leases expire: the three now count as expiries, no longer as held.
    sim.now += 6 * M;
    await sim.call('stuck');
    const [later] = await sim.flags();
    expect([later?.observed, later?.detail]).toEqual([3, '3 expired leases in 60 min (threshold 3)']);
  });

  it('trips retry storm on a client hammering through 429s, not on one that waits', async () => {
    const sim = new Sim();
    // Honours Retry-After: after a denial, the next call comes when it says.
    let denials = 0;
    for (let i = 0; i < 600; i++) {
      const retryMs = await sim.call('polite');
      if (retryMs > 0) denials++;
      sim.now += retryMs || 200;
    }
    expect(denials).toBeGreaterThan(5);
    expect(await sim.flags()).toEqual([]);
    for (let i = 0; i < 200; i++) {
      await sim.call('storm');
      sim.now += 100;
    }
    const flags = await sim.flags();
    expect(flags.map((f) => f.signal)).toEqual(['retry_storm']);
    expect(flags[0]!.key).toBe('storm');
    expect(flags[0]!.observed).toBeGreaterThanOrEqual(30);
  });

  it('flags an account whose keys each run near their limits', async () => {
    const sim = new Sim();
    const keys = ['s1', 's2', 's3'];
    const end = sim.now + 12 * M;
    while (sim.now < end) {
      for (const k of keys) await sim.call(k, { account: 'splitter' });
      sim.now += M / 51;
    }
    const flags = await sim.flags();
    expect(flags).toHaveLength(1);
    expect(flags[0]).toMatchObject({
      key: 'account:splitter',
      account: 'splitter',
      signal: 'limit_splitting',
    });
    expect(flags[0]!.detail).toContain('s1, s2, s3');
  });

  it('uses the configured thresholds', async () => {
    const cfg: SignalSettings = { ...defaultSignalSettings, requestRate: { share: 0.4, windowMs: 5 * M } };
    const reports = new MemoryReportStore(() => T0);
    const sim = new Sim(reports, new SignalEngine(reports, () => cfg, silent));
    await sim.steady('half', 30, 7);
    expect((await sim.flags()).map((f) => [f.signal, f.threshold, f.windowMs])).toEqual([
      ['excessive_request_rate', 0.4, 5 * M],
    ]);
  });

  it('sends each spend/token crossing once per period, across instances', async () => {
    const reports = new MemoryReportStore(() => T0);
    const a = new Sim(reports);
    const b = new SignalEngine(reports, () => defaultSignalSettings, silent);
    const periodEndMs = Date.UTC(2026, 11, 1);
    const settle = (engine: SignalEngine, used: number, atMs = T0) =>
      engine.record({
        kind: 'settled',
        atMs,
        key: 'k',
        account: 'acme',
        tokens: 10,
        spendMicros: 1,
        budgets: [{ metric: 'monthly_spend', used, limit: 1000 }],
        period: '2026-11',
        periodEndMs,
      });
    settle(a.engine, 700);
    settle(a.engine, 810);
    settle(b, 820);
    settle(a.engine, 900);
    await a.engine.idle();
    await b.idle();
    expect(a.alerts).toEqual([
      {
        atMs: T0,
        crossing: {
          key: 'k',
          account: 'acme',
          metric: 'monthly_spend',
          share: 0.8,
          used: 810,
          limit: 1000,
          period: '2026-11',
        },
      },
    ]);
    settle(b, 1000);
    await b.idle();
    expect(a.alerts.map((x) => ('crossing' in x ? x.crossing.share : 0))).toEqual([0.8, 1]);
  });

  it('feeds TopKeys totals on flush', async () => {
    const sim = new Sim();
    await sim.steady('busy', 20, 2);
    await sim.steady('quiet', 2, 2);
    await sim.engine.flush();
    expect(await sim.reports.topKeys('requests', T0, sim.now, 10)).toEqual([
      { key: 'busy', account: 'busy', value: 40 },
      { key: 'quiet', account: 'quiet', value: 4 },
    ]);
  });

  it('starts no timed flush while the previous one is still writing; its totals go with the next', async () => {
    vi.useFakeTimers();
    try {
      const inner = new MemoryReportStore(() => T0);
      const writes: number[] = [];
      let release!: () => void;
      const gate = new Promise<void>((r) => {
        release = r;
      });
      const store: ReportStore = Object.assign(Object.create(inner) as ReportStore, {
        addTotals: async (start: number, totals: readonly Totals[]) => {
          writes.push(totals.reduce((n, t) => n + t.requests, 0));
          await gate;
          await inner.addTotals(start, totals);
        },
      });
      const engine = new SignalEngine(store, () => defaultSignalSettings, silent);
      const admit = (key: string) =>
        engine.record({ kind: 'decision', atMs: T0, key, account: key, admitted: true, retryMs: 0 });
      engine.start(1_000);
      admit('a');
      await vi.advanceTimersByTimeAsync(1_000);
      expect(writes).toEqual([1]);
      admit('a');
      admit('b');
      await vi.advanceTimersByTimeAsync(5_000);
      expect(writes).toEqual([1]);
      release();
      await vi.advanceTimersByTimeAsync(1_000);
      expect(writes).toEqual([1, 2]);
      engine.stop();
      await engine.idle();
      expect(await inner.topKeys('requests', T0, T0, 10)).toEqual([
        { key: 'a', account: 'a', value: 2 },
        { key: 'b', account: 'b', value: 1 },
      ]);
    } finally {
      vi.useRealTimers();
    }
  });

  it('updates shared early-retry counters a few at a time, every key once', async () => {
    let inFlight = 0;
    let most = 0;
    const added = new Map<string, number>();
    const counter = {
      async addEarlyRetries(_account: string, ref: string, _windowMs: number, n: number) {
        most = Math.max(most, ++inFlight);
        await new Promise((r) => setImmediate(r));
        inFlight--;
        added.set(ref, n);
        return { count: n, nowMs: T0 };
      },
    };
    const engine = new SignalEngine(
      new MemoryReportStore(() => T0),
      () => defaultSignalSettings,
      silent,
      counter,
    );
    const deny = (key: string, atMs: number) =>
      engine.record({
        kind: 'decision',
        atMs,
        key,
        account: key,
        ref: `k:${key}`,
        admitted: false,
        retryMs: 1_000,
      });
    for (let i = 0; i < 300; i++) {
      deny(`k${i}`, T0);
      deny(`k${i}`, T0 + 10);
    }
    await engine.flush();
    expect(added.size).toBe(300);
    expect(added.get('k:k7')).toBe(1);
    expect(most).toBeLessThanOrEqual(64);
    expect(most).toBeGreaterThan(1);
  });
});
