import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { EXPIRED_WINDOW_MS, inferenceKeys as K } from '../../src/policy/inference-keys.js';
import { defaultSignalSettings } from '../../src/policy/signals.js';
import { SignalEngine } from '../../src/report/engine.js';
import { inferenceHooks, limiterCounter, reportKey } from '../../src/report/hooks.js';
import { MemoryReportStore } from '../../src/report/memory.js';
import { MemoryStore } from '../../src/store/memory.js';

const M = 60_000;
const T0 = Date.UTC(2026, 10, 25, 12, 0, 0);
const log = pino({ level: 'silent' });

describe('inference hooks', () => {
  it('name keys by id, else by their hash reference', () => {
    expect(reportKey({ keyRef: 'k:abc', keyId: 'abc', account: 'a', tier: 't' })).toBe('abc');
    expect(reportKey({ keyRef: 'h:00ff', account: 'a', tier: 't' })).toBe('h:00ff');
  });

  it('trip runaway on the store-wide expiry count when each instance found only some', async () => {
    const clock = { t: T0 };
    const limiter = new MemoryStore({ now: () => clock.t, sweepIntervalMs: 0 });
    const reports = new MemoryReportStore(() => clock.t);
    const instances = [0, 1].map(() => {
      const engine = new SignalEngine(reports, () => defaultSignalSettings, log);
      return { engine, hooks: inferenceHooks(engine, () => 'UTC', limiter) };
    });
    const slot = (id: string) =>
      limiter.decide({
        atomic: true,
        ops: [
          {
            kind: 'slot',
            key: K.keySlots('acme', 'k:hung'),
            limit: 10,
            leaseMs: 10 * M,
            expiredKey: K.keyExpired('acme', 'k:hung'),
            expiredWindowMs: EXPIRED_WINDOW_MS,
          },
        ],
        reservation: { requestId: id, key: `res:${id}`, ttlMs: 20 * M },
      });
    // Each instance's later decision finds two leases expired: 2 < 3 alone, 4 together.
    for (const [i, inst] of instances.entries()) {
      await slot(`a${i}`);
      await slot(`b${i}`);
      clock.t += 11 * M;
      const r = await slot(`c${i}`);
      expect(r.expiredLeases).toBe(2);
      await limiter.release(`res:c${i}`);
      inst.hooks.onLeaseExpired!({
        atMs: r.nowMs,
        keyRef: 'k:hung',
        account: 'acme',
        count: r.expiredLeases,
      });
      await inst.engine.idle();
    }
    const { flags } = await reports.listFlags({}, 10, '');
    expect(flags.map((f) => [f.key, f.signal, f.observed])).toEqual([['hung', 'runaway_requests', 4]]);
  });

  it("trip runaway on the key's long-held slots that a decision reports", async () => {
    const reports = new MemoryReportStore(() => T0);
    const engine = new SignalEngine(reports, () => defaultSignalSettings, log);
    const hooks = inferenceHooks(engine, () => 'UTC');
    const decision = (atMs: number, long: number) =>
      hooks.onDecision!({
        atMs,
        keyRef: 'k:slow',
        keyId: 'slow',
        account: 'acme',
        tier: 'free',
        requestId: `r${atMs}`,
        admitted: true,
        limits: [],
        held: { oldestMs: 7 * M, long },
      });
    decision(T0, 2);
    await engine.idle();
    expect((await reports.listFlags({}, 10, '')).flags).toEqual([]);
    decision(T0 + M, 3);
    await engine.idle();
    const { flags } = await reports.listFlags({}, 10, '');
    expect(flags.map((f) => [f.key, f.signal, f.observed, f.firstSeenMs])).toEqual([
      ['slow', 'runaway_requests', 3, T0 + M],
    ]);
  });

  it('trip retry storm on the store-wide count of early retries, written on flush', async () => {
    const clock = { t: T0 };
    const limiter = new MemoryStore({ now: () => clock.t, sweepIntervalMs: 0 });
    const reports = new MemoryReportStore(() => clock.t);
    const engines = [0, 1].map(
      () => new SignalEngine(reports, () => defaultSignalSettings, log, limiterCounter(limiter)),
    );
    const hooks = engines.map((e) => inferenceHooks(e, () => 'UTC', limiter));
    // Each instance sees 21 denials, 20 of them before the Retry-After it gave: below 30 alone.
    for (let i = 0; i < 21; i++) {
      for (const h of hooks) {
        h.onDecision!({
          atMs: clock.t,
          keyRef: 'k:st',
          keyId: 'st',
          account: 'acme',
          tier: 'free',
          requestId: `r${i}`,
          admitted: false,
          code: 'RATE_LIMIT_EXCEEDED',
          retryMs: 30_000,
          limits: [],
        });
      }
      clock.t += 500;
    }
    await engines[0]!.flush();
    expect((await reports.listFlags({}, 10, '')).flags).toEqual([]);
    await engines[1]!.flush();
    const { flags } = await reports.listFlags({}, 10, '');
    expect(flags.map((f) => [f.key, f.signal, f.observed])).toEqual([['st', 'retry_storm', 40]]);
  });

  it('turn decisions and debits into signal samples and budget crossings', async () => {
    const reports = new MemoryReportStore(() => T0);
    const engine = new SignalEngine(reports, () => defaultSignalSettings, log);
    const hooks = inferenceHooks(engine, () => 'America/New_York');
    const alerts: unknown[] = [];
    reports.subscribe((a) => alerts.push(a));
    for (let i = 0; i <= 10; i++) {
      hooks.onDecision!({
        atMs: T0 + i * M,
        keyRef: 'k:t1',
        keyId: 't1',
        account: 'acme',
        tier: 'free',
        requestId: `r${i}`,
        admitted: true,
        limits: [
          { metric: 'requests', scope: 'key', limit: 100, used: 20, windowMs: M },
          // Account x model limits are shared by the account's keys: not this key's share.
          { metric: 'requests', scope: 'account_model', limit: 100, used: 99, windowMs: M },
          { metric: 'tokens', scope: 'key', limit: 1000, used: 950, windowMs: M },
        ],
      });
    }
    hooks.onDebit!({
      atMs: T0,
      keyRef: 'k:t1',
      keyId: 't1',
      account: 'acme',
      tier: 'free',
      model: 'm',
      requestId: 'r1',
      tokensIn: 1,
      tokensOut: 2,
      tokens: 3,
      spendMicros: 3,
      duplicate: false,
      reserved: true,
      limits: [
        { metric: 'monthly_tokens', scope: 'key', limit: 100, used: 100, windowMs: 30 * 24 * 60 * M },
        { metric: 'daily_spend', scope: 'key', limit: 10, used: 10, windowMs: 24 * 60 * M },
      ],
    });
    await engine.idle();
    const { flags } = await reports.listFlags({}, 10, '');
    expect(flags.map((f) => [f.key, f.signal])).toEqual([['t1', 'excessive_token_rate']]);
    expect(alerts.filter((a) => 'crossing' in (a as object))).toEqual([
      expect.objectContaining({
        crossing: expect.objectContaining({ metric: 'monthly_tokens', share: 0.8, period: '2026-11' }),
      }),
      expect.objectContaining({
        crossing: expect.objectContaining({ metric: 'monthly_tokens', share: 1, period: '2026-11' }),
      }),
    ]);
  });
});
