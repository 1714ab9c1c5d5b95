/**
 * The gRPC port over a real socket: unary calls answered on node:http2 directly, the rest relayed to
 * grpc-js. Protocol edge cases are sent by a raw HTTP/2 client (what a grpc-js client never sends);
 * deadlines, cancellation and the relayed services by grpc-js clients.
 */
import { type ClientHttp2Session, connect, type IncomingHttpHeaders } from 'node:http2';
import { gzipSync } from 'node:zlib';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  RateLimitRequestSchema,
  RateLimitResponse_Code,
  RateLimitResponseSchema,
  RateLimitService,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { Health as HealthService } from '../../gen/grpc/health/v1/health_pb.js';
import { ReportService } from '../../gen/ratekeeper/v1/report_pb.js';
import { createLogger } from '../../src/log.js';
import { startGrpc } from '../../src/transport/grpc.js';
import { frame, MAX_MESSAGE_BYTES } from '../../src/transport/grpc-wire.js';
import {
  DATA,
  END_STREAM,
  frameHeader,
  GOAWAY,
  PADDED,
  PROTOCOL_ERROR,
  RST_STREAM,
  settingsFrame,
} from '../../src/transport/h2-frames.js';
import { Health } from '../../src/transport/health.js';
import type { Listener, ServiceBinding } from '../../src/transport/types.js';
import { type GrpcError, grpcClient } from '../harness/clients.js';
import { dataFrame, headersFrame, RawClient, request } from '../harness/raw-h2.js';
import { recordingRls } from '../harness/recording-rls.js';

const PATH = '/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit';

const { binding: rls, seen, aborted } = recordingRls();
const report: ServiceBinding = {
  service: ReportService,
  impl: {
    watchAlerts: async function* () {
      yield { at: { seconds: 7n, nanos: 0 } };
    },
  },
};

let port: Listener;
let health: Health;
let session: ClientHttp2Session;
beforeAll(async () => {
  health = new Health([RateLimitService.typeName]);
  port = await startGrpc({
    bindings: [rls, report],
    health,
    log: createLogger('silent'),
    host: '127.0.0.1',
    port: 0,
  });
  health.set(true);
  session = connect(`http://127.0.0.1:${port.port}`);
});
afterAll(async () => {
  session.close();
  await port.shutdown(1000);
});

interface Raw {
  headers: IncomingHttpHeaders;
  body: Buffer;
  trailers: IncomingHttpHeaders;
}

/** One request on the raw HTTP/2 session: the response headers, body and trailers as received. */
const raw = (headers: Record<string, string>, body: Buffer): Promise<Raw> =>
  new Promise((resolve, reject) => {
    const s = session.request({ ':method': 'POST', ':path': PATH, te: 'trailers', ...headers });
    const out: Raw = { headers: {}, body: Buffer.alloc(0), trailers: {} };
    const chunks: Buffer[] = [];
    s.on('response', (h) => {
      out.headers = h;
    });
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('trailers', (t) => {
      out.trailers = t;
    });
    s.on('error', reject);
    s.on('close', () => resolve({ ...out, body: Buffer.concat(chunks) }));
    s.end(body);
  });

const GRPC = { 'content-type': 'application/grpc' };
const rlsRequest = (domain: string) =>
  frame(toBinary(RateLimitRequestSchema, create(RateLimitRequestSchema, { domain })));

