import { randomUUID } from 'node:crypto';
import { Counter } from 'prom-client';
import {
  type RateLimitRequest,
  type RateLimitResponse,
  RateLimitResponse_Code,
  RateLimitResponse_RateLimit_Unit,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import type { InferencePolicy } from '../config/inference.js';
import { RkError } from '../errors.js';
import { type Principal, resolveKey } from '../keys/resolve.js';
import { registry } from '../metrics.js';
import {
  type Admission,
  hintsOf,
  type LlmRequest,
  type Outcome,
  type ParsedInference,
  parseInferenceRequest,
  planAdmission,
  policyModel,
  precheck,
  renderAdmission,
  renderPolicyDenial,
  type StatusOut,
  type Unit,
} from '../policy/inference.js';
import { descriptorStatus, durationOf, headerValue, rateLimit, rlsResponse } from '../policy/rls-messages.js';
import { unpricedModel } from '../policy/usage.js';
import { type DecisionResult, StoreUnavailableError } from '../store/store.js';
import type { CallContext } from '../transport/types.js';
import type { Deps } from './deps.js';
import type { LimitUsage } from './inference-events.js';
import { anonymousRequestId, debit, policyOf } from './usage.js';

export const inferenceDecisions = new Counter({
  name: 'ratekeeper_inference_decisions_total',
  help: 'Inference-domain admissions by answer: OK or the denial code.',
  labelNames: ['code'] as const,
  registers: [registry],
});

/** Labelled children by answer, resolved once (a label lookup hashes the label set on every call). */
const decisionsByCode = new Map<string, { inc(): void }>();
const countDecision = (code: string): void => {
  let c = decisionsByCode.get(code);
  if (!c) {
    c = inferenceDecisions.labels({ code });
    decisionsByCode.set(code, c);
  }
  c.inc();
};

export const leaseExpiries = new Counter({
  name: 'ratekeeper_expired_slot_leases_total',
  help: 'Requests whose concurrency slot leases were freed because no Debit or Release came in time (runaway/hung requests); once per request, whatever slots it held.',
  registers: [registry],
});

export const unpricedDebits = new Counter({
  name: 'ratekeeper_unpriced_debits_total',
  help: 'Stream-done debits without a model entry, or for a model with no policy entry and no "*" entry: tokens counted, no spend added, slot freed.',
  registers: [registry],
});

const UNIT: Record<Unit, RateLimitResponse_RateLimit_Unit> = {
  unknown: RateLimitResponse_RateLimit_Unit.UNKNOWN,
  second: RateLimitResponse_RateLimit_Unit.SECOND,
  minute: RateLimitResponse_RateLimit_Unit.MINUTE,
  hour: RateLimitResponse_RateLimit_Unit.HOUR,
  day: RateLimitResponse_RateLimit_Unit.DAY,
  month: RateLimitResponse_RateLimit_Unit.MONTH,
};

const header = ([key, value]: [string, string]) => headerValue(key, value);
const duration = (ms: number) => durationOf(BigInt(Math.floor(ms / 1000)), (ms % 1000) * 1_000_000);
const utf8 = new TextEncoder();

const status = (s: StatusOut) =>
  descriptorStatus(
    s.overLimit ? RateLimitResponse_Code.OVER_LIMIT : RateLimitResponse_Code.OK,
    s.remaining,
    s.limit ? rateLimit(s.limit.requestsPerUnit, UNIT[s.limit.unit], s.limit.name) : undefined,
    s.durationMs !== undefined ? duration(s.durationMs) : undefined,
  );

export const toResponse = (o: Outcome): RateLimitResponse =>
  rlsResponse(
    o.admitted ? RateLimitResponse_Code.OK : RateLimitResponse_Code.OVER_LIMIT,
    o.statuses.map(status),
    o.responseHeaders.map(header),
    o.requestHeaders.map(header),
    o.body !== undefined ? utf8.encode(o.body) : undefined,
  );

const allOk = (n: number): Outcome => ({
  admitted: true,
  statuses: Array.from({ length: n }, () => ({ overLimit: false, remaining: 0 })),
  responseHeaders: [],
  requestHeaders: [],
});

/** The store could not answer (closed mode: RkError UNAVAILABLE; raw store: StoreUnavailableError). */
const storeDown = (err: unknown): undefined => {
  if (err instanceof StoreUnavailableError || (err instanceof RkError && err.code === 'UNAVAILABLE'))
    return undefined;
  throw err;
};

const emit = (
  deps: Deps,
  p: Principal,
  req: LlmRequest,
  requestId: string,
  o: Outcome,
  atMs: number,
  state?: { adm: Admission; result: DecisionResult },
) => {
  const hook = deps.events?.onDecision;
  if (!hook) return;
  const limits: LimitUsage[] = [];
  let held: { oldestMs: number; long: number } | undefined;
  if (state) {
    const { adm, result } = state;
    for (let i = 0; i < adm.meta.length; i++) {
      const m = adm.meta[i]!;
      const st = result.states[i]!;
      if (m.metric === 'concurrency' && m.scope === 'key' && st.heldMs !== undefined)
        held = { oldestMs: st.heldMs, long: st.longHeld ?? 0 };
      if (!m.unlimited)
        limits.push({
          metric: m.metric,
          scope: m.scope,
          limit: m.limit,
          used: st.used,
          windowMs: m.windowMs,
        });
    }
  }
  try {
    // One object of one shape, optional fields undefined when absent: this runs on every decision.
    hook({
      atMs,
      keyRef: p.ref,
      keyId: p.keyId,
      account: p.account,
      tier: p.tier,
      model: req.model,
      requestId,
      admitted: o.admitted,
      code: o.code,
      denied: o.deniedMeta ? { metric: o.deniedMeta.metric, scope: o.deniedMeta.scope } : undefined,
      // A limit's Retry-After as sent (the retry-storm signal compares retries with it); a policy
      // denial has none.
      retryMs: o.retryMs,
      limits,
      held,
    });
  } catch (e) {
    deps.log.error({ err: e }, 'onDecision hook failed');
  }
};

/**
 * Envoy's apply_on_stream_done descriptors: a debit that always answers OK. Unlike Debit it cannot
 * refuse a debit it cannot price (no model entry: the request came without x-model; or a model the
 * policy does not know): Envoy sends no Release, so the slot would stay held for the whole lease.
 * Such a debit settles the key's limits at no spend, and is logged and counted.
 */
async function streamDone(deps: Deps, policy: InferencePolicy, parsed: ParsedInference): Promise<Outcome> {
  const llm = parsed.llm!;
  const usage = parsed.usage!;
  const p = resolveKey(llm.key, policy, deps.keys, hintsOf(llm, policy));
  const kinds = Object.keys(usage).sort().join(',');
  // Without a model entry the request was admitted with the key's limits alone (no `*` entry
  // applies to it), so only those are settled; '' names no model in the debit event.
  const modelId = llm.model ?? '';
  const priced = llm.model === undefined ? undefined : policyModel(policy, llm.model);
  const requestId = llm.requestId ?? anonymousRequestId();
  const out = await debit(
    deps,
    policy,
    p,
    modelId,
    priced ?? unpricedModel(policy, modelId),
    {
      ...(usage.tokens_in !== undefined ? { tokensIn: usage.tokens_in } : {}),
      ...(usage.tokens_out !== undefined ? { tokensOut: usage.tokens_out } : {}),
      ...(usage.tokens !== undefined ? { tokens: usage.tokens } : {}),
    },
    requestId,
    // Envoy may report tokens_in and tokens_out in separate calls for one request. Each call is
    // idempotent per request id and metric set (the once-key suffix) and settles only its own
    // metrics against their reservation (the key's total window takes the reservation's correction
    // on the first call, later calls add their whole amount). The first call frees the slots; the
    // store keeps the reservation while amounts are left to correct, so the second still settles
    // against it and its own release is a no-op.
    true,
    `:sd:${kinds}`,
  );
  if (!priced && !out.duplicate) {
    unpricedDebits.inc();
    if (llm.model === undefined)
      deps.log.warn(
        { key: p.ref, account: p.account, requestId },
        'stream-done debit without a model entry: tokens counted, no spend',
      );
    else
      deps.log.warn(
        { key: p.ref, account: p.account, model: llm.model.slice(0, 64), requestId },
        'stream-done debit for a model the policy does not price: tokens counted, no spend',
      );
  }
  return allOk(parsed.scopes.length);
}

/**
 * ShouldRateLimit for the inference domain (called by rls.ts after validation): one decision per
 * request, atomic, in one store round trip (contract §2, §4).
 */
export async function decideInference(
  req: RateLimitRequest,
  deps: Deps,
  _ctx?: CallContext,
): Promise<RateLimitResponse> {
  const policy = policyOf(deps);
  const parsed = parseInferenceRequest(req.descriptors, req.hitsAddend);
  const llm = parsed.llm;
  if (!llm) return toResponse(allOk(parsed.scopes.length));
  if (parsed.usage) return toResponse(await streamDone(deps, policy, parsed));

  const p = resolveKey(llm.key, policy, deps.keys, hintsOf(llm, policy));
  const generated = llm.requestId === undefined ? randomUUID() : undefined;
  const requestId = llm.requestId ?? generated!;

  const denial = precheck(policy, p, llm);
  if (denial) {
    // A dry run of the same ops (one round trip, nothing consumed) gives the rate headers every
    // decision carries; the denial itself stands whatever the store answers.
    const dry = planAdmission(policy, p, llm, deps.store.now(), requestId, true);
    const result = await deps.store.decide(dry.decision).catch(storeDown);
    const state = result ? { adm: dry, result } : undefined;
    const o = renderPolicyDenial(denial, parsed.scopes, generated, state);
    countDecision(denial.code);
    emit(deps, p, llm, requestId, o, result?.nowMs ?? deps.store.now(), state);
    return toResponse(o);
  }

  const adm = planAdmission(policy, p, llm, deps.store.now(), requestId);
  const result = await deps.store.decide(adm.decision);
  const o = renderAdmission(adm, result, parsed.scopes, generated !== undefined);
  countDecision(o.code ?? 'OK');
  // The decision first: it carries the held slots as they are after the expiries were freed, so the
  // runaway signal never counts a slot both as long-held and as expired.
  emit(deps, p, llm, requestId, o, result.nowMs, { adm, result });
  if (result.expiredLeases > 0) {
    leaseExpiries.inc(result.expiredLeases);
    try {
      deps.events?.onLeaseExpired?.({
        atMs: result.nowMs,
        keyRef: p.ref,
        account: p.account,
        count: result.expiredLeases,
      });
    } catch (e) {
      deps.log.error({ err: e }, 'onLeaseExpired hook failed');
    }
  }
  if (!o.admitted)
    deps.log.debug({ key: p.ref, account: p.account, code: o.code, requestId }, 'inference denied');
  return toResponse(o);
}
