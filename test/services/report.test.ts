/**
 * ReportService end to end: the real server on free ports with a policy YAML file, grpc-js clients,
 * the embedded store on a test clock (time is simulated, never waited for); flags on Redis survive
 * a restart.
 */
import { timestampMs } from '@bufbuild/protobuf/wkt';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { RateLimitResponse_Code, RateLimitService } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { AdminService } from '../../gen/ratekeeper/v1/admin_pb.js';
import { type Alert, FlagState, ReportService, Signal } from '../../gen/ratekeeper/v1/report_pb.js';
import { UsageService } from '../../gen/ratekeeper/v1/usage_pb.js';
import { MemoryStore } from '../../src/store/memory.js';
import {
  CONNECT_PROTOCOLS,
  connectClient,
  type GrpcClient,
  type GrpcError,
  grpcClient,
} from '../harness/clients.js';
import { startTestServer, type TestServer } from '../harness/server.js';

const TOKEN = 'ops-token-0123456789abcdef';
process.env['RATEKEEPER_ADMIN_TOKENS'] = `ops:${TOKEN}`;
const AUTH = { headers: { authorization: `Bearer ${TOKEN}` } };

const M = 60_000;
const T0 = Date.UTC(2026, 10, 25, 12, 0, 0);

const POLICY = `
kind: inference-policy
pepper: test-pepper
default_tier: free
# Long enough that the steady clients below, which never settle, hold no lease that expires.
lease: 1h
tiers:
  free: { requests: 60/minute, concurrent: }
models:
  m1:
    price: { input_per_million_usd: 1.00, output_per_million_usd: 1.00 }
keys:
  - { id: hot, account: hot }
  - { id: calm, account: calm }
  - { id: hung, account: hung }
  - { id: storm, account: storm }
  - { id: spender, account: acme, monthly_spend_usd: 1.00, monthly_tokens: 10000000 }
signals:
  alert_shares: [0.8, 1.0]
  # The steady clients hold their slots for the whole test: not hung ones (a slot never lives 1 h).
  runaway: { held_longer_than: 1h }
`;

const d = (entries: Record<string, string | number>) => ({
  entries: Object.entries(entries).map(([key, value]) => ({ key, value: String(value) })),
});

const code = async (p: Promise<unknown>): Promise<number | undefined> => {
  try {
    await p;
    return undefined;
  } catch (err) {
    return (err as GrpcError).code;
  }
};

