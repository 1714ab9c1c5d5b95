/**
 * One request through deploy/'s Envoy config against a real Ratekeeper: the headers Envoy sees →
 * the descriptors its rate_limits build → ShouldRateLimit over gRPC → the local reply Envoy sends
 * on a denial → the stream-done debit. Used by the walk test and to print deploy/README.md's example.
 */

import type { MessageInitShape } from '@bufbuild/protobuf';
import { create } from '@bufbuild/protobuf';
import type { RateLimitDescriptorSchema } from '../../gen/envoy/extensions/common/ratelimit/v3/ratelimit_pb.js';
import {
  RateLimitRequestSchema,
  type RateLimitResponse,
  RateLimitResponse_Code,
  RateLimitService,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { type GrpcClient, grpcClient } from '../harness/clients.js';
import {
  applyBearerLua,
  applyLocalReply,
  applyResponseRules,
  buildDescriptors,
  type Descriptor,
  envoyParts,
  get,
  type Headers,
  type istioParts,
  list,
} from './envoy-model.js';

type Parts = ReturnType<typeof envoyParts> | ReturnType<typeof istioParts>;

export interface Reply {
  /** What the client gets: the upstream's 200, or Envoy's local reply. */
  status: number;
  headers: Headers;
  body: string;
}

export interface Step {
  descriptors: Descriptor[];
  response: RateLimitResponse;
  /** The client's answer when denied; undefined when Envoy forwards the request. */
  reply?: Reply;
}

/** The descriptors as the RLS request carries them (descriptor hits_addend is a UInt64Value). */
export const toProto = (ds: readonly Descriptor[]): MessageInitShape<typeof RateLimitDescriptorSchema>[] =>
  ds.map((d) => ({
    entries: d.entries,
    ...(d.hitsAddend === undefined ? {} : { hitsAddend: BigInt(d.hitsAddend) }),
  }));

export const headerMap = (res: RateLimitResponse): Headers =>
  Object.fromEntries(res.responseHeadersToAdd.map((h) => [h.key.toLowerCase(), h.value]));

export class EnvoyWalk {
  readonly rls: GrpcClient<typeof RateLimitService>;
  readonly domain: string;

  constructor(
    grpcAddress: string,
    readonly parts: Parts = envoyParts(),
  ) {
    this.rls = grpcClient(RateLimitService, grpcAddress);
    this.domain = String(get(parts.filter('envoy.filters.http.ratelimit'), 'domain'));
  }

  private call(descriptors: Descriptor[]): Promise<RateLimitResponse> {
    return this.rls.shouldRateLimit(
      create(RateLimitRequestSchema, { domain: this.domain, descriptors: toProto(descriptors) }),
    );
  }

  /** Request time: the Lua filter, then the rate-limit filter; a denial becomes the local reply. */
  async request(clientHeaders: Headers): Promise<Step> {
    const headers = applyBearerLua(clientHeaders);
    const descriptors = buildDescriptors(this.parts.rateLimits, headers, false);
    const response = await this.call(descriptors);
    if (response.overallCode !== RateLimitResponse_Code.OVER_LIMIT) return { descriptors, response };
    const rlHeaders = headerMap(response);
    const body = new TextDecoder().decode(response.rawBody);
    // Envoy's rate-limit filter answers 429 (rate_limited_status default), then local_reply_config.
    const local = applyLocalReply(this.parts.localReply, 429, rlHeaders, body);
    const headersOut = { ...rlHeaders, ...(local.contentType ? { 'content-type': local.contentType } : {}) };
    return { descriptors, response, reply: { status: local.status, headers: headersOut, body: local.body } };
  }

  /** Stream done: header_to_metadata on the upstream's response, then the usage descriptors. */
  async streamDone(clientHeaders: Headers, upstreamHeaders: Headers): Promise<Step> {
    const headers = applyBearerLua(clientHeaders);
    const rules = list(this.parts.filter('envoy.filters.http.header_to_metadata'), 'response_rules');
    const metadata = applyResponseRules(rules, upstreamHeaders);
    const descriptors = buildDescriptors(this.parts.rateLimits, headers, true, metadata);
    return { descriptors, response: await this.call(descriptors) };
  }

  close(): void {
    this.rls.close();
  }
}
