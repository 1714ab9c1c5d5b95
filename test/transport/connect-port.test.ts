/**
 * The HTTP port's h2c connections over a real socket: Connect unary calls with binary bodies answered
 * on our own HTTP/2 layer, everything else relayed to connect-node. connect-node matches content types
 * without regard to case and our layer only takes `application/proto` as written, so the same request
 * sent as `APPLICATION/PROTO` is answered by connect-node: the two answers must be the same.
 */
import { type ClientHttp2Session, connect, type IncomingHttpHeaders } from 'node:http2';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { createClient } from '@connectrpc/connect';
import { compressionGzip, createConnectTransport } from '@connectrpc/connect-node';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  RateLimitRequestSchema,
  RateLimitResponse_Code,
  RateLimitResponseSchema,
  RateLimitService,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { createLogger } from '../../src/log.js';
import { startHttp } from '../../src/transport/connect.js';
import { READ_MAX_BYTES } from '../../src/transport/connect-unary.js';
import { Health } from '../../src/transport/health.js';
import type { Listener } from '../../src/transport/types.js';
import { recordingRls } from '../harness/recording-rls.js';

const PATH = '/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit';

const { binding: rls, seen, aborted } = recordingRls();

let port: Listener;
let url: string;
let session: ClientHttp2Session;
beforeAll(async () => {
  const health = new Health([]);
  health.set(true);
  port = await startHttp({
    bindings: [rls],
    health,
    log: createLogger('silent'),
    host: '127.0.0.1',
    port: 0,
  });
  url = `http://127.0.0.1:${port.port}`;
  session = connect(url);
});
afterAll(async () => {
  session.close();
  await port.shutdown(1000);
});