describe('ReportService over gRPC', () => {
  const clock = { t: T0 };
  let server: TestServer;
  let rls: GrpcClient<typeof RateLimitService>;
  let usage: GrpcClient<typeof UsageService>;
  let report: GrpcClient<typeof ReportService>;
  let admin: GrpcClient<typeof AdminService>;
  let seq = 0;

  beforeAll(async () => {
    server = await startTestServer({
      files: { 'policy.yaml': POLICY },
      store: new MemoryStore({ now: () => clock.t, sweepIntervalMs: 0 }),
    });
    rls = grpcClient(RateLimitService, server.grpcAddress);
    usage = grpcClient(UsageService, server.grpcAddress);
    report = grpcClient(ReportService, server.grpcAddress);
    admin = grpcClient(AdminService, server.grpcAddress);
  });
  afterAll(async () => {
    for (const c of [rls, usage, report, admin]) c?.close();
    await server?.stop();
  });

  /** One request; settled (Debit) unless hung. Returns the Retry-After in ms on denial, else 0. */
  const call = async (key: string, opts: { hung?: boolean; tokensOut?: number } = {}): Promise<number> => {
    const requestId = `r${++seq}`;
    const r = await rls.shouldRateLimit({
      domain: 'inference',
      descriptors: [d({ key, model: 'm1', request_id: requestId })],
    });
    if (r.overallCode !== RateLimitResponse_Code.OK) {
      const after = r.responseHeadersToAdd.find((h) => h.key.toLowerCase() === 'retry-after');
      return Math.max(Number(after?.value ?? 1) * 1000, 1);
    }
    if (!opts.hung) {
      await usage.debit({
        requestId,
        key,
        model: 'm1',
        tokensIn: 10n,
        tokensOut: BigInt(opts.tokensOut ?? 10),
      });
    }
    return 0;
  };

  /** Admissions only (no Debit), to keep the test fast; leases outlive the test. */
  const steady = async (key: string, perMinute: number, minutes: number) => {
    const end = clock.t + minutes * M;
    while (clock.t < end) {
      await call(key, { hung: true });
      clock.t += Math.round(M / perMinute);
    }
  };

  const flagsOf = async (account: string) => {
    await server.server.deps.report!.engine.idle();
    return (await report.listFlags({ account }, AUTH)).flags;
  };

  it('requires the admin bearer token', async () => {
    expect(await code(report.listFlags({}))).toBe(grpc.status.UNAUTHENTICATED);
    expect(await code(report.topKeys({}, { headers: { authorization: 'Bearer nope-nope-nope-nope' } }))).toBe(
      grpc.status.UNAUTHENTICATED,
    );
  });

  it('flags a client at 95% of its RPM for 10 minutes once; one at 50% stays unflagged but visible', async () => {
    await steady('hot', 57, 12);
    clock.t -= 12 * M;
    await steady('calm', 30, 12);
    await call('calm');
    const hot = await flagsOf('hot');
    expect(hot).toHaveLength(1);
    expect(hot[0]).toMatchObject({
      key: 'hot',
      account: 'hot',
      signal: Signal.EXCESSIVE_REQUEST_RATE,
      threshold: 0.9,
      windowSeconds: 600n,
      state: FlagState.OPEN,
    });
    expect(hot[0]!.observed).toBeGreaterThanOrEqual(0.9);
    expect(await flagsOf('calm')).toEqual([]);

    const top = await report.topKeys({ by: 'requests', windowSeconds: 120n }, AUTH);
    expect(top.entries.map((e) => e.key)).toEqual(['hot', 'calm']);
    expect(Number(top.entries[1]!.value)).toBeGreaterThan(40);
    const calm = await report.getKeyUsage({ key: 'calm' }, AUTH);
    const requests = calm.limits.find((l) => l.metric === 'requests' && l.scope === 'key');
    expect(requests).toMatchObject({ limit: 60n, windowSeconds: 60n });
    expect(Number(requests!.used)).toBeGreaterThanOrEqual(29);
    expect(Number(requests!.used)).toBeLessThanOrEqual(31);
    expect(calm).toMatchObject({ key: 'calm', account: 'calm', tier: 'free' });
    expect(Number(calm.monthTokens)).toBeGreaterThan(0);
  });

  it('trips runaway on hung requests, and retry storm on a client hammering through 429s', async () => {
    for (let i = 0; i < 5; i++) await call('hung', { hung: true });
    clock.t += 61 * M;
    await call('hung');
    expect((await flagsOf('hung')).map((f) => [f.signal, f.observed])).toEqual([
      [Signal.RUNAWAY_REQUESTS, 5],
    ]);

    for (let i = 0; i < 150; i++) {
      await call('storm');
      clock.t += 200;
    }
    const storm = await flagsOf('storm');
    expect(storm.map((f) => f.signal)).toEqual([Signal.RETRY_STORM]);
    expect(storm[0]!.observed).toBeGreaterThanOrEqual(30);
  });

  it('sends one alert to a WatchAlerts subscriber when a key crosses 80% of its monthly spend', async () => {
    const ac = new AbortController();
    const got: Alert[] = [];
    const stream = report.watchAlerts({ account: 'acme' }, { ...AUTH, signal: ac.signal });
    const reading = (async () => {
      try {
        for await (const a of stream) got.push(a);
      } catch (err) {
        if ((err as GrpcError).code !== grpc.status.CANCELLED) throw err;
      }
    })();
    const runtime = server.server.deps.report!;
    await expect.poll(() => (runtime.store as unknown as { subscribers: number }).subscribers).toBe(1);

    // $1 cap at $1 per million tokens: 700k, then 150k (85%), then 50k (90%) tokens.
    await call('spender', { tokensOut: 700_000 - 10 });
    await call('spender', { tokensOut: 150_000 - 10 });
    await call('spender', { tokensOut: 50_000 - 10 });
    await runtime.engine.idle();
    await expect.poll(() => got.length).toBe(1);
    const alert = got[0]!;
    expect(alert.kind.case).toBe('threshold');
    expect(alert.kind.value).toMatchObject({
      key: 'spender',
      account: 'acme',
      metric: 'monthly_spend',
      share: 0.8,
      used: 850_000n,
      limit: 1_000_000n,
      period: '2026-11',
    });
    expect(timestampMs(alert.at!)).toBe(clock.t);
    // Nothing more arrives for the same crossing.
    await call('spender', { tokensOut: 10 });
    await runtime.engine.idle();
    await new Promise((r) => setImmediate(r));
    expect(got).toHaveLength(1);
    ac.abort();
    await reading;

    const u = await report.getKeyUsage({ key: 'spender', model: 'm1' }, AUTH);
    expect(u.monthSpendMicros).toBe(900_020n);
    expect(u.monthTokens).toBe(900_020n);
    expect(u.limits.find((l) => l.metric === 'monthly_spend')).toMatchObject({
      scope: 'key',
      limit: 1_000_000n,
      used: 900_020n,
      remaining: 99_980n,
      reset: BigInt(Date.UTC(2026, 11, 1) / 1000),
    });
  });

  it('reviews a flag through AdminService and filters by state', async () => {
    const [flag] = await flagsOf('hot');
    const reviewed = await admin.reviewFlag(
      { flagId: flag!.id, state: FlagState.DISMISSED, note: 'load test' },
      AUTH,
    );
    expect(reviewed).toMatchObject({ state: FlagState.DISMISSED, note: 'load test', reviewedBy: 'ops' });
    expect((await report.listFlags({ state: FlagState.DISMISSED }, AUTH)).flags.map((f) => f.id)).toEqual([
      flag!.id,
    ]);
    expect((await report.listFlags({ state: FlagState.OPEN, account: 'hot' }, AUTH)).flags).toEqual([]);
  });

  it('pages ListFlags', async () => {
    const first = await report.listFlags({ pageSize: 1 }, AUTH);
    expect(first.flags).toHaveLength(1);
    expect(first.nextPageToken).not.toBe('');
    const second = await report.listFlags({ pageSize: 1, pageToken: first.nextPageToken }, AUTH);
    expect(second.flags[0]!.id < first.flags[0]!.id).toBe(true);
  });

  it('answers the same on the HTTP port, streams included', async () => {
    const viaGrpc = await report.listFlags({}, AUTH);
    for (const protocol of CONNECT_PROTOCOLS) {
      const client = connectClient(ReportService, server.httpUrl, protocol);
      expect((await client.listFlags({}, AUTH)).flags, protocol).toEqual(viaGrpc.flags);
    }
    const client = connectClient(ReportService, server.httpUrl, 'connect-json');
    const ac = new AbortController();
    const stream = client.watchAlerts({}, { ...AUTH, signal: ac.signal })[Symbol.asyncIterator]();
    const first = stream.next();
    const runtime = server.server.deps.report!;
    await expect.poll(() => (runtime.store as unknown as { subscribers: number }).subscribers).toBe(1);
    await runtime.store.publish({
      atMs: clock.t,
      crossing: {
        key: 'x',
        account: 'y',
        metric: 'monthly_tokens',
        share: 1,
        used: 5,
        limit: 5,
        period: '2026-11',
      },
    });
    const got = await first;
    expect(got.value?.kind).toMatchObject({
      case: 'threshold',
      value: { key: 'x', metric: 'monthly_tokens' },
    });
    ac.abort();
    await stream.return?.();
  });

  it('names the field of every bad input', async () => {
    const bad = async (p: Promise<unknown>, field: string) => {
      try {
        await p;
        expect.unreachable();
      } catch (err) {
        expect((err as GrpcError).code).toBe(grpc.status.INVALID_ARGUMENT);
        expect((err as GrpcError).details).toContain(field);
      }
    };
    await bad(report.listFlags({ pageSize: -1 }, AUTH), 'page_size');
    await bad(report.listFlags({ pageSize: 501 }, AUTH), 'page_size');
    await bad(report.listFlags({ state: 9 as FlagState }, AUTH), 'state');
    await bad(report.listFlags({ signal: 9 as Signal }, AUTH), 'signal');
    await bad(report.listFlags({ pageToken: 'x' }, AUTH), 'page_token');
    await bad(report.topKeys({ by: 'karma' }, AUTH), 'by');
    await bad(report.topKeys({ windowSeconds: 86_401n }, AUTH), 'window_seconds');
    await bad(report.topKeys({ limit: -3 }, AUTH), 'limit');
    await bad(report.getKeyUsage({ key: '' }, AUTH), 'key');
    await bad(admin.reviewFlag({ flagId: 'f0000000001', state: FlagState.OPEN }, AUTH), 'state');
    expect(await code(admin.reviewFlag({ flagId: 'f9999999999', state: FlagState.REVIEWED }, AUTH))).toBe(
      grpc.status.NOT_FOUND,
    );
  });
});

