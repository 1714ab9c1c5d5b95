/**
 * The load generator, run in its own process (forked by run.ts): closed loop (`concurrency` calls in
 * flight) or paced (`rate` calls/s), over `connections` HTTP/2 connections, for `durationS` after a
 * `warmupS` warm-up. Tells the parent over IPC when the measured window opens and closes, so the parent
 * samples server CPU and Redis counters over exactly that window, then sends its result.
 */
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import { ConnectError, createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import * as grpc from '@grpc/grpc-js';
import { Redis } from 'ioredis';
import {
  type RateLimitRequest,
  RateLimitRequestSchema,
  RateLimitResponse_Code,
  RateLimitResponseSchema,
  RateLimitService,
} from '../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { type Done, FrameConnection } from './h2frames.js';
import { buildRequests, grpcFrame, type RequestShape, SERVICE_PATH } from './requests.js';
import { Latencies, type LatencySummary } from './stats.js';

export interface LoadSpec {
  /**
   * grpc (grpc-js) and frames (pre-encoded HTTP/2 frames, h2frames.ts): host:port; connect: base URL;
   * redis: redis URL (calls `command` as is).
   */
  target: 'grpc' | 'frames' | 'connect' | 'redis';
  address: string;
  connections: number;
  concurrency: number;
  warmupS: number;
  durationS: number;
  /** Paced mode: total calls/s (in flight capped at `concurrency`). Closed loop when absent. */
  rate?: number;
  shape?: RequestShape;
  command?: string[];
}

export interface LoadResult {
  /** Answered calls completed inside the window (OK and OVER_LIMIT). */
  decisions: number;
  overLimit: number;
  errors: Record<string, number>;
  elapsedS: number;
  rate: number;
  latency: LatencySummary;
  /** Client CPU over the window, ms, and as a share of one core. */
  clientCpuMs: number;
  clientCpuShare: number;
}

export type LoadMessage =
  | { type: 'started' }
  | { type: 'measuring' }
  | { type: 'measured' }
  | { type: 'result'; result: LoadResult };

type Call = (seq: number, worker: number, done: Done) => void;

const grpcCaller = (spec: LoadSpec, reqs: RateLimitRequest[]): { call: Call; close: () => void } => {
  const clients = Array.from(
    { length: spec.connections },
    () =>
      new grpc.Client(spec.address, grpc.credentials.createInsecure(), {
        // One subchannel (one HTTP/2 connection) per client instead of a shared one.
        'grpc.use_local_subchannel_pool': 1,
      }),
  );
  // Requests are fixed: encode each once, as a real client's serializer would be cheap next to the server.
  const encoded = new Map<RateLimitRequest, Buffer>();
  const serialize = (m: RateLimitRequest): Buffer => {
    let b = encoded.get(m);
    if (!b) {
      b = Buffer.from(toBinary(RateLimitRequestSchema, m));
      encoded.set(m, b);
    }
    return b;
  };
  const deserialize = (b: Buffer) => fromBinary(RateLimitResponseSchema, b);
  const call: Call = (seq, worker, done) => {
    const client = clients[worker % clients.length] as grpc.Client;
    client.makeUnaryRequest(
      SERVICE_PATH,
      serialize,
      deserialize,
      reqs[seq % reqs.length] as RateLimitRequest,
      (err, res) => {
        if (err) done(grpc.status[err.code] ?? String(err.code), false);
        else done(null, res?.overallCode === RateLimitResponse_Code.OVER_LIMIT);
      },
    );
  };
  return {
    call,
    close: () => {
      for (const c of clients) c.close();
    },
  };
};

const frameCaller = (spec: LoadSpec, reqs: RateLimitRequest[]): { call: Call; close: () => void } => {
  const messages = reqs.map(grpcFrame);
  const largest = Math.max(...messages.map((m) => m.length));
  const at = spec.address.lastIndexOf(':');
  const host = spec.address.slice(0, at);
  const port = Number(spec.address.slice(at + 1));
  const perConnection = Math.ceil(spec.concurrency / spec.connections);
  const conns = Array.from(
    { length: spec.connections },
    () => new FrameConnection(host, port, SERVICE_PATH, perConnection * largest),
  );
  const call: Call = (seq, worker, done) =>
    conns[worker % conns.length]!.call(messages[seq % messages.length]!, done);
  return {
    call,
    close: () => {
      for (const c of conns) c.close();
    },
  };
};

const connectCaller = (spec: LoadSpec, reqs: RateLimitRequest[]): { call: Call; close: () => void } => {
  const clients = Array.from({ length: spec.connections }, () =>
    createClient(
      RateLimitService,
      createConnectTransport({ baseUrl: spec.address, httpVersion: '2', useBinaryFormat: true }),
    ),
  );
  const call: Call = (seq, worker, done) => {
    const client = clients[worker % clients.length];
    client?.shouldRateLimit(reqs[seq % reqs.length] as RateLimitRequest).then(
      (res) => done(null, res.overallCode === RateLimitResponse_Code.OVER_LIMIT),
      (err: unknown) => done(ConnectError.from(err).message, false),
    );
  };
  return { call, close: () => undefined };
};

const redisCaller = (spec: LoadSpec, _reqs: RateLimitRequest[]): { call: Call; close: () => void } => {
  const [name, ...args] = spec.command ?? [];
  if (!name) throw new Error('redis target needs a command');
  // The same client options that matter to the RedisStore's round trips: one connection, auto-pipelined.
  const redis = new Redis(spec.address, { enableAutoPipelining: true });
  redis.on('error', () => undefined);
  // MONITOR shows bytes, read back one char per byte: sent as those bytes (decide's numbers are binary).
  const argv = args.map((a) => Buffer.from(a, 'latin1'));
  const call: Call = (_seq, _worker, done) => {
    redis.call(name, ...argv).then(
      () => done(null, false),
      (err: Error) => done(err.message.slice(0, 60), false),
    );
  };
  return { call, close: () => redis.disconnect() };
};

const send = (m: LoadMessage) => process.send?.(m);

export const runLoad = async (spec: LoadSpec): Promise<LoadResult> => {
  const reqs = spec.shape ? buildRequests(spec.shape) : [];
  const callers = { grpc: grpcCaller, frames: frameCaller, connect: connectCaller, redis: redisCaller };
  const { call, close } = callers[spec.target](spec, reqs);

  const lat = new Latencies();
  const errors: Record<string, number> = {};
  let decisions = 0;
  let overLimit = 0;
  let seq = 0;
  let inflight = 0;
  let stopped = false;
  const t0 = performance.now();
  send({ type: 'started' });
  // The window opens when the warm-up timer fires (not when it was due), so counts and CPU agree.
  let ws = Number.POSITIVE_INFINITY;
  let we = Number.POSITIVE_INFINITY;
  let cpu0 = process.cpuUsage();

  let drained: () => void = () => undefined;
  const issue = (worker: number, closed: boolean) => {
    const start = performance.now();
    inflight++;
    call(seq++, worker, (err, over) => {
      inflight--;
      const end = performance.now();
      if (end >= ws && end <= we) {
        if (err) errors[err] = (errors[err] ?? 0) + 1;
        else {
          decisions++;
          if (over) overLimit++;
          lat.add((end - start) * 1000);
        }
      }
      if (closed && !stopped) issue(worker, true);
      else if (stopped && inflight === 0) drained();
    });
  };

  const windows = new Promise<void>((resolve) => {
    setTimeout(() => {
      ws = performance.now();
      we = ws + spec.durationS * 1000;
      cpu0 = process.cpuUsage();
      send({ type: 'measuring' });
      setTimeout(resolve, spec.durationS * 1000);
    }, spec.warmupS * 1000);
  });

  let pacer: NodeJS.Timeout | undefined;
  if (spec.rate) {
    const rate = spec.rate;
    let issued = 0;
    pacer = setInterval(() => {
      const due = Math.floor(((performance.now() - t0) / 1000) * rate) - issued;
      for (let i = 0; i < due && inflight < spec.concurrency; i++) issue(issued++, false);
    }, 1);
  } else {
    for (let w = 0; w < spec.concurrency; w++) issue(w, true);
  }

  await windows;
  const cpu = process.cpuUsage(cpu0);
  const elapsed = Math.min(performance.now(), we) - ws;
  send({ type: 'measured' });
  stopped = true;
  if (pacer) clearInterval(pacer);
  if (inflight > 0) await Promise.race([new Promise<void>((r) => (drained = r)), sleep(5000)]);
  close();
  const clientCpuMs = (cpu.user + cpu.system) / 1000;
  return {
    decisions,
    overLimit,
    errors,
    elapsedS: elapsed / 1000,
    rate: decisions / (elapsed / 1000),
    latency: lat.summary(),
    clientCpuMs,
    clientCpuShare: clientCpuMs / elapsed,
  };
};

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

// Entry when forked: the spec is the first argument.
if (process.send && process.argv[2]) {
  const spec = JSON.parse(process.argv[2]) as LoadSpec;
  runLoad(spec).then(
    (result) => {
      send({ type: 'result', result });
      process.disconnect?.();
      setTimeout(() => process.exit(0), 100).unref();
    },
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
