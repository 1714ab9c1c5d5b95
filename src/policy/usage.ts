/**
 * Post-response settlement, pure (contract §3): actual token counts → one store settle that
 * corrects the admission's reservation, adds tokens to the account × model windows and the
 * monthly tokens, adds spend to daily and monthly spend, and frees the slots.
 */
import type { InferencePolicy, Limit, Model, Price } from '../config/inference.js';
import { invalid } from '../errors.js';
import type { Principal } from '../keys/resolve.js';
import type { OpState, Settle, SettleResult } from '../store/store.js';
import {
  type Metric,
  modelLimits,
  type OpMeta,
  opMeta,
  policyModel,
  RESERVATION_GRACE_MS,
} from './inference.js';
import { inferenceKeys as K, periodsAt } from './inference-keys.js';

/** Monthly counters stay readable this long after their month (reports on last month). */
const MONTH_KEEP_MS = 35 * 86_400_000;
const DAY_KEEP_MS = 8 * 86_400_000;

/** Actual usage; `tokens` alone (stream-done total) has no input/output split. */
export interface Usage {
  tokensIn?: number;
  tokensOut?: number;
  tokens?: number;
}

export interface SettlePlan {
  settle: Settle;
  windowMeta: OpMeta[];
  counterMeta: OpMeta[];
  spendMicros: number;
  tokensIn: number;
  tokensOut: number;
  tokens: number;
}

/**
 * Spend in integer micro-dollars, rounded half up once per debit. A total without split is
 * charged at the higher of the two prices, so a cap is never under-charged.
 */
export function spendMicros(price: Price | undefined, u: Usage): number {
  if (!price) return 0;
  const M = 1_000_000n;
  let num: bigint;
  if (u.tokensIn === undefined && u.tokensOut === undefined) {
    const p = Math.max(price.inputMicrosPerMillion, price.outputMicrosPerMillion);
    num = BigInt(u.tokens ?? 0) * BigInt(p);
  } else {
    num =
      BigInt(u.tokensIn ?? 0) * BigInt(price.inputMicrosPerMillion) +
      BigInt(u.tokensOut ?? 0) * BigInt(price.outputMicrosPerMillion);
  }
  return Number((num + M / 2n) / M);
}

/**
 * The model a debit is priced by: its own entry, else the policy's `*` entry; a model matching
 * neither cannot be priced and is refused.
 */
export function modelFor(policy: InferencePolicy, model: string, field: string): Model {
  if (model === '') throw invalid(field, 'must not be empty');
  const m = policyModel(policy, model);
  if (!m) throw invalid(field, `unknown model "${model.slice(0, 64)}": no price to debit it by`);
  return m;
}

/**
 * A stream-done debit's model when the policy has neither an entry for it nor a `*` entry: it was
 * admitted with the key's limits alone, so it settles those (key token window, monthly tokens) at
 * no spend, with the policy's lease. Stream-done cannot be refused (Envoy has no Release to fall
 * back on), so refusing would leave the slot held for the whole lease.
 */
export const unpricedModel = (policy: InferencePolicy, model: string): Model => ({
  id: model,
  leaseMs: policy.leaseMs,
  concurrencyRetryAfterMs: policy.concurrencyRetryAfterMs,
  limits: new Map(),
});

