import type { RateLimitRequest, RateLimitResponse } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { type GenericHeaderNames, genericResponse, planGeneric } from '../policy/generic.js';
import type { Deps } from './deps.js';

export interface GenericOptions {
  /** Add the binding limit as response headers (envoyproxy/ratelimit's LIMIT_RESPONSE_HEADERS_ENABLED); off by default. */
  responseHeaders?: GenericHeaderNames;
}

/**
 * Answers a (validated) request for a generic domain: match descriptors to the domain's rules, one
 * non-atomic store decision, statuses back in request order. A domain nobody configured limits nothing.
 * Store failures propagate (StoreUnavailableError) for the caller's failure mode.
 */
export async function decideGeneric(
  req: RateLimitRequest,
  deps: Pick<Deps, 'store' | 'config'>,
  options: GenericOptions = {},
): Promise<RateLimitResponse> {
  const plan = planGeneric(deps.config().domains.get(req.domain), req);
  const result = plan.decision.ops.length > 0 ? await deps.store.decide(plan.decision) : undefined;
  return genericResponse(plan, result, options.responseHeaders);
}
