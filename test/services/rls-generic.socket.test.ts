/**
 * Generic domains end to end: real YAML files in a temp config directory, the real server on free
 * ports, a grpc-js client (what Envoy is) and a Connect JSON client, the embedded store on a test clock.
 */

import type { MessageInitShape } from '@bufbuild/protobuf';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type RateLimitRequestSchema,
  type RateLimitResponse,
  RateLimitResponse_Code,
  RateLimitService,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { RateLimitUnit } from '../../gen/envoy/type/v3/ratelimit_unit_pb.js';
import { UNLIMITED_REMAINING } from '../../src/policy/generic.js';
import { MemoryStore } from '../../src/store/memory.js';
import { connectClient, type GrpcClient, grpcClient } from '../harness/clients.js';
import { startTestServer, type TestServer } from '../harness/server.js';
import { codes } from '../policy/generic-fixture.js';

const { OK, OVER_LIMIT } = RateLimitResponse_Code;

const EDGE = `
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: remote_address
    value: 203.0.113.66
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: path
    value: /v1/*
    rate_limit: {name: v1, unit: second, requests_per_unit: 2}
  - key: client_id
    descriptors:
      - key: path
        value: /v1/login
        rate_limit: {replaces: [{name: v1}], unit: minute, requests_per_unit: 4}
  - key: client_id
    value: internal
    rate_limit: {unlimited: true}
  - key: user_id
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
`;

const MESSAGING = `
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 2}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100}
`;

type Req = MessageInitShape<typeof RateLimitRequestSchema>;
const d = (...kv: [string, string][]) => ({ entries: kv.map(([key, value]) => ({ key, value })) });

