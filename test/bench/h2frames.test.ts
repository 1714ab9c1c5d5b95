/**
 * The load generator's pre-encoded-frame client against real servers over a socket: our gRPC port and
 * a grpc-js server (node:http2, whose HPACK encoder indexes into the dynamic table).
 */
import { create } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FrameConnection } from '../../bench/h2frames.js';
import { buildRequests, grpcFrame, SERVICE_PATH } from '../../bench/requests.js';
import {
  type RateLimitRequest,
  RateLimitRequestSchema,
  type RateLimitResponse,
  RateLimitResponse_Code,
  RateLimitResponseSchema,
  RateLimitService,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { RkError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { grpcServiceDefinition, startGrpc } from '../../src/transport/grpc.js';
import { Health } from '../../src/transport/health.js';
import type { Listener } from '../../src/transport/types.js';

/** Answers OVER_LIMIT for domain "limited", fails for "bad"; remembers each request's first entry value. */
const seen: string[] = [];
const answer = (req: RateLimitRequest): RateLimitResponse => {
  seen.push(req.descriptors[0]?.entries[0]?.value ?? '');
  if (req.domain === 'bad') throw new RkError('INVALID_ARGUMENT', 'descriptors: bad');
  return create(RateLimitResponseSchema, {
    overallCode: req.domain === 'limited' ? RateLimitResponse_Code.OVER_LIMIT : RateLimitResponse_Code.OK,
  });
};

let ours: Listener;
let theirs: grpc.Server;
let theirsPort: number;
beforeAll(async () => {
  ours = await startGrpc({
    bindings: [{ service: RateLimitService, impl: { shouldRateLimit: async (req) => answer(req) } }],
    health: new Health([]),
    log: createLogger('silent'),
    host: '127.0.0.1',
    port: 0,
  });
  theirs = new grpc.Server();
  theirs.addService(grpcServiceDefinition(RateLimitService), {
    shouldRateLimit: (
      call: grpc.ServerUnaryCall<RateLimitRequest, RateLimitResponse>,
      cb: grpc.sendUnaryData<RateLimitResponse>,
    ) => {
      try {
        cb(null, answer(call.request));
      } catch (err) {
        cb({ code: grpc.status.INVALID_ARGUMENT, details: (err as Error).message });
      }
    },
  });
  theirsPort = await new Promise<number>((resolve, reject) =>
    theirs.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) =>
      err ? reject(err) : resolve(port),
    ),
  );
});
afterAll(async () => {
  await ours.shutdown(1000);
  theirs.forceShutdown();
});

const call = (c: FrameConnection, message: Buffer) =>
  new Promise<{ err: string | null; overLimit: boolean }>((resolve) =>
    c.call(message, (err, overLimit) => resolve({ err, overLimit })),
  );

const request = (domain: string, value: string): Buffer =>
  grpcFrame(create(RateLimitRequestSchema, { domain, descriptors: [{ entries: [{ key: 'k', value }] }] }));

describe.each([
  ['our gRPC port', () => ours.port],
  ['a grpc-js server', () => theirsPort],
])('FrameConnection against %s', (_name, port) => {
  it('carries many calls in flight, each with its own body, and reads each answer', async () => {
    const c = new FrameConnection('127.0.0.1', port(), SERVICE_PATH, 200 * 64);
    try {
      const bodies = Array.from({ length: 300 }, (_, i) => request('ok', `v${i}`));
      const from = seen.length;
      const results = await Promise.all(bodies.map((b) => call(c, b)));
      expect(results.every((r) => r.err === null && !r.overLimit)).toBe(true);
      expect(new Set(seen.slice(from)).size).toBe(300);
      expect(await call(c, request('limited', 'x'))).toEqual({ err: null, overLimit: true });
      expect(await call(c, request('bad', 'x'))).toEqual({ err: 'grpc-status 3', overLimit: false });
    } finally {
      c.close();
    }
  });
});

it('refuses more bytes in flight than the server’s initial window lets through', () => {
  expect(() => new FrameConnection('127.0.0.1', 1, SERVICE_PATH, 70_000)).toThrow(/flow control/);
});

it('fails its calls when the connection cannot be made', async () => {
  const c = new FrameConnection('127.0.0.1', 1, SERVICE_PATH, 100);
  const r = await call(c, grpcFrame(buildRequests({ kind: 'generic' })[0]!));
  expect(r.err).toMatch(/ECONNREFUSED|closed/);
});
