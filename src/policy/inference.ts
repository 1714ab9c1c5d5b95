/**
 * The inference domain's decision, pure (contract §2, §4): descriptors → one request → checks in
 * contract order → one atomic store decision → statuses, headers and the JSON body Envoy returns.
 */
import {
  ANY_MODEL,
  type InferencePolicy,
  type Limit,
  type Model,
  type ModelLimits,
  type Tier,
  type WindowName,
} from '../config/inference.js';
import { invalid } from '../errors.js';
import type { KeyHints, Principal } from '../keys/resolve.js';
import type { Decision, DecisionResult, Op, OpState } from '../store/store.js';
import { EXPIRED_WINDOW_MS, inferenceKeys as K, periodsAt } from './inference-keys.js';

/** Per-request token counts above this are refused (matches the RLS hits_addend bound). */
export const MAX_TOKENS = 1_000_000_000;
/**
 * Longest entry value accepted. Generous on purpose: Envoy fails open on an RLS error, so anything a
 * client can put in a header must get a decision, not INVALID_ARGUMENT.
 */
export const MAX_VALUE_LENGTH = 4096;
/** A key slot is always taken (for lease-expiry signals) even when the tier sets no concurrency cap. */
const UNLIMITED_SLOTS = 1_000_000_000;
/** How long a reservation outlives its lease, so a late Debit still finds it (contract §3). */
export const RESERVATION_GRACE_MS = 3_600_000;

export type DenyCode =
  | 'KEY_UNKNOWN'
  | 'KEY_DISABLED'
  | 'MAX_TOKENS_LIMIT_EXCEEDED'
  | 'MONTHLY_TOKEN_LIMIT_EXCEEDED'
  | 'MONTHLY_SPEND_LIMIT_EXCEEDED'
  | 'DAILY_SPEND_LIMIT_EXCEEDED'
  | 'CONCURRENT_LIMIT_EXCEEDED'
  | 'RATE_LIMIT_EXCEEDED'
  | 'TOKEN_RATE_LIMIT_EXCEEDED';

export type Metric =
  | 'requests'
  | 'tokens'
  | 'tokens_in'
  | 'tokens_out'
  | 'concurrency'
  | 'monthly_tokens'
  | 'monthly_spend'
  | 'daily_spend';
export type Scope = 'key' | 'account_model';
export type UsageKind = 'tokens' | 'tokens_in' | 'tokens_out';

/** The descriptor entries the inference domain reads (contract §2); others are ignored. */
export const ENTRY_NAMES = [
  'key',
  'model',
  'tier',
  'account',
  'tokens',
  'tokens_in',
  'tokens_out',
  'request_id',
  'usage',
] as const;
type EntryName = (typeof ENTRY_NAMES)[number];
const ENTRY_NAME_SET = new Set<string>(ENTRY_NAMES);
const NUMERIC = new Set<EntryName>(['tokens', 'tokens_in', 'tokens_out']);

/** The merged entries of every LLM descriptor of one request. */
export interface LlmRequest {
  key: string;
  model?: string;
  tier?: string;
  account?: string;
  tokens?: number;
  tokensIn?: number;
  tokensOut?: number;
  requestId?: string;
}

/** What a descriptor's status reports: nothing (not LLM), the key's limits, or account × model's. */
export type DescriptorScope = 'none' | 'key' | 'model';

export interface ParsedInference {
  /** Absent when no descriptor carries `key`. */
  llm?: LlmRequest;
  scopes: DescriptorScope[];
  /** Stream-done usage (descriptors with entry `usage`): the request is a debit, not an admission. */
  usage?: Partial<Record<UsageKind, number>>;
}

export interface DescriptorInput {
  entries: readonly { key: string; value: string }[];
  hitsAddend?: bigint | number | undefined;
}

const parseCount = (value: string, field: string): number => {
  if (!/^\d{1,10}$/.test(value)) throw invalid(field, `must be an integer >= 0, got "${value.slice(0, 32)}"`);
  const n = Number(value);
  if (n > MAX_TOKENS) throw invalid(field, `at most ${MAX_TOKENS}, got ${n}`);
  return n;
};

const valueField = (i: number, j: number): string => `descriptors[${i}].entries[${j}].value`;

