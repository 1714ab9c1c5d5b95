/** Requests and response readers shared by the generic-domain tests (policy, handler, sockets). */
import { create } from '@bufbuild/protobuf';
import {
  RateLimitRequestSchema,
  type RateLimitResponse,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import type { RateLimitUnit } from '../../gen/envoy/type/v3/ratelimit_unit_pb.js';

/** One descriptor: its entries, and optionally its own hits_addend and a request-given limit. */
export type Desc = {
  e: [string, string][];
  hits?: number;
  limit?: { requestsPerUnit: number; unit: RateLimitUnit };
};

export const genericRequest = (domain: string, descs: Desc[], hitsAddend = 0) =>
  create(RateLimitRequestSchema, {
    domain,
    hitsAddend,
    descriptors: descs.map((d) => ({
      entries: d.e.map(([key, value]) => ({ key, value })),
      ...(d.hits === undefined ? {} : { hitsAddend: BigInt(d.hits) }),
      ...(d.limit ? { limit: d.limit } : {}),
    })),
  });

/** The overall code, then each descriptor's. */
export const codes = (r: RateLimitResponse) => [r.overallCode, ...r.statuses.map((s) => s.code)];