export function planSettle(
  policy: InferencePolicy,
  p: Principal,
  modelId: string,
  model: Model,
  usage: Usage,
  requestId: string,
  release: boolean,
  nowMs: number,
  onceSuffix = '',
): SettlePlan {
  const tier = policy.tiers.get(p.tier) ?? policy.tiers.get(policy.defaultTier)!;
  const ml = modelLimits(model, tier.name);
  const a = p.account;
  const total = usage.tokens ?? (usage.tokensIn ?? 0) + (usage.tokensOut ?? 0);
  const windows: Settle['windows'] = [];
  const windowMeta: OpMeta[] = [];
  const addWindow = (metric: Metric, scope: OpMeta['scope'], l: Limit, key: string, amount: number) => {
    windows.push({ key, windowMs: l.windowMs, limit: l.limit, amount });
    windowMeta.push(opMeta(metric, scope, l.limit, l.windowMs, l.window, amount, false, undefined));
  };
  if (tier.tokens)
    addWindow('tokens', 'key', tier.tokens, K.keyTokens(a, p.ref, tier.tokens.windowMs), total);
  if (ml?.tokensIn && usage.tokensIn !== undefined) {
    const l = ml.tokensIn;
    addWindow('tokens_in', 'account_model', l, K.modelTokensIn(a, modelId, l.windowMs), usage.tokensIn);
  }
  if (ml?.tokensOut && usage.tokensOut !== undefined) {
    const l = ml.tokensOut;
    addWindow('tokens_out', 'account_model', l, K.modelTokensOut(a, modelId, l.windowMs), usage.tokensOut);
  }

  const spend = spendMicros(model.price, usage);
  const periods = periodsAt(nowMs, policy.timezone);
  const monthMs = periods.monthEndMs - periods.monthStartMs;
  const dayMs = periods.dayEndMs - periods.dayStartMs;
  // Usage is counted even without a cap, so reports and a cap set later see it.
  const periodOf = {
    month: { endMs: periods.monthEndMs, lengthMs: monthMs, keepMs: MONTH_KEEP_MS },
    day: { endMs: periods.dayEndMs, lengthMs: dayMs, keepMs: DAY_KEEP_MS },
  };
  const budgets: {
    metric: Metric;
    key: string;
    amount: number;
    cap: number | undefined;
    period: 'month' | 'day';
  }[] = [
    {
      metric: 'monthly_tokens',
      key: K.monthlyTokens(a, p.ref, periods.month),
      amount: total,
      cap: p.caps.monthlyTokens,
      period: 'month',
    },
    {
      metric: 'monthly_spend',
      key: K.monthlySpend(a, p.ref, periods.month),
      amount: spend,
      cap: p.caps.monthlySpendMicros,
      period: 'month',
    },
    {
      metric: 'daily_spend',
      key: K.dailySpend(a, p.ref, periods.day),
      amount: spend,
      cap: p.caps.dailySpendMicros,
      period: 'day',
    },
  ];
  const counters: Settle['counters'] = budgets.map((b) => ({
    key: b.key,
    amount: b.amount,
    ttlMs: periodOf[b.period].endMs - nowMs + periodOf[b.period].keepMs,
    limit: b.cap ?? 0,
    periodEndMs: periodOf[b.period].endMs,
  }));
  const counterMeta: OpMeta[] = budgets.map((b) =>
    opMeta(
      b.metric,
      'key',
      b.cap ?? 0,
      periodOf[b.period].lengthMs,
      b.period,
      b.amount,
      b.cap === undefined,
      undefined,
    ),
  );

  const leaseMs = Math.max(model.leaseMs, policy.leaseMs);
  return {
    settle: {
      requestId,
      reservationKey: K.reservation(a, requestId),
      onceKey: K.once(a, requestId, onceSuffix),
      onceTtlMs: leaseMs + RESERVATION_GRACE_MS,
      windows,
      counters,
      release,
    },
    windowMeta,
    counterMeta,
    spendMicros: spend,
    tokensIn: usage.tokensIn ?? 0,
    tokensOut: usage.tokensOut ?? 0,
    tokens: total,
  };
}

export interface LimitStateOut {
  metric: string;
  scope: string;
  limit: number;
  used: number;
  remaining: number;
  windowSeconds: number;
  /** Unix seconds at which the whole limit is available again. */
  reset: number;
}

const limitState = (m: OpMeta, s: OpState, nowMs: number): LimitStateOut => ({
  metric: m.metric,
  scope: m.scope,
  limit: m.limit,
  used: s.used,
  remaining: Math.max(0, m.limit - s.used),
  windowSeconds: Math.ceil(m.windowMs / 1000),
  reset: Math.ceil((nowMs + s.resetMs) / 1000),
});

/** What remains of each limited window and cap the debit touched. */
export function settledLimits(plan: SettlePlan, r: SettleResult): LimitStateOut[] {
  const out: LimitStateOut[] = [];
  plan.windowMeta.forEach((m, i) => {
    out.push(limitState(m, r.windows[i]!, r.nowMs));
  });
  plan.counterMeta.forEach((m, i) => {
    if (!m.unlimited) out.push(limitState(m, r.counters[i]!, r.nowMs));
  });
  return out;
}