const hasKeyEntry = (entries: DescriptorInput['entries']): boolean => {
  for (const e of entries) if (e.key === 'key') return true;
  return false;
};

/** Where an entry first appears among the LLM descriptors (for an error only: not kept per parse). */
const firstField = (descriptors: readonly DescriptorInput[], name: EntryName): string => {
  for (let i = 0; i < descriptors.length; i++) {
    const entries = descriptors[i]!.entries;
    if (!hasKeyEntry(entries)) continue;
    for (let j = 0; j < entries.length; j++) if (entries[j]!.key === name) return valueField(i, j);
  }
  return '';
};

/**
 * Merges the LLM descriptors' entries; the same entry with two values is INVALID_ARGUMENT. Runs on
 * every decision: an entry's field path is built only for an error, from where it was first seen.
 */
export function parseInferenceRequest(
  descriptors: readonly DescriptorInput[],
  hitsAddend: number,
): ParsedInference {
  const values: Partial<Record<EntryName, string>> = {};
  const scopes: DescriptorScope[] = [];
  let usage: Partial<Record<UsageKind, number>> | undefined;
  for (let i = 0; i < descriptors.length; i++) {
    const d = descriptors[i]!;
    if (!hasKeyEntry(d.entries)) {
      scopes.push('none');
      continue;
    }
    let hasModel = false;
    for (let j = 0; j < d.entries.length; j++) {
      const e = d.entries[j]!;
      if (!ENTRY_NAME_SET.has(e.key)) continue;
      const name = e.key as EntryName;
      if (e.value.length > MAX_VALUE_LENGTH)
        throw invalid(valueField(i, j), `at most ${MAX_VALUE_LENGTH} characters`);
      if (name === 'model') hasModel = true;
      if (name === 'usage') {
        if (e.value !== 'tokens' && e.value !== 'tokens_in' && e.value !== 'tokens_out') {
          throw invalid(
            valueField(i, j),
            `usage must be tokens, tokens_in or tokens_out, got "${e.value.slice(0, 32)}"`,
          );
        }
        usage ??= {};
        if (usage[e.value] !== undefined)
          throw invalid(valueField(i, j), `usage "${e.value}" is given twice`);
        const raw = d.hitsAddend ?? hitsAddend;
        const amount = Number(raw);
        if (amount > MAX_TOKENS)
          throw invalid(`descriptors[${i}].hits_addend`, `at most ${MAX_TOKENS}, got ${raw}`);
        usage[e.value] = amount;
        continue;
      }
      if (NUMERIC.has(name)) parseCount(e.value, valueField(i, j));
      const prev = values[name];
      if (prev === undefined) {
        values[name] = e.value;
      } else if (prev !== e.value) {
        // Values are not echoed: a `key` entry may be a raw API key, and errors get logged.
        throw invalid(
          valueField(i, j),
          `entry "${name}" differs from the one in ${firstField(descriptors, name)}`,
        );
      }
    }
    scopes.push(hasModel ? 'model' : 'key');
  }
  if (values.key === undefined) return { scopes };
  const llm: LlmRequest = { key: values.key };
  if (values.model !== undefined) llm.model = values.model;
  if (values.tier !== undefined) llm.tier = values.tier;
  if (values.account !== undefined) llm.account = values.account;
  if (values.request_id !== undefined) llm.requestId = values.request_id;
  if (values.tokens !== undefined) llm.tokens = Number(values.tokens);
  if (values.tokens_in !== undefined) llm.tokensIn = Number(values.tokens_in);
  if (values.tokens_out !== undefined) llm.tokensOut = Number(values.tokens_out);
  return usage ? { llm, scopes, usage } : { llm, scopes };
}

/**
 * Descriptor hints for unregistered keys. A tier the policy does not define is ignored (default
 * tier), not refused: the tier comes from a client header, and a refusal would make Envoy fail open.
 */
export const hintsOf = (req: LlmRequest, policy: InferencePolicy): KeyHints => ({
  account: req.account,
  tier: req.tier !== undefined && policy.tiers.has(req.tier) ? req.tier : undefined,
});

