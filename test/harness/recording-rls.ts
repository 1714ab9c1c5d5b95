/**
 * A RateLimitService binding for transport tests that keeps what each call's handler saw. By domain:
 * "hold" waits for the call's signal (then counts an abort), "limited" answers OVER_LIMIT, "missing"
 * fails NOT_FOUND, "boom" fails with an unexpected error; the auth hook refuses "Bearer wrong".
 */
import { RateLimitResponse_Code, RateLimitService } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { RkError } from '../../src/errors.js';
import type { CallContext, ServiceBinding } from '../../src/transport/types.js';

export interface Seen {
  domain: string;
  headers: Headers;
  peer: string;
}

export const recordingRls = (): { binding: ServiceBinding; seen: Seen[]; aborted: () => number } => {
  const seen: Seen[] = [];
  let aborted = 0;
  const binding: ServiceBinding = {
    service: RateLimitService,
    auth: (ctx) => {
      if (ctx.headers.get('authorization') === 'Bearer wrong')
        throw new RkError('UNAUTHENTICATED', 'bad token');
    },
    impl: {
      shouldRateLimit: async (req: { domain: string }, ctx: CallContext) => {
        seen.push({ domain: req.domain, headers: ctx.headers, peer: ctx.peer });
        if (req.domain === 'hold') {
          await new Promise<void>((resolve) =>
            ctx.signal.addEventListener('abort', () => resolve(), { once: true }),
          );
          aborted++;
        }
        if (req.domain === 'missing') throw new RkError('NOT_FOUND', 'no such thing');
        if (req.domain === 'boom') throw new Error('secret internal detail');
        return {
          overallCode:
            req.domain === 'limited' ? RateLimitResponse_Code.OVER_LIMIT : RateLimitResponse_Code.OK,
        };
      },
    },
  };
  return { binding, seen, aborted: () => aborted };
};