/** Polls `fn` until `pred` holds (the watcher reloads asynchronously); fails after 10 s. */
const eventually = async <T>(fn: () => Promise<T>, pred: (v: T) => boolean): Promise<T> => {
  const end = Date.now() + 10_000;
  for (;;) {
    const v = await fn();
    if (pred(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
};

describe('generic domains over gRPC', () => {
  let server: TestServer;
  let client: GrpcClient<typeof RateLimitService>;
  let now = Date.UTC(2026, 0, 1);
  const call = (req: Req): Promise<RateLimitResponse> => client.shouldRateLimit(req);
  const edge = (descriptors: Req['descriptors'], hitsAddend = 0) =>
    call({ domain: 'edge', descriptors, hitsAddend });

  beforeAll(async () => {
    server = await startTestServer({
      files: { 'domains/edge.yaml': EDGE, 'domains/more/messaging.yml': MESSAGING, 'README.txt': 'ignored' },
      store: new MemoryStore({ now: () => now, sweepIntervalMs: 0 }),
    });
    client = grpcClient(RateLimitService, server.grpcAddress);
  });
  afterAll(async () => {
    client?.close();
    await server?.stop();
  });

  it('limits per descriptor value and answers like envoyproxy/ratelimit', async () => {
    for (let i = 0; i < 3; i++) {
      const r = await edge([d(['remote_address', '1.1.1.1'])]);
      expect(r.statuses[0]).toMatchObject({
        code: OK,
        limitRemaining: 2 - i,
        currentLimit: { requestsPerUnit: 3, unit: 2 },
      });
    }
    const denied = await edge([d(['remote_address', '1.1.1.1']), d(['remote_address', '2.2.2.2'])]);
    expect(codes(denied)).toEqual([OVER_LIMIT, OVER_LIMIT, OK]);
    expect(Number(denied.statuses[0]!.durationUntilReset?.seconds)).toBeGreaterThan(59);
    now += 61_000;
    expect((await edge([d(['remote_address', '1.1.1.1'])])).overallCode).toBe(OK);
    expect(codes(await edge([d(['remote_address', '203.0.113.66'])]))).toEqual([OVER_LIMIT, OVER_LIMIT]);
  });

  it('loads several files of a directory: nested rules in a second domain', async () => {
    const mk = d(['message_type', 'marketing'], ['to_number', '555']);
    const all = d(['to_number', '555']);
    const msg = (req: Req['descriptors']) => call({ domain: 'messaging', descriptors: req });
    expect(codes(await msg([mk, all]))).toEqual([OK, OK, OK]);
    expect(codes(await msg([mk, all]))).toEqual([OK, OK, OK]);
    const third = await msg([mk, all]);
    expect(codes(third)).toEqual([OVER_LIMIT, OVER_LIMIT, OK]);
    expect(third.statuses[1]!.limitRemaining).toBe(97);
  });

  it('wildcards, replaces, unlimited, shadow mode, override and hits_addend', async () => {
    const v1 = d(['path', '/v1/orders']);
    expect(codes(await edge([v1, v1]))).toEqual([OK, OK, OK]);
    expect(codes(await edge([v1]))).toEqual([OVER_LIMIT, OVER_LIMIT]);

    // The client login rule replaces the v1 wildcard limit when both are sent.
    const login = d(['path', '/v1/login']);
    const clientLogin = d(['client_id', 'acme'], ['path', '/v1/login']);
    const r = await edge([login, clientLogin]);
    expect(codes(r)).toEqual([OK, OK, OK]);
    expect(r.statuses[0]!.currentLimit).toBeUndefined();
    expect(r.statuses[1]!.currentLimit?.requestsPerUnit).toBe(4);

    const internal = await edge([d(['client_id', 'internal'])]);
    expect(internal.statuses[0]).toMatchObject({ code: OK, limitRemaining: UNLIMITED_REMAINING });

    for (let i = 0; i < 3; i++) expect((await edge([d(['user_id', 'u'])])).overallCode).toBe(OK);

    const override = {
      ...d(['remote_address', '9.9.9.9']),
      limit: { requestsPerUnit: 1, unit: RateLimitUnit.HOUR },
    };
    expect((await edge([override])).statuses[0]!.currentLimit).toMatchObject({ requestsPerUnit: 1, unit: 3 });
    expect((await edge([override])).overallCode).toBe(OVER_LIMIT);

    const ip = d(['remote_address', '4.4.4.4']);
    expect((await edge([ip], 2)).statuses[0]!.limitRemaining).toBe(1);
    expect((await edge([{ ...ip, hitsAddend: 0n }], 9)).statuses[0]).toMatchObject({
      code: OK,
      limitRemaining: 1,
    });
    expect((await edge([{ ...ip, hitsAddend: 2n }])).overallCode).toBe(OVER_LIMIT);
  });

  it('answers an unconfigured domain OK with no limits, and over Connect JSON too', async () => {
    const r = await call({ domain: 'nobody', descriptors: [d(['remote_address', '1.1.1.1'])] });
    expect(codes(r)).toEqual([OK, OK]);
    expect(r.statuses[0]!.currentLimit).toBeUndefined();
    const json = connectClient(RateLimitService, server.httpUrl, 'connect-json');
    const viaConnect = await json.shouldRateLimit({
      domain: 'edge',
      descriptors: [d(['remote_address', '203.0.113.66'])],
    });
    expect(viaConnect.overallCode).toBe(OVER_LIMIT);
  });

  it('reloads a changed file for the next request; a bad file keeps the old config', async () => {
    const probe = () => edge([{ ...d(['remote_address', '5.5.5.5']), hitsAddend: 0n }]);
    const limit = (r: RateLimitResponse) => r.statuses[0]!.currentLimit?.requestsPerUnit;
    expect(limit(await probe())).toBe(3);

    await server.writeFile(
      'domains/edge.yaml',
      EDGE.replace('requests_per_unit: 3}', 'requests_per_unit: 30}'),
    );
    expect(limit(await eventually(probe, (r) => limit(r) === 30))).toBe(30);

    const errors = async () => {
      const text = await (await fetch(server.metricsUrl)).text();
      return Number(/ratekeeper_config_reloads_total\{result="error"\} (\d+)/.exec(text)?.[1] ?? 0);
    };
    const before = await errors();
    await server.writeFile(
      'domains/edge.yaml',
      'domain: edge\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: eon}\n',
    );
    expect(await eventually(errors, (n) => n > before)).toBe(before + 1);
    const still = await probe();
    expect(limit(still)).toBe(30);
    expect(still.overallCode).toBe(OK);
  });
});