describe('unary calls on the HTTP/2 port', () => {
  it('answers headers, one framed message and OK trailers', async () => {
    const r = await raw(GRPC, rlsRequest('limited'));
    expect(r.headers[':status']).toBe(200);
    expect(r.headers['content-type']).toBe('application/grpc+proto');
    expect(r.trailers['grpc-status']).toBe('0');
    expect(r.body.readUInt32BE(1)).toBe(r.body.length - 5);
    expect(fromBinary(RateLimitResponseSchema, r.body.subarray(5)).overallCode).toBe(
      RateLimitResponse_Code.OVER_LIMIT,
    );
  });

  it('answers the request Envoy’s rate-limit filter sends (20 ms grpc-timeout, its own headers)', async () => {
    const r = await raw(
      {
        ':authority': 'ratekeeper',
        ':scheme': 'http',
        'content-type': 'application/grpc',
        'grpc-timeout': '20m',
        'user-agent': 'envoy/1.31.0',
        'x-envoy-internal': 'true',
        'x-forwarded-for': '10.0.0.1',
      },
      rlsRequest('envoy'),
    );
    expect(r.headers[':status']).toBe(200);
    expect(r.trailers['grpc-status']).toBe('0');
    expect(seen.at(-1)?.headers.get('x-envoy-internal')).toBe('true');
  });

  it('a deadline past setTimeout’s range does not end the call early', async () => {
    const s = session.request({ ':method': 'POST', ':path': PATH, ...GRPC, 'grpc-timeout': '99999999H' });
    let answered = false;
    s.on('response', () => {
      answered = true;
    });
    s.on('error', () => {});
    s.end(rlsRequest('hold'));
    await vi.waitFor(() => expect(seen.at(-1)?.domain).toBe('hold'));
    await new Promise((r) => setTimeout(r, 50));
    expect(answered).toBe(false);
    const before = aborted();
    s.close(8);
    await vi.waitFor(() => expect(aborted()).toBe(before + 1));
  });

  it('reads a gzip-compressed request', async () => {
    const msg = toBinary(RateLimitRequestSchema, create(RateLimitRequestSchema, { domain: 'zipped' }));
    const z = gzipSync(msg);
    const body = Buffer.concat([Buffer.from([1, 0, 0, 0, 0]), z]);
    body.writeUInt32BE(z.length, 1);
    const r = await raw({ ...GRPC, 'grpc-encoding': 'gzip' }, body);
    expect(r.trailers['grpc-status']).toBe('0');
    expect(seen.at(-1)?.domain).toBe('zipped');
  });

  it('reads a request that arrives in several DATA frames', async () => {
    const s = session.request({ ':method': 'POST', ':path': PATH, ...GRPC });
    const body = rlsRequest('split');
    const done = new Promise<IncomingHttpHeaders>((resolve) => s.on('trailers', resolve));
    s.on('data', () => {});
    s.write(body.subarray(0, 3));
    await new Promise((r) => setTimeout(r, 20));
    s.end(body.subarray(3));
    expect((await done)['grpc-status']).toBe('0');
    expect(seen.at(-1)?.domain).toBe('split');
  });

  it.each([
    [
      'an unknown compression',
      { 'grpc-encoding': 'snappy' },
      Buffer.from([1, 0, 0, 0, 1, 0]),
      '12',
      /snappy/,
    ],
    ['no message', {}, Buffer.alloc(0), '12', /no request message/],
    ['a truncated message', {}, Buffer.from([0, 0, 0, 0, 9, 1]), '13', /truncated/],
    [
      'bytes that are not the message',
      {},
      frame(Buffer.from([0xff, 0xff, 0xff])),
      '13',
      /error deserializing request/,
    ],
    ['a malformed grpc-timeout', { 'grpc-timeout': 'soon' }, rlsRequest('x'), '13', /grpc-timeout/],
  ])('%s gets a trailers-only status', async (_name, headers, body, code, message) => {
    const r = await raw({ ...GRPC, ...headers }, body);
    expect(r.headers[':status']).toBe(200);
    expect(r.headers['grpc-status']).toBe(code);
    expect(decodeURIComponent(String(r.headers['grpc-message']))).toMatch(message);
    expect(r.body.length).toBe(0);
  });

  it('refuses a message over the size limit while it arrives', async () => {
    const huge = Buffer.alloc(MAX_MESSAGE_BYTES + 64);
    huge.writeUInt32BE(MAX_MESSAGE_BYTES + 59, 1);
    const r = await raw(GRPC, huge);
    expect(r.headers['grpc-status']).toBe('8');
  });

  it('answers a request that is not gRPC with HTTP 415', async () => {
    const r = await raw({ 'content-type': 'application/json' }, Buffer.from('{}'));
    expect(r.headers[':status']).toBe(415);
  });

  it('gives the handler the metadata without transport headers, and the peer', async () => {
    await raw(
      { ...GRPC, authorization: 'Bearer t', 'x-trace': 'abc', 'grpc-timeout': '5S' },
      rlsRequest('meta'),
    );
    const ctx = seen.at(-1)!;
    expect(ctx.headers.get('authorization')).toBe('Bearer t');
    expect(ctx.headers.get('x-trace')).toBe('abc');
    expect(ctx.headers.has('grpc-timeout')).toBe(false);
    expect(ctx.headers.has('te')).toBe(false);
    expect(ctx.peer).toMatch(/^grpc 127\.0\.0\.1:\d+$/);
  });
});

