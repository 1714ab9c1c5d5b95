import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import { RateLimitResponse_Code, RateLimitService } from '../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { type GrpcError, grpcClient } from './harness/clients.js';
import { type RedisProcess, startRedis } from './harness/redis.js';
import { startTestServer, type TestServer } from './harness/server.js';

const { OK, OVER_LIMIT } = RateLimitResponse_Code;
const domain = (name: string, limit: number) =>
  `domain: ${name}\ndescriptors:\n  - key: k\n    rate_limit: { unit: hour, requests_per_unit: ${limit} }\n`;
const call = (d: string, value: string) => ({ domain: d, descriptors: [{ entries: [{ key: 'k', value }] }] });

const metric = async (srv: TestServer, re: RegExp): Promise<number> => {
  const m = (await (await fetch(srv.metricsUrl)).text()).match(re);
  return m ? Number(m[1]) : 0;
};

describe('two instances on one Redis (settings: --redis-url, --redis-cluster)', () => {
  it.each([
    ['redis-url', () => ({ redisUrl: inject('redisUrl') })],
    ['redis-cluster', () => ({ redisCluster: inject('redisClusterNodes').join(',') })],
  ] as const)('%s: the instances share counters', async (name, redis) => {
    const d = `srv-${name}-${process.pid}-${Date.now()}`;
    const files = { 'd.yaml': domain(d, 3) };
    const a = await startTestServer({ files, settings: redis() });
    const b = await startTestServer({ files, settings: redis() });
    const ca = grpcClient(RateLimitService, a.grpcAddress);
    const cb = grpcClient(RateLimitService, b.grpcAddress);
    try {
      const codes = [];
      for (const c of [ca, cb, ca, cb]) codes.push((await c.shouldRateLimit(call(d, 'v'))).overallCode);
      expect(codes).toEqual([OK, OK, OK, OVER_LIMIT]);
    } finally {
      ca.close();
      cb.close();
      await Promise.all([a.stop(), b.stop()]);
    }
  });
});

describe('store failure modes against a Redis that hangs', () => {
  let redis: RedisProcess;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(() => redis.stop(true));

  it('closed: UNAVAILABLE and NOT_SERVING while Redis hangs; recovers by itself', async () => {
    const srv = await startTestServer({
      files: { 'd.yaml': domain('closed', 100) },
      settings: { redisUrl: redis.url, failureMode: 'closed' },
    });
    const rls = grpcClient(RateLimitService, srv.grpcAddress);
    try {
      expect((await rls.shouldRateLimit(call('closed', 'a'))).overallCode).toBe(OK);
      redis.pause();
      const err = (await rls.shouldRateLimit(call('closed', 'a')).catch((e: GrpcError) => e)) as GrpcError;
      expect(err.code).toBe(status.UNAVAILABLE);
      expect(await metric(srv, /ratekeeper_store_failures_total\{mode="closed"\} (\d+)/)).toBeGreaterThan(0);
      await vi.waitFor(() => expect(srv.server.health.serving).toBe(false), {
        timeout: 10_000,
        interval: 100,
      });
      redis.resume();
      await vi.waitFor(
        async () => expect((await rls.shouldRateLimit(call('closed', 'a'))).overallCode).toBe(OK),
        {
          timeout: 10_000,
          interval: 200,
        },
      );
      await vi.waitFor(() => expect(srv.server.health.serving).toBe(true), {
        timeout: 10_000,
        interval: 100,
      });
    } finally {
      redis.resume();
      rls.close();
      await srv.stop();
    }
  });

  it('open: admits while Redis hangs, counting the failures; stays SERVING', async () => {
    const srv = await startTestServer({
      files: { 'd.yaml': domain('open', 1) },
      settings: { redisUrl: redis.url },
    });
    const rls = grpcClient(RateLimitService, srv.grpcAddress);
    try {
      expect((await rls.shouldRateLimit(call('open', 'b'))).overallCode).toBe(OK);
      expect((await rls.shouldRateLimit(call('open', 'b'))).overallCode).toBe(OVER_LIMIT);
      redis.pause();
      expect((await rls.shouldRateLimit(call('open', 'b'))).overallCode).toBe(OK);
      expect(await metric(srv, /ratekeeper_store_failures_total\{mode="open"\} (\d+)/)).toBeGreaterThan(0);
      expect(srv.server.health.serving).toBe(true);
    } finally {
      redis.resume();
      rls.close();
      await srv.stop();
    }
  });
});

describe('config reload', () => {
  // Generous timeouts: on a busy machine a lost fs event waits for the watcher's poll.
  it('a good change applies at once; a bad one keeps the old config and is counted', {
    timeout: 60_000,
  }, async () => {
    const srv = await startTestServer({ files: { 'd.yaml': domain('reload', 1) } });
    const rls = grpcClient(RateLimitService, srv.grpcAddress);
    try {
      const limitOf = async () =>
        (await rls.shouldRateLimit(call('reload', `${Math.random()}`))).statuses[0]?.currentLimit
          ?.requestsPerUnit;
      expect(await limitOf()).toBe(1);
      await srv.writeFile('d.yaml', domain('reload', 7));
      await vi.waitFor(async () => expect(await limitOf()).toBe(7), { timeout: 20_000, interval: 100 });
      const errorsBefore = await metric(srv, /ratekeeper_config_reloads_total\{result="error"\} (\d+)/);
      await srv.writeFile(
        'd.yaml',
        'domain: reload\ndescriptors:\n  - key: k\n    rate_limit: { unit: eon }\n',
      );
      await vi.waitFor(
        async () =>
          expect(
            await metric(srv, /ratekeeper_config_reloads_total\{result="error"\} (\d+)/),
          ).toBeGreaterThan(errorsBefore),
        { timeout: 20_000, interval: 100 },
      );
      expect(await limitOf()).toBe(7);
    } finally {
      rls.close();
      await srv.stop();
    }
  });
});