/** What each op of a decision is, for statuses, headers, bodies and events. */
export interface OpMeta {
  metric: Metric;
  scope: Scope;
  /** The configured limit (a zero-cost check may pass the store limit - 1). */
  limit: number;
  /** Window length, lease (concurrency) or calendar period (budgets). */
  windowMs: number;
  window?: WindowName | 'month';
  /** Units this request asks of the limit. */
  cost: number;
  /** Tracked but not limited (the key's lease slot when the tier sets no concurrency). */
  unlimited?: boolean;
  /** Concurrency: the Retry-After the policy advises, before the cap by the oldest lease's expiry. */
  retryAfterMs?: number;
}

export interface Admission {
  decision: Decision;
  meta: OpMeta[];
  requestId: string;
  principal: Principal;
  model?: string;
}

/**
 * An op's meta in one field order, absent fields undefined: render, events and binding read these on
 * every decision, so they get one object shape, built without spreads (which made several shapes and
 * a temporary object each).
 */
export const opMeta = (
  metric: Metric,
  scope: Scope,
  limit: number,
  windowMs: number,
  window: WindowName | 'month' | undefined,
  cost: number,
  unlimited: boolean,
  retryAfterMs: number | undefined,
): OpMeta => ({ metric, scope, limit, windowMs, window, cost, unlimited, retryAfterMs });

/** A denial decided by policy alone, before any store call. */
export interface PolicyDenial {
  code: 'KEY_UNKNOWN' | 'KEY_DISABLED' | 'MAX_TOKENS_LIMIT_EXCEEDED';
  limit?: number;
  requested?: number;
}

/** A model's policy entry, else the `*` entry that covers models not listed. */
export const policyModel = (policy: InferencePolicy, id: string): Model | undefined =>
  policy.models.get(id) ?? policy.models.get(ANY_MODEL);

export const modelLimits = (model: Model | undefined, tier: string): ModelLimits | undefined =>
  model ? (model.limits.get(tier) ?? model.limits.get('*')) : undefined;

/** The request's total token reservation: `tokens`, else `tokens_in` + `tokens_out`. */
export const totalTokens = (r: { tokens?: number; tokensIn?: number; tokensOut?: number }): number =>
  r.tokens ?? (r.tokensIn ?? 0) + (r.tokensOut ?? 0);

/** Checks 1 and 2 (and unknown keys), decided without the store. */
export function precheck(policy: InferencePolicy, p: Principal, req: LlmRequest): PolicyDenial | undefined {
  if (!p.registered && policy.unknownKeys === 'deny') return { code: 'KEY_UNKNOWN' };
  if (p.disabled) return { code: 'KEY_DISABLED' };
  const cap = p.caps.maxTokensPerRequest;
  const asked = req.tokensOut ?? req.tokens;
  if (cap !== undefined && asked !== undefined && asked > cap) {
    return { code: 'MAX_TOKENS_LIMIT_EXCEEDED', limit: cap, requested: asked };
  }
  return undefined;
}