describe('with a grpc-js client', () => {
  it('ends a call past its deadline with DEADLINE_EXCEEDED and aborts the handler', async () => {
    const c = grpcClient(RateLimitService, `127.0.0.1:${port.port}`);
    const before = aborted();
    const err = (await c
      .shouldRateLimit({ domain: 'hold' }, { deadlineMs: 50 })
      .catch((e) => e)) as GrpcError;
    expect(err.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    await vi.waitFor(() => expect(aborted()).toBe(before + 1));
    expect((await c.shouldRateLimit({ domain: 'after' })).overallCode).toBe(RateLimitResponse_Code.OK);
    c.close();
  });

  it('a client cancel aborts the handler signal', async () => {
    const c = grpcClient(RateLimitService, `127.0.0.1:${port.port}`);
    const before = aborted();
    const ac = new AbortController();
    const call = c.shouldRateLimit({ domain: 'hold' }, { signal: ac.signal }).catch((e) => e);
    await vi.waitFor(() => expect(seen.at(-1)?.domain).toBe('hold'));
    ac.abort();
    expect(((await call) as GrpcError).code).toBe(grpc.status.CANCELLED);
    await vi.waitFor(() => expect(aborted()).toBe(before + 1));
    c.close();
  });

  it('relays health, server streams and unknown methods to grpc-js', async () => {
    const h = grpcClient(HealthService, `127.0.0.1:${port.port}`);
    expect((await h.check({ service: RateLimitService.typeName })).status).toBe(1);
    const r = grpcClient(ReportService, `127.0.0.1:${port.port}`);
    const got: bigint[] = [];
    for await (const a of r.watchAlerts({ account: 'a' })) got.push(a.at!.seconds);
    expect(got).toEqual([7n]);
    const err = (await r.listFlags({}).catch((e) => e)) as GrpcError;
    expect(err.code).toBe(grpc.status.UNIMPLEMENTED);
    h.close();
    r.close();
  });

  it('survives relayed requests ended at once by a connection error or a wrong content-length', async () => {
    // Such a request reached grpc-js as a stream already reset, and grpc-js threw answering it: with
    // a few dozen at once the process died. A port of its own, so its relay connection starts cold.
    const fresh = await startGrpc({
      bindings: [rls],
      health,
      log: createLogger('silent'),
      host: '127.0.0.1',
      port: 0,
    });
    const sends: Promise<void>[] = [];
    for (const contentType of ['text/plain', 'application/grpc'])
      for (const path of ['/', '/grpc.health.v1.Health/Check', '/x.Y/Z'])
        for (let i = 0; i < 5; i++)
          sends.push(
            (async () => {
              const c = await RawClient.open(fresh.port);
              c.send(
                settingsFrame([]),
                headersFrame(1, request(path, [['content-type', contentType]])),
                Buffer.concat([frameHeader(4, DATA, PADDED, 1), Buffer.from([9, 0, 0, 0])]),
              );
              const g = await c.next((f) => f.type === GOAWAY);
              expect(g.payload.readUInt32BE(4)).toBe(PROTOCOL_ERROR);
              const l = await RawClient.open(fresh.port);
              l.send(
                settingsFrame([]),
                headersFrame(
                  1,
                  request(path, [
                    ['content-type', contentType],
                    ['content-length', '10'],
                  ]),
                ),
                dataFrame(1, Buffer.from('abc'), END_STREAM),
              );
              const r = await l.next((f) => f.type === RST_STREAM && f.id === 1);
              expect(r.payload.readUInt32BE(0)).toBe(PROTOCOL_ERROR);
              l.close();
            })(),
          );
    await Promise.all(sends);
    await new Promise((r) => setTimeout(r, 1200));
    const h = grpcClient(HealthService, `127.0.0.1:${fresh.port}`);
    expect((await h.check({ service: RateLimitService.typeName })).status).toBe(1);
    h.close();
    await fresh.shutdown(1000);
  });
});