interface Raw {
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** One POST on the raw h2c session: the response headers and body as received. */
const post = (headers: Record<string, string>, body: Buffer): Promise<Raw> =>
  new Promise((resolve, reject) => {
    const s = session.request({ ':method': 'POST', ':path': PATH, ...headers });
    let got: IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    s.on('response', (h) => {
      got = h;
    });
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', reject);
    s.on('close', () => resolve({ headers: got, body: Buffer.concat(chunks) }));
    s.end(body);
  });

const message = (domain: string): Buffer =>
  Buffer.from(toBinary(RateLimitRequestSchema, create(RateLimitRequestSchema, { domain })));

const OURS = { 'content-type': 'application/proto' };
const CONNECT_NODE = { 'content-type': 'APPLICATION/PROTO' };

describe('Connect unary calls with binary bodies over h2c', () => {
  it('are answered on our layer: 200, application/proto, its length, the message', async () => {
    const r = await post(OURS, message('limited'));
    expect(r.headers[':status']).toBe(200);
    expect(r.headers['content-type']).toBe('application/proto');
    expect(r.headers['content-length']).toBe(String(r.body.length));
    expect(fromBinary(RateLimitResponseSchema, r.body).overallCode).toBe(RateLimitResponse_Code.OVER_LIMIT);
    // node:http2 adds a date header to every answer; ours does not.
    expect(r.headers.date).toBeUndefined();
    expect((await post(CONNECT_NODE, message('limited'))).headers.date).toBeDefined();
  });

  it.each([
    ['an answer', {}, message('limited'), 200],
    ['a domain error (NOT_FOUND)', {}, message('missing'), 404],
    ['an unexpected error, without its message', {}, message('boom'), 500],
    ['a refused auth hook', { authorization: 'Bearer wrong' }, message('x'), 401],
    ['bytes that are not the message', {}, Buffer.from([0xff, 0xff, 0xff]), 500],
    ['an empty body (the empty message)', {}, Buffer.alloc(0), 200],
    ['a deadline it meets', { 'connect-timeout-ms': '5000' }, message('x'), 200],
    ['a deadline past setTimeout’s range', { 'connect-timeout-ms': '9999999999' }, message('x'), 200],
  ])('%s: the same answer as connect-node', async (_name, headers, body, status) => {
    const ours = await post({ ...OURS, ...headers }, body);
    const theirs = await post({ ...CONNECT_NODE, ...headers }, body);
    expect(ours.headers[':status']).toBe(status);
    expect(theirs.headers[':status']).toBe(status);
    expect(ours.headers['content-type']).toBe(theirs.headers['content-type']);
    expect(ours.body.equals(theirs.body)).toBe(true);
    if (status !== 200) {
      const error = JSON.parse(ours.body.toString()) as { code: string; message: string };
      expect(error.code).toMatch(/^[a-z_]+$/);
      expect(error.message).not.toMatch(/secret/);
    }
  });

  it('a body over the read limit is refused as connect-node refuses it (resource_exhausted, 429)', async () => {
    const huge = Buffer.alloc(READ_MAX_BYTES + 1);
    const ours = await post(OURS, huge);
    const theirs = await post(CONNECT_NODE, huge);
    expect(ours.headers[':status']).toBe(429);
    expect(theirs.headers[':status']).toBe(429);
    expect(JSON.parse(ours.body.toString())).toEqual(JSON.parse(theirs.body.toString()));
  });

  it('a content-length over the read limit is refused before the body (worded as connect-node does)', async () => {
    const before = seen.length;
    const r = await post(
      { ...OURS, 'content-length': String(READ_MAX_BYTES + 1) },
      Buffer.alloc(READ_MAX_BYTES + 1),
    );
    expect(r.headers[':status']).toBe(429);
    expect(JSON.parse(r.body.toString())).toEqual({
      code: 'resource_exhausted',
      message: `message size ${READ_MAX_BYTES + 1} is larger than configured readMaxBytes ${READ_MAX_BYTES}`,
    });
    expect(seen.length).toBe(before);
  });

  it('a deadline that passes ends the call deadline_exceeded (504) and aborts the handler', async () => {
    const before = aborted();
    const r = await post({ ...OURS, 'connect-timeout-ms': '30' }, message('hold'));
    expect(r.headers[':status']).toBe(504);
    expect(JSON.parse(r.body.toString())).toEqual({
      code: 'deadline_exceeded',
      message: 'deadline exceeded',
    });
    await vi.waitFor(() => expect(aborted()).toBe(before + 1));
  });

  it('a client cancel aborts the handler', async () => {
    const before = aborted();
    const s = session.request({ ':method': 'POST', ':path': PATH, ...OURS });
    s.on('error', () => {});
    s.end(message('hold'));
    await vi.waitFor(() => expect(seen.at(-1)?.domain).toBe('hold'));
    s.close(8);
    await vi.waitFor(() => expect(aborted()).toBe(before + 1));
  });

  it('a malformed deadline is left to connect-node, which words it (invalid_argument, 400)', async () => {
    const r = await post({ ...OURS, 'connect-timeout-ms': 'soon' }, message('x'));
    expect(r.headers[':status']).toBe(400);
    expect(JSON.parse(r.body.toString()).message).toMatch(/invalid connect timeout value: soon/);
  });

  it('handlers see every header and the client’s address, on our layer and through the relay', async () => {
    await post({ ...OURS, 'x-request-id': 'ours' }, message('peer'));
    const a = seen.at(-1);
    await post({ ...CONNECT_NODE, 'x-request-id': 'relayed' }, message('peer'));
    const b = seen.at(-1);
    expect(a?.headers.get('x-request-id')).toBe('ours');
    expect(a?.headers.get('content-type')).toBe('application/proto');
    expect(b?.headers.get('x-request-id')).toBe('relayed');
    const local = (session.socket as { localPort?: number }).localPort;
    expect(a?.peer).toBe(`http 127.0.0.1:${local}`);
    expect(b?.peer).toBe(`http 127.0.0.1:${local}`);
  });
});

describe('other requests on h2c connections, relayed to connect-node', () => {
  it('Connect JSON and gzip-compressed binary calls', async () => {
    const json = createClient(
      RateLimitService,
      createConnectTransport({ baseUrl: url, httpVersion: '2', useBinaryFormat: false }),
    );
    expect((await json.shouldRateLimit({ domain: 'limited' })).overallCode).toBe(
      RateLimitResponse_Code.OVER_LIMIT,
    );
    const gzip = createClient(
      RateLimitService,
      createConnectTransport({
        baseUrl: url,
        httpVersion: '2',
        useBinaryFormat: true,
        sendCompression: compressionGzip,
        compressMinBytes: 0,
      }),
    );
    expect((await gzip.shouldRateLimit({ domain: 'zipped' })).overallCode).toBe(RateLimitResponse_Code.OK);
    expect(seen.at(-1)?.domain).toBe('zipped');
    expect(seen.at(-1)?.headers.get('content-encoding')).toBe('gzip');
  });

  it('a GET of a method with side effects (405) and an unknown path (404)', async () => {
    const get = await new Promise<IncomingHttpHeaders>((resolve) => {
      const s = session.request({ ':method': 'GET', ':path': `${PATH}?encoding=proto&message=` });
      s.on('response', resolve);
      s.resume();
    });
    expect(get[':status']).toBe(405);
    const unknown = await new Promise<IncomingHttpHeaders>((resolve) => {
      const s = session.request({ ':method': 'POST', ':path': '/no.Such/Method', ...OURS });
      s.on('response', resolve);
      s.resume();
      s.end();
    });
    expect(unknown[':status']).toBe(404);
  });

  it('the health page', async () => {
    const r = await new Promise<{ status: number; body: string }>((resolve) => {
      const s = session.request({ ':method': 'GET', ':path': '/healthz' });
      let status = 0;
      let body = '';
      s.on('response', (h) => {
        status = Number(h[':status']);
      });
      s.setEncoding('utf8');
      s.on('data', (c: string) => {
        body += c;
      });
      s.on('end', () => resolve({ status, body }));
    });
    expect(r).toEqual({ status: 200, body: 'SERVING\n' });
  });
});
