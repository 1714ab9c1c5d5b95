/**
 * The transport adapters with hand-made bindings: error mapping (RkError, unexpected errors), auth
 * hooks, call context, and server streams (delivery, errors, cancellation, shutdown) on both ports.
 */
import { Code, ConnectError } from '@connectrpc/connect';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { RateLimitResponse_Code, RateLimitService } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { ReportService } from '../../gen/ratekeeper/v1/report_pb.js';
import { RkError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { startHttp } from '../../src/transport/connect.js';
import { startGrpc } from '../../src/transport/grpc.js';
import { Health } from '../../src/transport/health.js';
import type { CallContext, Listener, ServiceBinding } from '../../src/transport/types.js';
import { connectClient, type GrpcError, grpcClient } from '../harness/clients.js';
import { recordingRls } from '../harness/recording-rls.js';

/** What handlers saw of their calls, read while the call was live. */
const { binding: rls, seen: seenContexts } = recordingRls();
let streamWaiting = 0;
let streamAborted = 0;

/** WatchAlerts yields `account` alerts then, for "fail", an error; for "forever", waits for abort. */
const report: ServiceBinding = {
  service: ReportService,
  impl: {
    watchAlerts: async function* (req: { account: string }, ctx: CallContext) {
      const n = req.account === 'forever' ? 1 : 3;
      for (let i = 0; i < n; i++) yield { at: { seconds: BigInt(i), nanos: 0 } };
      if (req.account === 'fail') throw new RkError('FAILED_PRECONDITION', 'stream broke');
      if (req.account === 'forever') {
        streamWaiting++;
        await new Promise<void>((resolve) =>
          ctx.signal.addEventListener('abort', () => resolve(), { once: true }),
        );
        streamAborted++;
      }
    },
  },
};

let grpcT: Listener;
let httpT: Listener;
let grpcAddr: string;
let httpUrl: string;
beforeAll(async () => {
  const health = new Health([]);
  const opts = { bindings: [rls, report], health, log: createLogger('silent'), host: '127.0.0.1', port: 0 };
  grpcT = await startGrpc(opts);
  httpT = await startHttp(opts);
  grpcAddr = `127.0.0.1:${grpcT.port}`;
  httpUrl = `http://127.0.0.1:${httpT.port}`;
});
afterAll(async () => {
  await Promise.all([grpcT.shutdown(1000), httpT.shutdown(1000)]);
});

const req = (domain: string) => ({ domain, descriptors: [] });

const collect = async (it: AsyncIterable<{ at?: { seconds: bigint } }>) => {
  const got: number[] = [];
  let error: unknown;
  try {
    for await (const m of it) got.push(Number(m.at?.seconds));
  } catch (e) {
    error = e;
  }
  return { got, error };
};

describe('unary errors', () => {
  it('an unexpected error is INTERNAL without its message, on both ports', async () => {
    const g = grpcClient(RateLimitService, grpcAddr);
    const e1 = (await g.shouldRateLimit(req('boom')).catch((e: GrpcError) => e)) as GrpcError;
    g.close();
    expect(e1.code).toBe(status.INTERNAL);
    expect(e1.details).toBe('internal error');
    const e2 = await connectClient(RateLimitService, httpUrl)
      .shouldRateLimit(req('boom'))
      .catch((e: unknown) => e);
    expect(e2).toBeInstanceOf(ConnectError);
    expect((e2 as ConnectError).code).toBe(Code.Internal);
    expect((e2 as ConnectError).rawMessage).toBe('internal error');
  });

  it('RkError codes map the same on both ports; the auth hook runs before the handler', async () => {
    const g = grpcClient(RateLimitService, grpcAddr);
    const c = connectClient(RateLimitService, httpUrl, 'grpc-web');
    try {
      await expect(g.shouldRateLimit(req('missing'))).rejects.toMatchObject({ code: status.NOT_FOUND });
      await expect(c.shouldRateLimit(req('missing'))).rejects.toMatchObject({ code: Code.NotFound });
      const before = seenContexts.length;
      const auth = { headers: { authorization: 'Bearer wrong' } };
      await expect(g.shouldRateLimit(req('x'), auth)).rejects.toMatchObject({
        code: status.UNAUTHENTICATED,
        details: 'bad token',
      });
      await expect(c.shouldRateLimit(req('x'), auth)).rejects.toMatchObject({ code: Code.Unauthenticated });
      expect(seenContexts.length).toBe(before);
    } finally {
      g.close();
    }
  });

  it('handlers see lower-case headers and the peer on both ports', async () => {
    const g = grpcClient(RateLimitService, grpcAddr);
    await g.shouldRateLimit(req('x'), { headers: { 'X-Request-Id': 'r1' } });
    g.close();
    await connectClient(RateLimitService, httpUrl).shouldRateLimit(req('x'), {
      headers: { 'X-Request-Id': 'r2' },
    });
    const [a, b] = seenContexts.slice(-2);
    expect(a?.headers.get('x-request-id')).toBe('r1');
    expect(a?.peer).toMatch(/^grpc 127\.0\.0\.1:\d+$/);
    expect(b?.headers.get('x-request-id')).toBe('r2');
    expect(b?.peer).toMatch(/^http (::ffff:)?127\.0\.0\.1:\d+$/);
  });
});

describe('server streams', () => {
  it('deliver every message, then end OK (gRPC and Connect)', async () => {
    const g = grpcClient(ReportService, grpcAddr);
    expect(await collect(g.watchAlerts({ account: 'a' }))).toEqual({ got: [0, 1, 2], error: undefined });
    g.close();
    const c = connectClient(ReportService, httpUrl, 'connect-binary');
    expect(await collect(c.watchAlerts({ account: 'a' }))).toEqual({ got: [0, 1, 2], error: undefined });
  });

  it('an error after some messages arrives as its status, after them', async () => {
    const g = grpcClient(ReportService, grpcAddr);
    const r1 = await collect(g.watchAlerts({ account: 'fail' }));
    g.close();
    expect(r1.got).toEqual([0, 1, 2]);
    expect(r1.error).toMatchObject({ code: status.FAILED_PRECONDITION, details: 'stream broke' });
    const r2 = await collect(connectClient(ReportService, httpUrl).watchAlerts({ account: 'fail' }));
    expect(r2.got).toEqual([0, 1, 2]);
    expect(r2.error).toMatchObject({ code: Code.FailedPrecondition, rawMessage: 'stream broke' });
  });

  it('a client cancel aborts the handler signal', async () => {
    const before = streamAborted;
    const g = grpcClient(ReportService, grpcAddr);
    const ac = new AbortController();
    const got: number[] = [];
    const done = collect(
      (async function* () {
        for await (const m of g.watchAlerts({ account: 'forever' }, { signal: ac.signal })) {
          got.push(Number(m.at?.seconds));
          yield m;
        }
      })(),
    );
    await vi.waitFor(() => expect(got).toEqual([0]));
    ac.abort();
    expect((await done).error).toMatchObject({ code: status.CANCELLED });
    await vi.waitFor(() => expect(streamAborted).toBe(before + 1));
    g.close();
  });
});

describe('shutdown', () => {
  it('ends open streams (handler signal aborted) instead of waiting for the drain timeout', async () => {
    const health = new Health([]);
    const opts = { bindings: [report], health, log: createLogger('silent'), host: '127.0.0.1', port: 0 };
    const g2 = await startGrpc(opts);
    const h2 = await startHttp(opts);
    const g = grpcClient(ReportService, `127.0.0.1:${g2.port}`);
    const c = connectClient(ReportService, `http://127.0.0.1:${h2.port}`, 'connect-binary');
    const before = streamAborted;
    const waiting = streamWaiting;
    const streams = [
      collect(g.watchAlerts({ account: 'forever' })),
      collect(c.watchAlerts({ account: 'forever' })),
    ];
    await vi.waitFor(() => expect(streamWaiting).toBe(waiting + 2));
    const started = Date.now();
    await Promise.all([g2.shutdown(20_000), h2.shutdown(20_000)]);
    expect(Date.now() - started).toBeLessThan(10_000);
    const [a, b] = (await Promise.all(streams)) as [
      Awaited<(typeof streams)[0]>,
      Awaited<(typeof streams)[1]>,
    ];
    expect(a.got).toEqual([0]);
    expect(b.got).toEqual([0]);
    expect(a.error).toBeUndefined();
    expect(streamAborted).toBe(before + 2);
    g.close();
  });
});

describe('HTTP port drain', () => {
  it('in-flight Connect calls (HTTP/1.1 and h2c) finish; new connections are refused', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let arrived = 0;
    const slow: ServiceBinding = {
      service: RateLimitService,
      impl: {
        shouldRateLimit: async () => {
          arrived++;
          await gate;
          return { overallCode: RateLimitResponse_Code.OK, statuses: [] };
        },
      },
    };
    const h = await startHttp({
      bindings: [slow],
      health: new Health([]),
      log: createLogger('silent'),
      host: '127.0.0.1',
      port: 0,
    });
    const url = `http://127.0.0.1:${h.port}`;
    const calls = (['connect-json', 'connect-binary'] as const).map((p) =>
      connectClient(RateLimitService, url, p).shouldRateLimit(req('x')),
    );
    await vi.waitFor(() => expect(arrived).toBe(2));
    const stopping = h.shutdown(20_000);
    await expect(fetch(`${url}/healthz`)).rejects.toThrow();
    release();
    for (const res of await Promise.all(calls)) expect(res.overallCode).toBe(RateLimitResponse_Code.OK);
    await stopping;
  });
});