/** Checks 3–6 as one atomic decision, in contract order. */
export function planAdmission(
  policy: InferencePolicy,
  p: Principal,
  req: LlmRequest,
  nowMs: number,
  requestId: string,
  dryRun = false,
): Admission {
  const tier: Tier = policy.tiers.get(p.tier) ?? policy.tiers.get(policy.defaultTier)!;
  const model = req.model === undefined ? undefined : policyModel(policy, req.model);
  const ml = modelLimits(model, tier.name);
  const leaseMs = model?.leaseMs ?? policy.leaseMs;
  const retryAfterMs = model?.concurrencyRetryAfterMs ?? policy.concurrencyRetryAfterMs;
  const ops: Op[] = [];
  const meta: OpMeta[] = [];
  const a = p.account;

  const periods = periodsAt(nowMs, policy.timezone);
  const budget = (
    limit: number | undefined,
    key: (account: string, ref: string, period: string) => string,
    metric: Metric,
    monthly: boolean,
  ) => {
    // Named only when limited: a budget key re-encodes the key's reference (no cache, unlike the rest).
    if (limit === undefined) return;
    const periodEndMs = monthly ? periods.monthEndMs : periods.dayEndMs;
    const windowMs = periodEndMs - (monthly ? periods.monthStartMs : periods.dayStartMs);
    ops.push({
      kind: 'budget',
      key: key(a, p.ref, monthly ? periods.month : periods.day),
      limit,
      periodEndMs,
    });
    meta.push(opMeta(metric, 'key', limit, windowMs, monthly ? 'month' : 'day', 0, false, undefined));
  };
  budget(p.caps.monthlyTokens, K.monthlyTokens, 'monthly_tokens', true);
  budget(p.caps.monthlySpendMicros, K.monthlySpend, 'monthly_spend', true);
  budget(p.caps.dailySpendMicros, K.dailySpend, 'daily_spend', false);

  ops.push({
    kind: 'slot',
    key: K.keySlots(a, p.ref),
    limit: tier.concurrent ?? UNLIMITED_SLOTS,
    leaseMs,
    expiredKey: K.keyExpired(a, p.ref),
    expiredWindowMs: EXPIRED_WINDOW_MS,
    // The key's own slots (account × model slots are shared with its other keys): runaway signal.
    longHeldMs: policy.signals.runaway.heldLongerThanMs,
  });
  meta.push(
    opMeta(
      'concurrency',
      'key',
      tier.concurrent ?? UNLIMITED_SLOTS,
      leaseMs,
      undefined,
      1,
      tier.concurrent === undefined,
      retryAfterMs,
    ),
  );
  if (req.model !== undefined && ml?.concurrent !== undefined) {
    ops.push({ kind: 'slot', key: K.modelSlots(a, req.model), limit: ml.concurrent, leaseMs });
    meta.push(
      opMeta('concurrency', 'account_model', ml.concurrent, leaseMs, undefined, 1, false, retryAfterMs),
    );
  }

  const window = (key: string, l: Limit | undefined, metric: Metric, scope: Scope, cost: number) => {
    if (!l) return;
    // Nothing reserved: denied once what is counted reaches the limit (store admits used + cost <= limit).
    const limit = cost === 0 ? l.limit - 1 : l.limit;
    // Request counts are never settled: the reservation records token windows only.
    ops.push({
      kind: 'window',
      key,
      limit,
      windowMs: l.windowMs,
      cost,
      reserve: metric !== 'requests',
    });
    meta.push(opMeta(metric, scope, l.limit, l.windowMs, l.window, cost, false, undefined));
  };
  window(K.keyRequests(a, p.ref, tier.requests?.windowMs ?? 0), tier.requests, 'requests', 'key', 1);
  if (req.model !== undefined) {
    window(
      K.modelRequests(a, req.model, ml?.requests?.windowMs ?? 0),
      ml?.requests,
      'requests',
      'account_model',
      1,
    );
  }
  window(K.keyTokens(a, p.ref, tier.tokens?.windowMs ?? 0), tier.tokens, 'tokens', 'key', totalTokens(req));
  if (req.model !== undefined) {
    const m = req.model;
    window(
      K.modelTokensIn(a, m, ml?.tokensIn?.windowMs ?? 0),
      ml?.tokensIn,
      'tokens_in',
      'account_model',
      req.tokensIn ?? 0,
    );
    window(
      K.modelTokensOut(a, m, ml?.tokensOut?.windowMs ?? 0),
      ml?.tokensOut,
      'tokens_out',
      'account_model',
      req.tokensOut ?? 0,
    );
  }

  return {
    decision: {
      ops,
      atomic: true,
      reservation: { requestId, key: K.reservation(a, requestId), ttlMs: leaseMs + RESERVATION_GRACE_MS },
      ...(dryRun ? { dryRun: true } : {}),
    },
    meta,
    requestId,
    principal: p,
    model: req.model,
  };
}

// ---------------------------------------------------------------------------------------------
// Rendering: statuses, headers, raw_body.

export type Unit = 'unknown' | 'second' | 'minute' | 'hour' | 'day' | 'month';

export interface StatusOut {
  overLimit: boolean;
  limit?: { name: string; requestsPerUnit: number; unit: Unit };
  remaining: number;
  durationMs?: number;
}

export interface Outcome {
  admitted: boolean;
  code?: DenyCode;
  /** The op that denied (store denials), for events and logs. */
  deniedMeta?: OpMeta;
  /** Store denials: the Retry-After in ms (-1: the request can never fit). */
  retryMs?: number;
  statuses: StatusOut[];
  responseHeaders: [string, string][];
  requestHeaders: [string, string][];
  /** JSON raw_body, on denial. */
  body?: string;
}

