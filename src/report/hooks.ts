import { EXPIRED_WINDOW_MS, inferenceKeys as K, periodsAt } from '../policy/inference-keys.js';
import type {
  AdmissionEvent,
  DebitEvent,
  InferenceEvents,
  KeyIdentity,
  LimitUsage,
} from '../services/inference-events.js';
import type { LimiterStore } from '../store/store.js';
import type { SharedCounter, SignalEngine } from './engine.js';
import type { CrossingMetric } from './types.js';

/** How reports name a key: its id when registered, else its `h:<hash>` reference; never the raw key. */
export const reportKey = (k: KeyIdentity): string => k.keyId ?? k.keyRef;

const share = (limits: readonly LimitUsage[], metric: LimitUsage['metric']): number | undefined => {
  let best: number | undefined;
  for (const l of limits) {
    if (l.metric !== metric || l.scope !== 'key' || l.limit <= 0) continue;
    best = Math.max(best ?? 0, l.used / l.limit);
  }
  return best;
};

const BUDGETS: ReadonlySet<string> = new Set<CrossingMetric>(['monthly_spend', 'monthly_tokens']);

/**
 * The inference domain's hooks, feeding the signal engine. With the limiter store, a lease expiry
 * is followed by a read of the key's expiry window, which counts every instance's finds.
 */
export function inferenceHooks(
  engine: SignalEngine,
  timezone: () => string,
  limiter?: LimiterStore,
): InferenceEvents {
  return {
    onDecision(e: AdmissionEvent) {
      const requestShare = share(e.limits, 'requests');
      const tokenShare = share(e.limits, 'tokens');
      engine.record({
        kind: 'decision',
        atMs: e.atMs,
        key: reportKey(e),
        account: e.account,
        ref: e.keyRef,
        admitted: e.admitted,
        retryMs: e.retryMs ?? 0,
        requestShare,
        tokenShare,
        longHeld: e.held ? { count: e.held.long, oldestMs: e.held.oldestMs } : undefined,
      });
    },
    onLeaseExpired(e) {
      const key = e.keyRef.startsWith('k:') ? e.keyRef.slice(2) : e.keyRef;
      engine.record({ kind: 'expired', atMs: e.atMs, key, account: e.account, count: e.count });
      if (!limiter) return;
      const read = limiter.decide({
        ops: [
          {
            kind: 'window',
            key: K.keyExpired(e.account, e.keyRef),
            limit: Number.MAX_SAFE_INTEGER,
            windowMs: EXPIRED_WINDOW_MS,
            cost: 0,
          },
        ],
        atomic: false,
        dryRun: true,
      });
      engine.recordWhen(
        read.then((r) => ({
          kind: 'expired' as const,
          atMs: r.nowMs,
          key,
          account: e.account,
          count: 0,
          shared: { count: r.states[0]?.used ?? 0, windowMs: EXPIRED_WINDOW_MS },
        })),
      );
    },
    onDebit(e: DebitEvent) {
      if (e.duplicate) return;
      const periods = periodsAt(e.atMs, timezone());
      engine.record({
        kind: 'settled',
        atMs: e.atMs,
        key: reportKey(e),
        account: e.account,
        tokens: e.tokens,
        spendMicros: e.spendMicros,
        budgets: e.limits
          .filter((l) => BUDGETS.has(l.metric) && l.scope === 'key')
          .map((l) => ({ metric: l.metric as CrossingMetric, used: l.used, limit: l.limit })),
        period: periods.month,
        periodEndMs: periods.monthEndMs,
      });
    },
  };
}

/** Shared counters kept as windows in the limiter store, under the key's account tag. */
export const limiterCounter = (limiter: LimiterStore): SharedCounter => ({
  async addEarlyRetries(account, ref, windowMs, n) {
    const r = await limiter.decide({
      ops: [
        {
          kind: 'window',
          key: K.keyEarlyRetries(account, ref, windowMs),
          limit: Number.MAX_SAFE_INTEGER,
          windowMs,
          cost: n,
        },
      ],
      atomic: false,
    });
    return { count: r.states[0]?.used ?? 0, nowMs: r.nowMs };
  },
});
