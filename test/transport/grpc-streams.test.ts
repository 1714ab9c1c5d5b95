/**
 * detachOnClose: a finished call's closed HTTP/2 stream keeps no grpc-js listeners (and through
 * them the call's objects), on the real grpc-js server over a socket.
 */
import { setImmediate as turn } from 'node:timers/promises';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { RateLimitResponse_Code, RateLimitService } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { grpcServiceDefinition, SERVER_OPTIONS } from '../../src/transport/grpc.js';
import { type GrpcError, grpcClient } from '../harness/clients.js';

interface Stream {
  closed: boolean;
  eventNames(): (string | symbol)[];
}

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

/** A server with the given interceptors plus one that records each call's HTTP/2 stream. */
const serve = async (interceptors: grpc.ServerInterceptor[]) => {
  const streams: Stream[] = [];
  const record: grpc.ServerInterceptor = (_m, call) => {
    streams.push((call as unknown as { stream: Stream }).stream);
    return call as grpc.ServerInterceptingCall;
  };
  const server = new grpc.Server({ ...SERVER_OPTIONS, interceptors: [...interceptors, record] });
  const held: (() => void)[] = [];
  server.addService(grpcServiceDefinition(RateLimitService), {
    // Domain "hold" never answers: the client's deadline ends the call.
    shouldRateLimit: (
      call: grpc.ServerUnaryCall<{ domain: string }, unknown>,
      cb: grpc.sendUnaryData<unknown>,
    ) => {
      if (call.request.domain === 'hold') held.push(() => cb(null, { overallCode: 1 }));
      else cb(null, { overallCode: RateLimitResponse_Code.OK });
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  const client = grpcClient(RateLimitService, `127.0.0.1:${port}`);
  cleanup.push(
    () => server.forceShutdown(),
    () => client.close(),
  );
  return { client, streams, held };
};

/** Resolves once every recorded stream has closed and its close listeners have run. */
const allClosed = async (streams: Stream[]): Promise<void> => {
  while (streams.some((s) => !s.closed)) await turn();
  await turn();
};

describe('detachOnClose', () => {
  it('leaves a finished call’s closed stream with only an error listener', async () => {
    const { client, streams } = await serve(SERVER_OPTIONS.interceptors);
    for (let i = 0; i < 3; i++) {
      const res = await client.shouldRateLimit({ domain: 'd' });
      expect(res.overallCode).toBe(RateLimitResponse_Code.OK);
    }
    await allClosed(streams);
    expect(streams).toHaveLength(3);
    for (const s of streams) expect(s.eventNames()).toEqual(['error']);
  });

  it('without it, grpc-js leaves its listeners on the closed stream', async () => {
    const { client, streams } = await serve([]);
    await client.shouldRateLimit({ domain: 'd' });
    await allClosed(streams);
    expect(streams[0]!.eventNames()).toEqual(expect.arrayContaining(['data', 'end']));
  });

  it('detaches a call the client gave up on, and the server goes on serving', async () => {
    const { client, streams, held } = await serve(SERVER_OPTIONS.interceptors);
    const err = (await client
      .shouldRateLimit({ domain: 'hold' }, { deadlineMs: 50 })
      .catch((e: unknown) => e)) as GrpcError;
    expect(err.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    await allClosed(streams);
    expect(streams[0]!.eventNames()).toEqual(['error']);
    // The handler answering after the stream closed is a no-op, not a crash.
    for (const answer of held) answer();
    const res = await client.shouldRateLimit({ domain: 'd' });
    expect(res.overallCode).toBe(RateLimitResponse_Code.OK);
  });
});