const CODE_OF: Record<Metric, DenyCode> = {
  requests: 'RATE_LIMIT_EXCEEDED',
  tokens: 'TOKEN_RATE_LIMIT_EXCEEDED',
  tokens_in: 'TOKEN_RATE_LIMIT_EXCEEDED',
  tokens_out: 'TOKEN_RATE_LIMIT_EXCEEDED',
  concurrency: 'CONCURRENT_LIMIT_EXCEEDED',
  monthly_tokens: 'MONTHLY_TOKEN_LIMIT_EXCEEDED',
  monthly_spend: 'MONTHLY_SPEND_LIMIT_EXCEEDED',
  daily_spend: 'DAILY_SPEND_LIMIT_EXCEEDED',
};

export const errorType = (code: DenyCode): 'rate_limit_error' | 'quota_error' | 'invalid_request_error' => {
  switch (code) {
    case 'CONCURRENT_LIMIT_EXCEEDED':
    case 'RATE_LIMIT_EXCEEDED':
    case 'TOKEN_RATE_LIMIT_EXCEEDED':
      return 'rate_limit_error';
    case 'KEY_DISABLED':
    case 'MONTHLY_TOKEN_LIMIT_EXCEEDED':
    case 'MONTHLY_SPEND_LIMIT_EXCEEDED':
    case 'DAILY_SPEND_LIMIT_EXCEEDED':
      return 'quota_error';
    default:
      return 'invalid_request_error';
  }
};

/** The HTTP status deploy/ maps each code to (Envoy's local_reply_config). */
export const httpStatus = (code: DenyCode): number =>
  code === 'KEY_UNKNOWN'
    ? 401
    : code === 'MAX_TOKENS_LIMIT_EXCEEDED'
      ? 400
      : errorType(code) === 'quota_error'
        ? 402
        : 429;

const secs = (ms: number): number => Math.ceil(ms / 1000);
const usd = (micros: number): string => (micros / 1e6).toFixed(2);
const unitOf = (m: OpMeta): Unit => (m.window ?? 'unknown') as Unit;
const scopeText = (m: OpMeta, model: string | undefined) =>
  m.scope === 'account_model' && model !== undefined ? ` for model ${model}` : '';
const TOKEN_WORD: Partial<Record<Metric, string>> = {
  tokens: 'tokens',
  tokens_in: 'input tokens',
  tokens_out: 'output tokens',
};

const RATE_METRICS = new Set<Metric>(['requests', 'tokens', 'tokens_in', 'tokens_out']);

interface Located {
  meta: OpMeta;
  state: OpState;
}

/** Remaining against the configured limit (the store may hold limit - 1 for zero-cost checks). */
const remainingOf = (l: Located): number => Math.max(0, l.meta.limit - l.state.used);

/**
 * The limit closest to exhaustion (least remaining share of its limit), among those of a metric
 * and/or scope when given: every decision runs this several times, so no filtered copies.
 */
const binding = (items: Located[], metric?: Metric, scope?: Scope): Located | undefined => {
  let best: Located | undefined;
  let bestShare = Number.POSITIVE_INFINITY;
  for (const it of items) {
    if (
      (metric !== undefined && it.meta.metric !== metric) ||
      (scope !== undefined && it.meta.scope !== scope)
    )
      continue;
    const share = it.meta.limit <= 0 ? 0 : remainingOf(it) / it.meta.limit;
    if (share < bestShare) {
      best = it;
      bestShare = share;
    }
  }
  return best;
};

const message = (l: Located, model: string | undefined, retryS: number | undefined): string => {
  const { meta: m, state: s } = l;
  const where = scopeText(m, model);
  switch (m.metric) {
    case 'concurrency':
      return `Concurrent prediction limit exceeded${where}. ${s.used}/${m.limit} predictions running.`;
    case 'requests':
      return `Rate limit exceeded${where}: ${m.limit} requests per ${m.window}.${retryS !== undefined ? ` Retry after ${retryS} s.` : ''}`;
    case 'tokens':
    case 'tokens_in':
    case 'tokens_out':
      return m.cost > m.limit
        ? `Token rate limit exceeded${where}: this request needs ${m.cost} ${TOKEN_WORD[m.metric]}, above the limit of ${m.limit} per ${m.window}.`
        : `Token rate limit exceeded${where}: ${m.limit} ${TOKEN_WORD[m.metric]} per ${m.window}, ${s.used} used.${retryS !== undefined ? ` Retry after ${retryS} s.` : ''}`;
    case 'monthly_tokens':
      return `Monthly token limit reached: ${s.used}/${m.limit} tokens used this month.`;
    case 'monthly_spend':
      return `Monthly spend limit reached: $${usd(s.used)} of $${usd(m.limit)} used this month.`;
    case 'daily_spend':
      return `Daily spend limit reached: $${usd(s.used)} of $${usd(m.limit)} used today.`;
  }
};

