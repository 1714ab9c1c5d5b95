/**
 * The inference domain end to end: the policy as a real YAML file in the server's config directory,
 * the real server on free ports, grpc-js (what Envoy is) for ShouldRateLimit and Debit, a Connect JSON
 * client for UsageService, the embedded store on a test clock.
 */
import { readFile } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type RateLimitResponse,
  RateLimitResponse_Code,
  RateLimitService,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { UsageService } from '../../gen/ratekeeper/v1/usage_pb.js';
import { MemoryStore } from '../../src/store/memory.js';
import { connectClient, type GrpcClient, type GrpcError, grpcClient } from '../harness/clients.js';
import { startTestServer, type TestServer } from '../harness/server.js';
import { POLICY, T0 } from '../policy/inference-fixture.js';

const { OK, OVER_LIMIT } = RateLimitResponse_Code;
const d = (entries: Record<string, string | number>) => ({
  entries: Object.entries(entries).map(([key, value]) => ({ key, value: String(value) })),
});
const hdr = (r: RateLimitResponse) => Object.fromEntries(r.responseHeadersToAdd.map((h) => [h.key, h.value]));
const json = (r: RateLimitResponse) => JSON.parse(new TextDecoder().decode(r.rawBody));

describe('inference domain over real sockets', () => {
  const clock = { t: T0 };
  let server: TestServer;
  let rls: GrpcClient<typeof RateLimitService>;
  let usage: GrpcClient<typeof UsageService>;

  beforeAll(async () => {
    server = await startTestServer({
      files: { 'policy.yaml': POLICY },
      store: new MemoryStore({ now: () => clock.t, sweepIntervalMs: 0 }),
    });
    rls = grpcClient(RateLimitService, server.grpcAddress);
    usage = grpcClient(UsageService, server.grpcAddress);
  });
  afterAll(async () => {
    rls?.close();
    usage?.close();
    await server?.stop();
  });

  it('admits, then denies the sixth concurrent request with the contract body; Debit frees a slot', async () => {
    for (let i = 0; i < 5; i++) {
      const r = await rls.shouldRateLimit({
        domain: 'inference',
        descriptors: [d({ key: 'k1' }), d({ key: 'k1', model: 'm-b', tokens: 100, request_id: `g${i}` })],
      });
      expect(r.overallCode).toBe(OK);
      expect(hdr(r)['x-ratelimit-remaining-requests']).toBe(String(8 - i - 1));
    }
    const denied = await rls.shouldRateLimit({
      domain: 'inference',
      descriptors: [d({ key: 'k1' }), d({ key: 'k1', model: 'm-b', request_id: 'g5' })],
    });
    expect(denied.overallCode).toBe(OVER_LIMIT);
    expect(denied.statuses.map((s) => s.code)).toEqual([OVER_LIMIT, OK]);
    expect(hdr(denied)['x-ratelimit-denied']).toBe('CONCURRENT_LIMIT_EXCEEDED');
    // The policy's concurrency advice (default 1 s); details.reset is when the oldest lease ends.
    expect(hdr(denied)['Retry-After']).toBe('1');
    expect(json(denied)).toEqual({
      error: {
        type: 'rate_limit_error',
        message: 'Concurrent prediction limit exceeded. 5/5 predictions running.',
        code: 'CONCURRENT_LIMIT_EXCEEDED',
        details: {
          limit: 5,
          active: 5,
          metric: 'concurrency',
          scope: 'key',
          window_seconds: 60,
          reset: T0 / 1000 + 60,
        },
      },
    });

    const res = await usage.debit({
      requestId: 'g0',
      key: 'k1',
      model: 'm-b',
      tokensIn: 30n,
      tokensOut: 20n,
    });
    // 30 × $0.15/M + 20 × $0.60/M = 16.5 µ$ → 17; the 100 reserved became 50.
    expect(res).toMatchObject({ duplicate: false, admitted: true, spendMicros: 17n });
    expect(res.limits.find((l) => l.metric === 'tokens')).toMatchObject({ used: 450n, limit: 5000n });
    const again = await rls.shouldRateLimit({
      domain: 'inference',
      descriptors: [d({ key: 'k1', model: 'm-b', request_id: 'g5' })],
    });
    expect(again.overallCode).toBe(OK);
  });

  it('counts admissions and denials by answer in the metrics', async () => {
    const count = async (code: string): Promise<number> => {
      const text = await (await fetch(server.metricsUrl)).text();
      const m = new RegExp(`ratekeeper_inference_decisions_total\\{code="${code}"\\} (\\d+)`).exec(text);
      return m ? Number(m[1]) : 0;
    };
    const [ok0, denied0] = [await count('OK'), await count('CONCURRENT_LIMIT_EXCEEDED')];
    for (let i = 0; i < 6; i++) {
      await rls.shouldRateLimit({
        domain: 'inference',
        descriptors: [d({ key: 'k-metrics' }), d({ key: 'k-metrics', model: 'm-b', request_id: `mx${i}` })],
      });
    }
    // The tier admits five requests at once (see the first test): the sixth is denied.
    expect(await count('OK')).toBe(ok0 + 5);
    expect(await count('CONCURRENT_LIMIT_EXCEEDED')).toBe(denied0 + 1);
  });

  it('Debit and Release over Connect JSON on the HTTP port', async () => {
    const client = connectClient(UsageService, server.httpUrl, 'connect-json');
    await rls.shouldRateLimit({
      domain: 'inference',
      descriptors: [d({ key: 'other', tokens: 100, request_id: 'cj1' })],
    });
    expect((await client.release({ requestId: 'cj1', key: 'other' })).released).toBe(true);
    const res = await client.debit({
      requestId: 'cj1',
      key: 'other',
      model: 'm-a',
      tokensIn: 1000n,
      tokensOut: 0n,
    });
    expect(res.spendMicros).toBe(2500n);
    // Release freed the slot but kept the reservation (100 tokens to correct): the Debit settles it.
    expect(res.admitted).toBe(true);
  });

  it('bad input is INVALID_ARGUMENT naming the field', async () => {
    const e1 = await rls
      .shouldRateLimit({ domain: 'inference', descriptors: [d({ key: 'k1', tokens: '-3' })] })
      .catch((e: GrpcError) => e);
    expect((e1 as GrpcError).code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((e1 as GrpcError).details).toContain('descriptors[0].entries[1].value');
    const e2 = await usage.debit({ requestId: 'x', key: 'k1', model: 'ghost' }).catch((e: GrpcError) => e);
    expect((e2 as GrpcError).code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((e2 as GrpcError).details).toContain('model');
  });

  it('a policy reload changes the limits of the next request', async () => {
    const ask = () =>
      rls.shouldRateLimit({
        domain: 'inference',
        descriptors: [d({ key: 'k2', request_id: `rl${Math.random()}` })],
      });
    expect(hdr(await ask())['x-ratelimit-limit-requests']).toBe('10');
    await server.writeFile(
      'policy.yaml',
      POLICY.replace('free: { requests: 10/minute', 'free: { requests: 33/minute'),
    );
    for (let i = 0; i < 100; i++) {
      if (hdr(await ask())['x-ratelimit-limit-requests'] === '33') break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(hdr(await ask())['x-ratelimit-limit-requests']).toBe('33');
  });
});

describe('the shipped config/policy.yaml', () => {
  let server: TestServer;
  let rls: GrpcClient<typeof RateLimitService>;
  beforeAll(async () => {
    const text = await readFile(new URL('../../config/policy.yaml', import.meta.url), 'utf8');
    server = await startTestServer({ files: { 'policy.yaml': text } });
    rls = grpcClient(RateLimitService, server.grpcAddress);
  });
  afterAll(async () => {
    rls?.close();
    await server?.stop();
  });

  it('loads and decides: a disabled key, a per-request cap, a tier limit by key id', async () => {
    const off = await rls.shouldRateLimit({ domain: 'inference', descriptors: [d({ key: 'revoked-2024' })] });
    expect(hdr(off)['x-ratelimit-denied']).toBe('KEY_DISABLED');
    const big = await rls.shouldRateLimit({
      domain: 'inference',
      descriptors: [d({ key: 'trial-42', model: 'gpt-4o', tokens_out: 4096 })],
    });
    expect(hdr(big)['x-ratelimit-denied']).toBe('MAX_TOKENS_LIMIT_EXCEEDED');
    const ok = await rls.shouldRateLimit({
      domain: 'inference',
      descriptors: [d({ key: 'trial-42', model: 'gpt-4o', tokens_in: 500, tokens_out: 500 })],
    });
    expect(ok.overallCode).toBe(OK);
    expect(hdr(ok)).toMatchObject({
      'x-ratelimit-limit-requests': '20',
      'x-ratelimit-limit-tokens-in': '30000',
    });
  });
});
