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
  applyLocalReply,
  applyResponseRules,
  buildDescriptors,
  type Descriptor,
  envoyParts,
  get,
  type Headers,
  type istioParts,
  list,
  luaSource,
  runLuaOnRequest,
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

  /**
   * The request headers the rate-limit filter reads: the client's, through the Lua filter, then
   * what a trusted filter after it adds (an auth filter setting x-tier / x-account).
   */
  async headers(client: Headers, trusted: Headers = {}): Promise<Headers> {
    const lua = luaSource(this.parts.filter('envoy.filters.http.lua'));
    return { ...(await runLuaOnRequest(lua, client)), ...trusted };
  }

  /** The request-time descriptors; none means Envoy makes no rate-limit call at all. */
  async descriptorsFor(client: Headers, trusted: Headers = {}): Promise<Descriptor[]> {
    return buildDescriptors(this.parts.rateLimits, await this.headers(client, trusted), false);
  }

  /** Request time: the rate-limit filter's call; a denial becomes Envoy's local reply. */
  async request(client: Headers, trusted: Headers = {}): Promise<Step> {
    const descriptors = await this.descriptorsFor(client, trusted);
    if (descriptors.length === 0) throw new Error('no descriptors: Envoy would make no rate-limit call');
    const response = await this.call(descriptors);
    if (response.overallCode !== RateLimitResponse_Code.OVER_LIMIT) return { descriptors, response };
    const rlHeaders = headerMap(response);
    const body = new TextDecoder().decode(response.rawBody);
    // Envoy's rate-limit filter answers 429 (rate_limited_status default), then local_reply_config.
    const local = applyLocalReply(this.parts.localReply, 429, rlHeaders, body);
    const headersOut = { ...rlHeaders, ...(local.contentType ? { 'content-type': local.contentType } : {}) };
    return { descriptors, response, reply: { status: local.status, headers: headersOut, body: local.body } };
  }

  /**
   * Stream done: header_to_metadata on the upstream's response, then the usage descriptors from the
   * same request headers as at request time.
   */
  async streamDone(client: Headers, upstreamHeaders: Headers, trusted: Headers = {}): Promise<Step> {
    const rules = list(this.parts.filter('envoy.filters.http.header_to_metadata'), 'response_rules');
    const metadata = applyResponseRules(rules, upstreamHeaders);
    const headers = await this.headers(client, trusted);
    const descriptors = buildDescriptors(this.parts.rateLimits, headers, true, metadata);
    return { descriptors, response: await this.call(descriptors) };
  }

  close(): void {
    this.rls.close();
  }
}
