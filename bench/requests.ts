import { create, toBinary } from '@bufbuild/protobuf';
import type { RateLimitRequest } from '../gen/envoy/service/ratelimit/v3/rls_pb.js';
import {
  RateLimitRequestSchema,
  RateLimitResponse_Code,
  RateLimitResponseSchema,
} from '../gen/envoy/service/ratelimit/v3/rls_pb.js';

export const GENERIC_DOMAIN = 'bench';
export const INFERENCE_DOMAIN = 'inference';
export const BENCH_MODEL = 'bench-model';
export const SERVICE_PATH = '/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit';

/** What the empty ceilings answer to any request. */
export const EMPTY_OK = create(RateLimitResponseSchema, {
  overallCode: RateLimitResponse_Code.OK,
  statuses: [{ code: RateLimitResponse_Code.OK }],
});

/** What the load generator sends: a generic descriptor, or an LLM request spread over `keys` API keys. */
export type RequestShape = { kind: 'generic' } | { kind: 'inference'; keys: number; tokens: number };

const keyName = (i: number): string => `sk-bench-${String(i).padStart(6, '0')}`;

/** One descriptor `client=bench`, matched by the bench config's one high limit. */
const generic = (): RateLimitRequest =>
  create(RateLimitRequestSchema, {
    domain: GENERIC_DOMAIN,
    descriptors: [{ entries: [{ key: 'client', value: 'bench' }] }],
  });

/** As Envoy sends it: `[key]` and `[key, model, tokens]`, decided together. */
const inference = (key: string, tokens: number): RateLimitRequest =>
  create(RateLimitRequestSchema, {
    domain: INFERENCE_DOMAIN,
    descriptors: [
      { entries: [{ key: 'key', value: key }] },
      {
        entries: [
          { key: 'key', value: key },
          { key: 'model', value: BENCH_MODEL },
          { key: 'tokens', value: String(tokens) },
        ],
      },
    ],
  });

/** The distinct requests of a shape; the generator cycles through them. */
export const buildRequests = (shape: RequestShape): RateLimitRequest[] => {
  if (shape.kind === 'generic') return [generic()];
  return Array.from({ length: shape.keys }, (_, i) => inference(keyName(i), shape.tokens));
};

/** A gRPC length-prefixed message (uncompressed), as h2load posts it. */
export const grpcFrame = (req: RateLimitRequest): Buffer => {
  const body = toBinary(RateLimitRequestSchema, req);
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  frame.set(body, 5);
  return frame;
};