const statusFor = (l: Located | undefined, overLimit: boolean, name: (m: OpMeta) => string): StatusOut => {
  if (!l) return { overLimit, remaining: 0 };
  const { meta: m, state: s } = l;
  const durationMs = overLimit && s.retryMs >= 0 ? s.retryMs : s.resetMs;
  return {
    overLimit,
    limit: { name: name(m), requestsPerUnit: Math.min(m.limit, 0xffffffff), unit: unitOf(m) },
    remaining: Math.min(overLimit ? 0 : remainingOf(l), 0xffffffff),
    durationMs,
  };
};

/**
 * `scope:metric` status names, built once: a template string per answer is a rope the encoder must
 * flatten. CODE_OF names every metric (its type requires it).
 */
const LIMIT_NAMES = Object.fromEntries(
  (['key', 'account_model'] as const).map((scope) => [
    scope,
    Object.fromEntries(Object.keys(CODE_OF).map((metric) => [metric, `${scope}:${metric}`])),
  ]),
) as Record<Scope, Record<Metric, string>>;
const limitName = (m: OpMeta): string => LIMIT_NAMES[m.scope][m.metric];

const locate = (adm: Admission, result: DecisionResult) => {
  const located: Located[] = adm.meta.map((meta, i) => ({ meta, state: result.states[i]! }));
  const windowOps = located.filter((l) => !l.meta.unlimited && RATE_METRICS.has(l.meta.metric));
  return { located, windowOps };
};

/**
 * The denied op with its state's retryMs as the Retry-After to send. Concurrency has no true time
 * until admission (a slot frees when some request ends): the policy's advice, capped by the time
 * until the oldest lease expires, which does free a slot.
 */
const advised = (l: Located): Located =>
  l.meta.retryAfterMs !== undefined && l.state.retryMs > 0
    ? { meta: l.meta, state: { ...l.state, retryMs: Math.min(l.meta.retryAfterMs, l.state.retryMs) } }
    : l;

const TOKEN_HEADERS = [
  ['tokens', 'x-ratelimit-limit-tokens', 'x-ratelimit-remaining-tokens'],
  ['tokens_in', 'x-ratelimit-limit-tokens-in', 'x-ratelimit-remaining-tokens-in'],
  ['tokens_out', 'x-ratelimit-limit-tokens-out', 'x-ratelimit-remaining-tokens-out'],
] as const;

/** X-RateLimit-* and the per-metric x-ratelimit-* headers of the binding limits (contract §4). */
function rateHeaders(windowOps: Located[], now: number): [string, string][] {
  const headers: [string, string][] = [];
  const reqBinding = binding(windowOps, 'requests');
  if (reqBinding) {
    const limit = String(reqBinding.meta.limit);
    const remaining = String(remainingOf(reqBinding));
    headers.push(
      ['X-RateLimit-Limit', limit],
      ['X-RateLimit-Remaining', remaining],
      ['X-RateLimit-Reset', String(secs(now + reqBinding.state.resetMs))],
      ['x-ratelimit-limit-requests', limit],
      ['x-ratelimit-remaining-requests', remaining],
    );
  }
  for (const [metric, limitHeader, remainingHeader] of TOKEN_HEADERS) {
    const b = binding(windowOps, metric);
    if (b) headers.push([limitHeader, String(b.meta.limit)], [remainingHeader, String(remainingOf(b))]);
  }
  if (reqBinding) headers.push(['x-ratelimit-window', String(secs(reqBinding.meta.windowMs))]);
  return headers;
}

/**
 * The answer to an admission decided by the store. A denial carries Retry-After: the time until the
 * denied limit admits this request again (budgets: until their calendar period ends), omitted when
 * it never can (the request's cost is above the limit).
 */