describe('two instances on one Redis', () => {
  it('send a crossing once, to a subscriber on the other instance', async () => {
    const id = `spender-${process.pid}-${Date.now()}`;
    const policy = POLICY.replace(
      '\nsignals:',
      `\n  - { id: ${id}, account: ${id}, monthly_spend_usd: 1.00 }\nsignals:`,
    );
    const start = () =>
      startTestServer({ files: { 'policy.yaml': policy }, settings: { redisUrl: inject('redisUrl') } });
    const [a, b] = await Promise.all([start(), start()]);
    const clients = [a, b].map((s) => ({
      rls: grpcClient(RateLimitService, s.grpcAddress),
      usage: grpcClient(UsageService, s.grpcAddress),
      report: grpcClient(ReportService, s.grpcAddress),
    }));
    try {
      const ac = new AbortController();
      const got: Alert[] = [];
      const reading = (async () => {
        try {
          for await (const x of clients[1]!.report.watchAlerts(
            { account: id },
            { ...AUTH, signal: ac.signal },
          ))
            got.push(x);
        } catch (err) {
          if ((err as GrpcError).code !== grpc.status.CANCELLED) throw err;
        }
      })();
      const bReport = b.server.deps.report!;
      await expect.poll(() => (bReport.store as unknown as { subscribers: number }).subscribers).toBe(1);
      await (bReport.store as unknown as { subscribed(): Promise<void> }).subscribed();

      let n = 0;
      const spend = async (via: (typeof clients)[number], tokens: number) => {
        const requestId = `${id}-${++n}`;
        await via.rls.shouldRateLimit({
          domain: 'inference',
          descriptors: [d({ key: id, model: 'm1', request_id: requestId })],
        });
        await via.usage.debit({ requestId, key: id, model: 'm1', tokensIn: 0n, tokensOut: BigInt(tokens) });
      };
      await spend(clients[0]!, 850_000);
      await a.server.deps.report!.engine.idle();
      await spend(clients[1]!, 50_000);
      await bReport.engine.idle();
      await expect.poll(() => got.length).toBe(1);
      expect(got[0]!.kind.value).toMatchObject({
        key: id,
        metric: 'monthly_spend',
        share: 0.8,
        used: 850_000n,
      });
      // B's own debit (90%) found the crossing claimed: nothing more arrives after a later alert.
      await a.server.deps.report!.store.publish({
        atMs: Date.now(),
        crossing: {
          key: id,
          account: id,
          metric: 'monthly_tokens',
          share: 1,
          used: 1,
          limit: 1,
          period: 'marker',
        },
      });
      await expect.poll(() => got.length).toBe(2);
      expect(got[1]!.kind.value).toMatchObject({ period: 'marker' });
      ac.abort();
      await reading;
    } finally {
      for (const c of clients) for (const x of Object.values(c)) x.close();
      await Promise.all([a.stop(), b.stop()]);
    }
  });
});

describe('flags on Redis', () => {
  it('survive a server restart', async () => {
    const start = () =>
      startTestServer({ files: { 'policy.yaml': POLICY }, settings: { redisUrl: inject('redisUrl') } });
    const account = `restart-${process.pid}-${Date.now()}`;
    let server = await start();
    const runtime = server.server.deps.report!;
    runtime.engine.record({ kind: 'expired', atMs: Date.now(), key: 'k-restart', account, count: 4 });
    await runtime.engine.idle();
    await server.stop();

    server = await start();
    const report = grpcClient(ReportService, server.grpcAddress);
    try {
      const { flags } = await report.listFlags({ account }, AUTH);
      expect(flags.map((f) => [f.key, f.signal, f.observed, f.state])).toEqual([
        ['k-restart', Signal.RUNAWAY_REQUESTS, 4, FlagState.OPEN],
      ]);
    } finally {
      report.close();
      await server.stop();
    }
  });
});
