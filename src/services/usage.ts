import { randomUUID } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { Counter } from 'prom-client';
import {
  DebitResponseSchema,
  LimitStateSchema,
  ReleaseResponseSchema,
  UsageService,
} from '../../gen/ratekeeper/v1/usage_pb.js';
import type { InferencePolicy, Model } from '../config/inference.js';
import { invalid, RkError } from '../errors.js';
import { type Principal, resolveKey } from '../keys/resolve.js';
import { registry } from '../metrics.js';
import { MAX_TOKENS, MAX_VALUE_LENGTH } from '../policy/inference.js';
import { inferenceKeys as K } from '../policy/inference-keys.js';
import { type LimitStateOut, modelFor, planSettle, settledLimits, type Usage } from '../policy/usage.js';
import { bind, type ServiceBinding } from '../transport/types.js';
import type { Deps } from './deps.js';

export const debitsTotal = new Counter({
  name: 'ratekeeper_debits_total',
  help: 'Usage debits by result: settled (an admission was found), unreserved (no admission known, still counted), duplicate (retry, not counted again).',
  labelNames: ['result'] as const,
  registers: [registry],
});

export const releasesTotal = new Counter({
  name: 'ratekeeper_releases_total',
  help: 'Release calls by whether a slot was held.',
  labelNames: ['released'] as const,
  registers: [registry],
});

export const policyOf = (deps: Deps): InferencePolicy => {
  const p = deps.config().inference;
  if (!p) throw new RkError('FAILED_PRECONDITION', 'no inference policy is configured');
  return p;
};

const text = (v: string, field: string): string => {
  if (v === '') throw invalid(field, 'must not be empty');
  if (v.length > MAX_VALUE_LENGTH) throw invalid(field, `at most ${MAX_VALUE_LENGTH} characters`);
  return v;
};

const tokens = (v: bigint | number, field: string): number => {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw invalid(field, `must be an integer >= 0, got ${v}`);
  if (n > MAX_TOKENS) throw invalid(field, `at most ${MAX_TOKENS}, got ${n}`);
  return n;
};

export interface DebitOutcome {
  duplicate: boolean;
  reserved: boolean;
  spendMicros: number;
  limits: LimitStateOut[];
}

/**
 * One atomic settle; shared by UsageService.Debit and stream-done descriptors. `model` is the entry
 * the debit is priced and limited by (see modelFor, unpricedModel).
 */
export async function debit(
  deps: Deps,
  policy: InferencePolicy,
  p: Principal,
  modelId: string,
  model: Model,
  usage: Usage,
  requestId: string,
  release: boolean,
  onceSuffix = '',
): Promise<DebitOutcome> {
  const plan = planSettle(policy, p, modelId, model, usage, requestId, release, deps.store.now(), onceSuffix);
  const r = await deps.store.settle(plan.settle);
  debitsTotal.inc({ result: r.duplicate ? 'duplicate' : r.reserved ? 'settled' : 'unreserved' });
  const limits = settledLimits(plan, r);
  if (deps.events?.onDebit) {
    try {
      deps.events.onDebit({
        atMs: r.nowMs,
        keyRef: p.ref,
        ...(p.keyId !== undefined ? { keyId: p.keyId } : {}),
        account: p.account,
        tier: p.tier,
        model: modelId,
        requestId,
        tokensIn: plan.tokensIn,
        tokensOut: plan.tokensOut,
        tokens: plan.tokens,
        spendMicros: plan.spendMicros,
        duplicate: r.duplicate,
        reserved: r.reserved,
        limits: limits.map((l) => ({
          metric: l.metric as never,
          scope: l.scope as never,
          limit: l.limit,
          used: l.used,
          windowMs: l.windowSeconds * 1000,
        })),
      });
    } catch (e) {
      deps.log.error({ err: e }, 'onDebit hook failed');
    }
  }
  if (!r.reserved && !r.duplicate) {
    deps.log.debug({ key: p.ref, account: p.account, requestId }, 'debit without a known admission');
  }
  return { duplicate: r.duplicate, reserved: r.reserved, spendMicros: plan.spendMicros, limits };
}

/** Resolves the key of a Debit/Release; a tier hint must exist. */
const principalOf = (
  policy: InferencePolicy,
  deps: Deps,
  key: string,
  account: string,
  tier: string,
): Principal => {
  if (tier !== '' && !policy.tiers.has(tier)) throw invalid('tier', `unknown tier "${tier.slice(0, 64)}"`);
  return resolveKey(key, policy, deps.keys, {
    ...(account !== '' ? { account: text(account, 'account') } : {}),
    ...(tier !== '' ? { tier } : {}),
  });
};

export const usageBinding = (deps: Deps): ServiceBinding =>
  bind(UsageService, {
    async debit(req) {
      const requestId = text(req.requestId, 'request_id');
      const key = text(req.key, 'key');
      const modelId = text(req.model, 'model');
      const usage: Usage = {
        tokensIn: tokens(req.tokensIn, 'tokens_in'),
        tokensOut: tokens(req.tokensOut, 'tokens_out'),
      };
      const policy = policyOf(deps);
      const p = principalOf(policy, deps, key, req.account, req.tier);
      // Strict: the caller can Release when the model cannot be priced.
      const model = modelFor(policy, modelId, 'model');
      const out = await debit(deps, policy, p, modelId, model, usage, requestId, req.release ?? true);
      return create(DebitResponseSchema, {
        duplicate: out.duplicate,
        admitted: out.reserved,
        spendMicros: BigInt(out.spendMicros),
        limits: out.limits.map((l) =>
          create(LimitStateSchema, {
            metric: l.metric,
            scope: l.scope,
            limit: BigInt(l.limit),
            used: BigInt(l.used),
            remaining: BigInt(l.remaining),
            windowSeconds: BigInt(l.windowSeconds),
            reset: BigInt(l.reset),
          }),
        ),
      });
    },

    async release(req) {
      const requestId = text(req.requestId, 'request_id');
      const policy = policyOf(deps);
      let account: string;
      if (req.key !== '') account = principalOf(policy, deps, req.key, req.account, '').account;
      else if (req.account !== '') account = text(req.account, 'account');
      // Slots live under the account's hash tag; without key or account there is no way to find them.
      else throw invalid('key', 'key or account is required to find the request');
      const released = await deps.store.release(K.reservation(account, requestId));
      releasesTotal.inc({ released: String(released) });
      return create(ReleaseResponseSchema, { released });
    },
  });

/** A request id for stream-done debits that carry none (no admission can be found for them). */
export const anonymousRequestId = (): string => `rk-${randomUUID()}`;
