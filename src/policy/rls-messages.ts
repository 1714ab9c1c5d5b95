/**
 * RLS response messages as typed literals (protobuf-es messages are plain objects): create() walks the
 * schema for every message, about a microsecond each, and one answer has up to ~20 of them. The
 * return types list every field, so a field added to the proto fails to compile here.
 */
import type { Duration } from '@bufbuild/protobuf/wkt';
import type { HeaderValue } from '../../gen/envoy/config/core/v3/base_pb.js';
import type {
  RateLimitResponse,
  RateLimitResponse_Code,
  RateLimitResponse_DescriptorStatus,
  RateLimitResponse_RateLimit,
  RateLimitResponse_RateLimit_Unit,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';

/** Shared by every message without bytes: a zero-length array has nothing to mutate. */
const NO_BYTES = new Uint8Array(0);

export const headerValue = (key: string, value: string): HeaderValue => ({
  $typeName: 'envoy.config.core.v3.HeaderValue',
  key,
  value,
  rawValue: NO_BYTES,
});

export const durationOf = (seconds: bigint, nanos: number): Duration => ({
  $typeName: 'google.protobuf.Duration',
  seconds,
  nanos,
});

export const rateLimit = (
  requestsPerUnit: number,
  unit: RateLimitResponse_RateLimit_Unit,
  name: string,
): RateLimitResponse_RateLimit => ({
  $typeName: 'envoy.service.ratelimit.v3.RateLimitResponse.RateLimit',
  requestsPerUnit,
  unit,
  name,
});

export const descriptorStatus = (
  code: RateLimitResponse_Code,
  limitRemaining: number,
  currentLimit?: RateLimitResponse_RateLimit,
  durationUntilReset?: Duration,
): RateLimitResponse_DescriptorStatus => ({
  $typeName: 'envoy.service.ratelimit.v3.RateLimitResponse.DescriptorStatus',
  code,
  currentLimit,
  limitRemaining,
  durationUntilReset,
  quota: undefined,
});

export const rlsResponse = (
  overallCode: RateLimitResponse_Code,
  statuses: RateLimitResponse_DescriptorStatus[],
  responseHeadersToAdd: HeaderValue[] = [],
  requestHeadersToAdd: HeaderValue[] = [],
  rawBody: Uint8Array = NO_BYTES,
): RateLimitResponse => ({
  $typeName: 'envoy.service.ratelimit.v3.RateLimitResponse',
  overallCode,
  statuses,
  responseHeadersToAdd,
  requestHeadersToAdd,
  rawBody,
  dynamicMetadata: undefined,
  quota: undefined,
});