export function renderAdmission(
  adm: Admission,
  result: DecisionResult,
  scopes: readonly DescriptorScope[],
  generatedId: boolean,
): Outcome {
  const { located, windowOps } = locate(adm, result);
  const stored = result.admitted ? undefined : located[result.denied];
  const denied = stored && advised(stored);
  const now = result.nowMs;
  const headers = rateHeaders(windowOps, now);

  const deniedScope: DescriptorScope | undefined = denied
    ? denied.meta.scope === 'key'
      ? 'key'
      : 'model'
    : undefined;
  const anyCovers = deniedScope !== undefined && scopes.includes(deniedScope);
  const statuses = scopes.map((scope) => {
    if (scope === 'none') return { overLimit: false, remaining: 0 };
    if (denied && (scope === deniedScope || !anyCovers)) return statusFor(denied, true, limitName);
    return statusFor(
      binding(windowOps, undefined, scope === 'key' ? 'key' : 'account_model'),
      false,
      limitName,
    );
  });

  const requestHeaders: [string, string][] = generatedId ? [['x-ratelimit-request-id', adm.requestId]] : [];
  if (!stored || !denied) return { admitted: true, statuses, responseHeaders: headers, requestHeaders };

  const code = CODE_OF[denied.meta.metric];
  const retryS = denied.state.retryMs >= 0 ? Math.max(1, secs(denied.state.retryMs)) : undefined;
  if (retryS !== undefined) headers.push(['Retry-After', String(retryS)]);
  headers.push(['x-ratelimit-denied', code]);
  const details: Record<string, unknown> = { limit: denied.meta.limit };
  if (denied.meta.metric === 'concurrency') details['active'] = denied.state.used;
  details['metric'] = denied.meta.metric;
  details['scope'] = denied.meta.scope;
  details['window_seconds'] = secs(denied.meta.windowMs);
  // Concurrency: when the oldest slot's lease expires, the latest a slot frees (the upper bound).
  details['reset'] =
    denied.meta.metric === 'concurrency' && stored.state.retryMs > 0
      ? secs(now + stored.state.retryMs)
      : secs(now + denied.state.resetMs);
  const body = JSON.stringify({
    error: { type: errorType(code), message: message(denied, adm.model, retryS), code, details },
  });
  return {
    admitted: false,
    code,
    deniedMeta: denied.meta,
    retryMs: denied.state.retryMs,
    statuses,
    responseHeaders: headers,
    requestHeaders,
    body,
  };
}

/**
 * The answer to a denial decided by policy alone. `state` is a dry run of the request's admission
 * (nothing consumed), for the same rate headers as any other decision; absent when the store could
 * not answer, as a policy denial never depends on it. No Retry-After: a disabled or unknown key
 * stays refused until an operator acts, and a request above the key's max_tokens cap never fits
 * (a smaller one may be sent at once).
 */
export function renderPolicyDenial(
  d: PolicyDenial,
  scopes: readonly DescriptorScope[],
  generatedId: string | undefined,
  state?: { adm: Admission; result: DecisionResult },
): Outcome {
  const details: Record<string, unknown> =
    d.code === 'MAX_TOKENS_LIMIT_EXCEEDED'
      ? { limit: d.limit, requested: d.requested, metric: 'max_tokens', scope: 'key' }
      : { metric: d.code === 'KEY_DISABLED' ? 'disabled' : 'key', scope: 'key' };
  const msg =
    d.code === 'KEY_UNKNOWN'
      ? 'Unknown API key.'
      : d.code === 'KEY_DISABLED'
        ? 'This API key is disabled.'
        : `max_tokens ${d.requested} exceeds this key's limit of ${d.limit} tokens per request.`;
  const keyCovered = scopes.includes('key');
  return {
    admitted: false,
    code: d.code,
    statuses: scopes.map((s) =>
      s === 'none' || (keyCovered && s !== 'key')
        ? { overLimit: false, remaining: 0 }
        : { overLimit: true, remaining: 0 },
    ),
    responseHeaders: [
      ...(state ? rateHeaders(locate(state.adm, state.result).windowOps, state.result.nowMs) : []),
      ['x-ratelimit-denied', d.code],
    ],
    requestHeaders: generatedId !== undefined ? [['x-ratelimit-request-id', generatedId]] : [],
    body: JSON.stringify({ error: { type: errorType(d.code), message: msg, code: d.code, details } }),
  };
}
