import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type RateLimitRequest,
  RateLimitRequestSchema,
  RateLimitResponse_Code,
  RateLimitService,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import type { RateLimitUnit } from '../../gen/envoy/type/v3/ratelimit_unit_pb.js';
import { CONNECT_PROTOCOLS, connectClient, type GrpcError, grpcClient } from '../harness/clients.js';
import { startTestServer, type TestServer } from '../harness/server.js';

const DOMAIN = `
domain: t
descriptors:
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 1000 }
  - key: tight
    rate_limit: { unit: hour, requests_per_unit: 4 }
`;

const req = (domain: string, entries: [string, string][][], hitsAddend = 0) =>
  create(RateLimitRequestSchema, {
    domain,
    hitsAddend,
    descriptors: entries.map((d) => ({ entries: d.map(([key, value]) => ({ key, value })) })),
  });

let srv: TestServer;
let grpcRls: ReturnType<typeof grpcClient<typeof RateLimitService>>;

beforeAll(async () => {
  srv = await startTestServer({ files: { 'domains/t.yaml': DOMAIN } });
  grpcRls = grpcClient(RateLimitService, srv.grpcAddress);
});
afterAll(async () => {
  grpcRls.close();
  await srv.stop();
});

describe('ShouldRateLimit on every transport', () => {
  it('answers the same over gRPC (grpc-js) and Connect JSON, Connect binary, gRPC and gRPC-Web', async () => {
    const r = req('t', [[['user', 'alice']], [['other', 'x']]]);
    const answers = [await grpcRls.shouldRateLimit(r)];
    for (const p of CONNECT_PROTOCOLS)
      answers.push(await connectClient(RateLimitService, srv.httpUrl, p).shouldRateLimit(r));
    for (const a of answers) {
      expect(a.overallCode).toBe(RateLimitResponse_Code.OK);
      expect(a.statuses).toHaveLength(2);
      expect(a.statuses[0]?.currentLimit?.requestsPerUnit).toBe(1000);
      // No rule for `other`: OK with no limit.
      expect(a.statuses[1]?.currentLimit).toBeUndefined();
    }
    // One store behind both ports: each call counted once.
    expect(answers.map((a) => a.statuses[0]?.limitRemaining)).toEqual([999, 998, 997, 996, 995]);
  });

  it('shares counters between the ports: gRPC fills the limit, Connect sees OVER_LIMIT', async () => {
    const r = req('t', [[['tight', 'k']]]);
    for (let i = 0; i < 4; i++)
      expect((await grpcRls.shouldRateLimit(r)).overallCode).toBe(RateLimitResponse_Code.OK);
    const res = await connectClient(RateLimitService, srv.httpUrl).shouldRateLimit(r);
    expect(res.overallCode).toBe(RateLimitResponse_Code.OVER_LIMIT);
    expect((await grpcRls.shouldRateLimit(r)).overallCode).toBe(RateLimitResponse_Code.OVER_LIMIT);
  });

  it('answers curl-style JSON over plain HTTP/1.1 POST', async () => {
    const res = await fetch(`${srv.httpUrl}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ domain: 'x', descriptors: [{ entries: [{ key: 'a', value: 'b' }] }] }),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ overallCode: 'OK', statuses: [{ code: 'OK' }] });
  });
});

const many = Array.from({ length: 65 }, (_, i) => [['user', `u${i}`]] as [string, string][]);
const MALFORMED: [string, RateLimitRequest, string][] = [
  ['empty domain', req('', [[['user', 'a']]]), 'domain'],
  ['no descriptors', req('t', []), 'descriptors'],
  ['more than 64 descriptors', req('t', many), 'descriptors'],
  ['a descriptor with no entries', req('t', [[['user', 'a']], []]), 'descriptors[1].entries'],
  [
    'an empty entry key',
    req('t', [
      [
        ['user', 'a'],
        ['', 'b'],
      ],
    ]),
    'descriptors[0].entries[1].key',
  ],
  ['an empty entry value', req('t', [[['user', '']]]), 'descriptors[0].entries[0].value'],
  ['absurd request hits_addend', req('t', [[['user', 'a']]], 1_000_000_001), 'hits_addend'],
  [
    'absurd descriptor hits_addend',
    create(RateLimitRequestSchema, {
      domain: 't',
      descriptors: [
        { entries: [{ key: 'user', value: 'a' }] },
        { entries: [{ key: 'user', value: 'b' }], hitsAddend: 10n ** 12n },
      ],
    }),
    'descriptors[1].hits_addend',
  ],
  [
    'an unknown unit in a limit override',
    create(RateLimitRequestSchema, {
      domain: 't',
      descriptors: [
        { entries: [{ key: 'user', value: 'a' }], limit: { requestsPerUnit: 1, unit: 99 as RateLimitUnit } },
      ],
    }),
    'descriptors[0].limit.unit',
  ],
];

describe('malformed requests answer INVALID_ARGUMENT naming the field', () => {
  it.each(MALFORMED)('%s (gRPC)', async (_name, r, field) => {
    const err = (await grpcRls.shouldRateLimit(r).catch((e: GrpcError) => e)) as GrpcError;
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details.startsWith(`${field}: `)).toBe(true);
  });

  it.each(MALFORMED)('%s (Connect JSON and gRPC-Web)', async (_name, r, field) => {
    for (const p of ['connect-json', 'grpc-web'] as const) {
      const err = await connectClient(RateLimitService, srv.httpUrl, p)
        .shouldRateLimit(r)
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(Code.InvalidArgument);
      expect((err as ConnectError).rawMessage.startsWith(`${field}: `)).toBe(true);
    }
  });

  it('a negative hits_addend in JSON is refused by the decoder, naming the field', async () => {
    const res = await fetch(`${srv.httpUrl}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        domain: 't',
        hitsAddend: -1,
        descriptors: [{ entries: [{ key: 'a', value: 'b' }] }],
      }),
    });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { code: string; message: string };
    expect(body.code).toBe('invalid_argument');
    expect(body.message).toContain('hits_addend');
  });

  it('counts refusals by field in the metrics', async () => {
    await grpcRls.shouldRateLimit(req('t', [[['', 'b']]])).catch(() => undefined);
    const text = await (await fetch(srv.metricsUrl)).text();
    expect(text).toMatch(
      /ratekeeper_invalid_requests_total\{method="ShouldRateLimit",field="descriptors\[\]\.entries\[\]\.key"\} [1-9]/,
    );
    expect(text).toMatch(/ratekeeper_rls_decisions_total\{domain="t",code="OVER_LIMIT"\} [1-9]/);
    expect(text).toMatch(/ratekeeper_rls_decisions_total\{domain="_unconfigured",code="OK"\} [1-9]/);
    expect(text).toContain('ratekeeper_rls_duration_seconds_bucket');
  });
});
