/**
 * `npm run bench [-- --duration 10 --concurrency 64 --scenarios a,b,c,d,e,f]`: starts the real server
 * (child process), its own redis-server and the ceilings, drives each scenario from separate load
 * generator processes (grpc-js / connect-node, and h2load when installed), and prints throughput,
 * latency, server CPU per 1,000 decisions, peak RSS and Redis calls per decision, with ratios to the
 * ceilings. Writes the figures as JSON to bench/results/<timestamp>.json.
 */
import { fork } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import {
  type RateLimitRequest,
  RateLimitRequestSchema,
  RateLimitResponse_Code,
  RateLimitResponseSchema,
} from '../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { imageNodeOptions, writeBenchConfig } from './config.js';
import { h2loadAvailable, runH2load, STAGGER_MAX_RPS } from './h2load.js';
import type { LoadMessage, LoadResult, LoadSpec } from './loadgen.js';
import {
  type Child,
  cpuMs,
  freePort,
  machineJiffies,
  peakRssMb,
  sibling,
  startChild,
  waitFor,
} from './proc.js';
import { formatProfile, type ProfileSummary, profilesIn, summarizeProfile } from './profile.js';
import {
  type BenchRedis,
  type CommandStat,
  clientCalls,
  commandStats,
  decisionsPerCall,
  diffStats,
  type MonitorSample,
  redisBenchmark,
  sampleMonitor,
  startRedis,
} from './redis.js';
import { formatTable } from './report.js';
import { buildRequests, grpcFrame, type RequestShape, SERVICE_PATH } from './requests.js';
import { type ServerCounters, scrapeServer } from './server-metrics.js';
import type { LatencySummary } from './stats.js';

export interface Options {
  durationS: number;
  warmupS: number;
  concurrency: number;
  connections: number;
  scenarios: string[];
  h2load: boolean;
  paced: boolean;
  profile: boolean;
  keys: number;
  tokens: number;
  /** Extra Node/V8 flags for the server and the empty ceiling alike (e.g. --max-semi-space-size=4). */
  serverNodeOptions: string[];
  out: string;
}

const USAGE = `npm run bench -- [options]   (each option also as env BENCH_<NAME>)
  --duration S       measured seconds per pass (default 10)
  --warmup S         warm-up seconds before each pass (default 2)
  --concurrency N    calls in flight (default 64)
  --connections N    HTTP/2 connections per load generator (default 2)
  --scenarios LIST   a,b,c,d,e,f (default all; ceilings run as needed)
  --keys N           distinct API keys in scenario d (default 10000)
  --tokens N         tokens per inference request (default 512)
  --no-h2load        skip the h2load passes
  --no-paced         skip the paced pass at 50% of peak
  --profile          run the server under --cpu-prof and summarize the hot path
  --server-node-options "FLAGS"
                     Node/V8 flags for the server and the empty ceiling, for a fair ratio (default: the
                     image's, deploy/Dockerfile ENV NODE_OPTIONS; "" for Node's defaults)
  --out DIR          where the JSON goes (default bench/results)
`;

export const parseOptions = (argv: string[], env: NodeJS.ProcessEnv = process.env): Options => {
  const { values } = parseArgs({
    args: argv,
    options: {
      duration: { type: 'string' },
      warmup: { type: 'string' },
      concurrency: { type: 'string' },
      connections: { type: 'string' },
      scenarios: { type: 'string' },
      keys: { type: 'string' },
      tokens: { type: 'string' },
      'no-h2load': { type: 'boolean' },
      'no-paced': { type: 'boolean' },
      profile: { type: 'boolean' },
      'server-node-options': { type: 'string' },
      out: { type: 'string' },
      help: { type: 'boolean' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const num = (name: string, v: string | undefined, fallback: number): number => {
    const raw = v ?? env[`BENCH_${name.toUpperCase()}`];
    if (raw === undefined || raw === '') return fallback;
    const n = Number(raw);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name}: expected a positive number, got "${raw}"`);
    return n;
  };
  const flag = (name: string, v: boolean | undefined): boolean =>
    v === true || ['1', 'true', 'yes'].includes(env[`BENCH_${name.toUpperCase().replace('-', '_')}`] ?? '');
  const scenarios = (values.scenarios ?? env.BENCH_SCENARIOS ?? Object.keys(SCENARIOS).join(','))
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const s of scenarios)
    if (!SCENARIOS[s])
      throw new Error(`--scenarios: unknown scenario "${s}" (${Object.keys(SCENARIOS).join(', ')})`);
  return {
    durationS: num('duration', values.duration, 10),
    warmupS: num('warmup', values.warmup, 2),
    concurrency: Math.round(num('concurrency', values.concurrency, 64)),
    connections: Math.round(num('connections', values.connections, 2)),
    scenarios,
    h2load: !flag('no-h2load', values['no-h2load']),
    paced: !flag('no-paced', values['no-paced']),
    profile: flag('profile', values.profile),
    keys: Math.round(num('keys', values.keys, 10_000)),
    tokens: Math.round(num('tokens', values.tokens, 512)),
    serverNodeOptions: (
      values['server-node-options'] ??
      env.BENCH_SERVER_NODE_OPTIONS ??
      imageNodeOptions().join(' ')
    )
      .split(/\s+/)
      .filter(Boolean),
    out: values.out ?? env.BENCH_OUT ?? 'bench/results',
  };
};

interface Scenario {
  title: string;
  store: 'memory' | 'redis';
  port: 'grpc' | 'http';
  shape(o: Options): RequestShape;
  /** Replay its Redis script alone for the script ceiling. */
  scriptCeiling?: boolean;
}

const SCENARIOS: Record<string, Scenario> = {
  a: {
    title: 'generic, 1 descriptor, memory, gRPC',
    store: 'memory',
    port: 'grpc',
    shape: () => ({ kind: 'generic' }),
  },
  b: {
    title: 'generic, 1 descriptor, Redis, gRPC',
    store: 'redis',
    port: 'grpc',
    shape: () => ({ kind: 'generic' }),
    scriptCeiling: true,
  },
  c: {
    title: 'inference, key + key×model + tokens, Redis',
    store: 'redis',
    port: 'grpc',
    shape: (o) => ({ kind: 'inference', keys: 1, tokens: o.tokens }),
    scriptCeiling: true,
  },
  d: {
    title: 'inference (c) over N distinct keys, Redis',
    store: 'redis',
    port: 'grpc',
    shape: (o) => ({ kind: 'inference', keys: o.keys, tokens: o.tokens }),
  },
  e: {
    title: 'generic (a) on the Connect/HTTP port',
    store: 'memory',
    port: 'http',
    shape: () => ({ kind: 'generic' }),
  },
  f: {
    title: 'inference (c) on the embedded store',
    store: 'memory',
    port: 'grpc',
    shape: (o) => ({ kind: 'inference', keys: 1, tokens: o.tokens }),
  },
};

export type Driver = 'grpc-js' | 'connect-node' | 'h2load' | 'h2frames' | 'ioredis' | 'redis-benchmark';

/**
 * peak: closed loop at --concurrency; paced: open loop at half of peak; half: closed loop with the
 * fewest calls in flight that reach half of peak (latency at half load without the pacer's bursts).
 */
export type Mode = 'peak' | 'paced' | 'half';

export interface Pass {
  scenario: string;
  title: string;
  driver: Driver;
  mode: Mode;
  /** Paced passes: the rate asked for. */
  targetRate?: number;
  /** Half-load passes: calls kept in flight, over this many HTTP/2 connections. */
  inFlight?: number;
  connections?: number;
  rate: number;
  decisions: number;
  overLimit: number;
  errors: Record<string, number>;
  latency: LatencySummary;
  serverCpuShare?: number;
  serverCpuMsPer1k?: number;
  /** The real server's GC pauses (every kind), ms per 1,000 decisions: from its own metrics. */
  gcMsPer1k?: number;
  clientCpuShare?: number;
  redisCpuShare?: number;
  redisCallsPerDecision?: number;
  redisCommandsPerDecision?: number;
  /** Script calls (EVAL/EVALSHA/FCALL) per decision: the decision path's round trips. */
  redisScriptsPerDecision?: number;
  /** Redis time per decision (commandstats usec of the calls clients sent; scripts include their commands). */
  redisUsPerDecision?: number;
  redisCommands?: Record<string, number>;
  redisCommandsUsec?: Record<string, number>;
  /** Script ceilings: the replayed command line. */
  command?: string[];
  /** CPU (in cores) used by processes outside this benchmark during the window. */
  othersCores?: number;
  peakRssMb?: number;
  /**
   * h2load peak passes of a scenario: the empty server's h2load peak right before and right after it
   * (the machine's speed drifts by tens of percent within minutes); vsEmpty uses their mean.
   */
  emptyNearby?: number[];
  vsEmpty?: number;
  /** h2load peak passes: against the empty server on our HTTP/2 layer (mean of its passes before and after the scenarios). */
  vsH2?: number;
  vsScript?: number;
  limitedBy: string;
}

interface Target {
  pid: number;
  /** Prometheus endpoint of the real server. */
  metrics?: string;
  /** The probe request met a configured limit. */
  limited: boolean;
  grpc: string;
  http?: string;
  stop(): Promise<void>;
  child: Child;
}

interface Window {
  serverCpu: number;
  redisCpu: number;
  jiffies: { total: number; idle: number };
  at: number;
  stats?: Promise<Map<string, CommandStat>>;
  scrape?: Promise<ServerCounters>;
}

const NO_SCRAPE: ServerCounters = { failures: Number.NaN, gcSeconds: Number.NaN };

const NCPU = cpus().length;

const snapshot = (target: Target | undefined, redis: BenchRedis | undefined): Window => ({
  serverCpu: target ? cpuMs(target.pid) : 0,
  redisCpu: redis?.child.proc.pid ? cpuMs(redis.child.proc.pid) : 0,
  jiffies: machineJiffies(),
  at: performance.now(),
  ...(redis ? { stats: commandStats(redis.admin) } : {}),
  ...(target?.metrics ? { scrape: scrapeServer(target.metrics).catch(() => NO_SCRAPE) } : {}),
});

interface Measured {
  ms: number;
  serverCpuMs: number;
  redisCpuMs: number;
  othersCores: number;
  commands?: { calls: Record<string, number>; usec: Record<string, number> };
  failures?: number;
  gcMs?: number;
}

const measure = async (w0: Window, w1: Window, ownCpuMs: number): Promise<Measured> => {
  const ms = w1.at - w0.at;
  const serverCpuMs = w1.serverCpu - w0.serverCpu;
  const redisCpuMs = w1.redisCpu - w0.redisCpu;
  const dt = w1.jiffies.total - w0.jiffies.total;
  const busyCores = dt > 0 ? ((dt - (w1.jiffies.idle - w0.jiffies.idle)) / dt) * NCPU : 0;
  const ours = (serverCpuMs + redisCpuMs + ownCpuMs) / ms;
  const result: Measured = { ms, serverCpuMs, redisCpuMs, othersCores: Math.max(0, busyCores - ours) };
  if (w0.stats && w1.stats) result.commands = diffStats(await w0.stats, await w1.stats);
  if (w0.scrape && w1.scrape) {
    const [a, b] = [await w0.scrape, await w1.scrape];
    result.failures = b.failures - a.failures;
    result.gcMs = (b.gcSeconds - a.gcSeconds) * 1000;
  }
  return result;
};

const SCRIPT_COMMANDS = new Set(['eval', 'evalsha', 'eval_ro', 'evalsha_ro', 'fcall', 'fcall_ro']);

/** Which side ran out first: the busiest of client, server and Redis CPU, or the shared machine. */
const verdict = (
  client: number | undefined,
  server: number | undefined,
  redis: number | undefined,
  others: number,
): string => {
  const sides: [string, number][] = [
    ['client CPU', client ?? 0],
    ['server CPU', server ?? 0],
    ['Redis CPU', redis ?? 0],
  ];
  sides.sort((a, b) => b[1] - a[1]);
  const [name, share] = sides[0] as [string, number];
  const used = sides.reduce((s, x) => s + x[1], 0) + others;
  if (share >= 0.85) return `${name} (${Math.round(share * 100)}%)`;
  if (used >= NCPU * 0.9) return `machine (${used.toFixed(1)}/${NCPU} cores busy)`;
  return `nothing saturated (busiest: ${name} ${Math.round(share * 100)}%)`;
};

const runLoadgen = (spec: LoadSpec, onWindow: (phase: 'started' | 'measuring' | 'measured') => void) =>
  new Promise<LoadResult>((resolvePromise, reject) => {
    const child = fork(sibling(import.meta.url, './loadgen'), [JSON.stringify(spec)], {
      execArgv: process.execArgv,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    let result: LoadResult | undefined;
    child.on('message', (m: LoadMessage) => {
      if (m.type === 'result') result = m.result;
      else onWindow(m.type);
    });
    child.on('exit', (code) =>
      result ? resolvePromise(result) : reject(new Error(`load generator exited with ${code} and no result`)),
    );
  });

/**
 * Calls the target once with the scenario's first request: `err` says what went wrong; `limited`
 * whether any limit applied (a scenario answered by no limit at all measures nothing).
 */
const probe = (address: string, req: RateLimitRequest): Promise<{ err?: string; limited: boolean }> =>
  new Promise((done) => {
    const client = new grpc.Client(address, grpc.credentials.createInsecure());
    client.makeUnaryRequest(
      SERVICE_PATH,
      (m: RateLimitRequest) => Buffer.from(toBinary(RateLimitRequestSchema, m)),
      (b: Buffer) => fromBinary(RateLimitResponseSchema, b),
      req,
      new grpc.Metadata(),
      { deadline: Date.now() + 2000 },
      (err, res) => {
        client.close();
        const limited = (res?.statuses ?? []).some((st) => st.currentLimit !== undefined);
        if (err) done({ err: `${grpc.status[err.code]}: ${err.details}`, limited });
        else if (res?.overallCode !== RateLimitResponse_Code.OK)
          done({ err: `overall_code ${RateLimitResponse_Code[res?.overallCode ?? 0]}`, limited });
        else done({ limited });
      },
    );
  });

const waitReady = async (child: Child, address: string, req: RateLimitRequest): Promise<boolean> => {
  await waitFor(`server at ${address}`, 20_000, async () => {
    if (child.proc.exitCode !== null)
      throw new Error(`server exited ${child.proc.exitCode}:\n${child.output()}`);
    const { err } = await probe(address, req);
    return err === undefined || !err.startsWith('UNAVAILABLE');
  }).catch((err: Error) => {
    throw new Error(`${err.message}\n${child.output()}`);
  });
  const { err, limited } = await probe(address, req);
  if (err)
    throw new Error(
      `the server answers the bench request with ${err}: check the bench config\n${child.output()}`,
    );
  return limited;
};

const startRatekeeper = async (
  nodeOptions: string[],
  configDir: string,
  req: RateLimitRequest,
  redis: BenchRedis | undefined,
  profileDir: string | undefined,
): Promise<Target> => {
  const [port, httpPort, metricsPort] = [await freePort(), await freePort(), await freePort()];
  const args = [
    ...process.execArgv,
    ...nodeOptions,
    ...(profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : []),
    sibling(import.meta.url, '../src/cli'),
    'serve',
    '--config',
    configDir,
    '--host',
    '127.0.0.1',
    '--port',
    String(port),
    '--http-port',
    String(httpPort),
    '--metrics-port',
    String(metricsPort),
    '--log-level',
    'warn',
    ...(redis ? ['--redis-url', redis.url] : []),
  ];
  const child = startChild(process.execPath, args);
  const grpcAddr = `127.0.0.1:${port}`;
  const limited = await waitReady(child, grpcAddr, req);
  return {
    pid: child.proc.pid ?? 0,
    metrics: `http://127.0.0.1:${metricsPort}/metrics`,
    limited,
    grpc: grpcAddr,
    http: `http://127.0.0.1:${httpPort}`,
    child,
    stop: () => child.stop('SIGTERM', 15_000),
  };
};

/** An empty ceiling: `./empty-server` (grpc-js) or `./empty-h2-server` (our HTTP/2 layer). */
const startEmpty = async (nodeOptions: string[], req: RateLimitRequest, script: string): Promise<Target> => {
  const port = await freePort();
  const child = startChild(process.execPath, [
    ...process.execArgv,
    ...nodeOptions,
    sibling(import.meta.url, script),
    String(port),
  ]);
  const grpcAddr = `127.0.0.1:${port}`;
  await waitReady(child, grpcAddr, req);
  return { pid: child.proc.pid ?? 0, limited: false, grpc: grpcAddr, child, stop: () => child.stop() };
};

interface Ctx {
  o: Options;
  dir: string;
  passes: Pass[];
  notes: string[];
  h2load: boolean;
  /** The empty server, up for the whole run (idle between its passes). */
  empty: Target;
  /** The empty server on our HTTP/2 layer, when h2load runs (only h2load drives it). */
  emptyH2?: Target;
}

/** What the empty server is driven with (it answers any request with the same constant OK). */
const EMPTY_SHAPE: RequestShape = { kind: 'generic' };
const EMPTY_REQ = buildRequests(EMPTY_SHAPE)[0] as RateLimitRequest;

const log = (s: string) => process.stderr.write(`${s}\n`);

/**
 * How the Node load generator drives a pass: closed loop at --concurrency (peak), paced at `rate`, or
 * closed loop with `inFlight` calls (half); with grpc-js (connect-node on the HTTP port) or, with
 * `frames`, pre-encoded HTTP/2 frames (h2frames.ts).
 */
interface NodeLoad {
  rate?: number;
  inFlight?: number;
  frames?: boolean;
  monitor?: (s: MonitorSample) => void;
  sample?: MonitorSample;
}

/** One pass from the Node load generator, with the server and Redis sampled over its window. */
const nodePass = async (
  ctx: Ctx,
  id: string,
  title: string,
  target: Target,
  redis: BenchRedis | undefined,
  shape: RequestShape,
  via: 'grpc' | 'http',
  load: NodeLoad = {},
): Promise<Pass> => {
  const { o } = ctx;
  const { rate, inFlight, frames, monitor, sample } = load;
  let w0: Window | undefined;
  let w1: Window | undefined;
  let monitorDone: Promise<void> = Promise.resolve();
  let seen = sample;
  const startMonitor = () => {
    if (!monitor || !redis) return;
    // A MONITOR sample in the middle of the warm-up tells script-internal commands from round trips.
    const at = o.warmupS * 250;
    const len = Math.min(500, o.warmupS * 400);
    monitorDone = new Promise((r) =>
      setTimeout(() => {
        sampleMonitor(redis.port, len)
          .then(
            (m) => {
              seen = m;
              monitor(m);
            },
            (err: Error) => ctx.notes.push(`(${id}): MONITOR sample failed: ${err.message}`),
          )
          .finally(r);
      }, at),
    );
  };
  const spec: LoadSpec = {
    target: via === 'http' ? 'connect' : frames ? 'frames' : 'grpc',
    address: via === 'grpc' ? target.grpc : (target.http ?? ''),
    connections: o.connections,
    concurrency: inFlight ?? (rate ? o.concurrency * 4 : o.concurrency),
    warmupS: o.warmupS,
    durationS: o.durationS,
    shape,
    ...(rate ? { rate } : {}),
  };
  const r = await runLoadgen(spec, (phase) => {
    if (phase === 'started') startMonitor();
    else if (phase === 'measuring') w0 = snapshot(target, redis);
    else w1 = snapshot(target, redis);
  });
  await monitorDone;
  if (!w0 || !w1) throw new Error('the load generator never reported its window');
  const m = await measure(w0, w1, r.clientCpuMs);
  return finishPass(ctx, {
    id,
    title,
    driver: via === 'http' ? 'connect-node' : frames ? 'h2frames' : 'grpc-js',
    mode: inFlight ? 'half' : rate ? 'paced' : 'peak',
    ...(rate ? { targetRate: rate } : {}),
    ...(inFlight ? { inFlight, connections: o.connections } : {}),
    result: { ...r },
    m,
    target,
    redis,
    ...(seen ? { sample: seen } : {}),
  });
};

const finishPass = (
  _ctx: Ctx,
  p: {
    id: string;
    title: string;
    driver: Driver;
    mode: Mode;
    targetRate?: number;
    inFlight?: number;
    connections?: number;
    result: {
      decisions: number;
      overLimit?: number;
      errors?: Record<string, number>;
      rate: number;
      latency: LatencySummary;
      clientCpuShare: number;
    };
    m: Measured;
    target: Target | undefined;
    redis: BenchRedis | undefined;
    sample?: MonitorSample;
    serverIsRedis?: boolean;
  },
): Pass => {
  const { result: r, m } = p;
  const serverCpuMs = p.serverIsRedis ? m.redisCpuMs : m.serverCpuMs;
  const serverCpuShare = serverCpuMs / m.ms;
  // The sampled window and the generator's differ by the IPC / timer delay: per-decision figures use
  // the generator's rate over the sampled window's length.
  const inWindow = (r.rate * m.ms) / 1000;
  const redisCpuShare = p.redis ? m.redisCpuMs / m.ms : undefined;
  const pass: Pass = {
    scenario: p.id,
    title: p.title,
    driver: p.driver,
    mode: p.mode,
    ...(p.targetRate ? { targetRate: Math.round(p.targetRate) } : {}),
    ...(p.inFlight ? { inFlight: p.inFlight, connections: p.connections } : {}),
    rate: r.rate,
    decisions: r.decisions,
    overLimit: r.overLimit ?? 0,
    errors: {
      ...(r.errors ?? {}),
      ...(m.failures ? { 'store/rpc failures': m.failures } : {}),
    },
    latency: r.latency,
    serverCpuShare,
    serverCpuMsPer1k: inWindow > 0 ? (serverCpuMs * 1000) / inWindow : Number.NaN,
    ...(m.gcMs !== undefined && inWindow > 0 ? { gcMsPer1k: (m.gcMs * 1000) / inWindow } : {}),
    clientCpuShare: r.clientCpuShare,
    ...(redisCpuShare !== undefined ? { redisCpuShare } : {}),
    othersCores: m.othersCores,
    ...(p.target && !p.serverIsRedis ? { peakRssMb: peakRssMb(p.target.pid) } : {}),
    limitedBy: verdict(
      r.clientCpuShare,
      p.serverIsRedis ? undefined : serverCpuShare,
      redisCpuShare,
      m.othersCores,
    ),
  };
  if (m.commands && inWindow > 0) {
    const total = Object.values(m.commands.calls).reduce((s, x) => s + x, 0);
    pass.redisCommands = m.commands.calls;
    pass.redisCommandsUsec = m.commands.usec;
    pass.redisUsPerDecision = clientCalls(m.commands.usec, p.sample) / inWindow;
    pass.redisCommandsPerDecision = total / inWindow;
    pass.redisCallsPerDecision = clientCalls(m.commands.calls, p.sample) / inWindow;
    pass.redisScriptsPerDecision =
      Object.entries(m.commands.calls)
        .filter(([name]) => SCRIPT_COMMANDS.has(name))
        .reduce((n, [, c]) => n + c, 0) / inWindow;
  }
  log(
    `  ${p.id} ${p.driver} ${p.mode}: ${Math.round(r.rate)}/s p99 ${r.latency.p99.toFixed(2)} ms, server ${Math.round(serverCpuShare * 100)}%, client ${Math.round(r.clientCpuShare * 100)}%${
      Object.keys(pass.errors).length ? ` errors ${JSON.stringify(pass.errors)}` : ''
    }`,
  );
  return pass;
};

/** How h2load drives a pass: peak (closed loop), paced (--rps, open loop) or half (few streams, closed). */
type H2Load = { mode: 'peak' } | { mode: 'paced'; rate: number } | { mode: 'half'; streams: number };

/** h2load posting the scenario's first request as a fixed body. */
const h2Pass = async (
  ctx: Ctx,
  id: string,
  title: string,
  target: Target,
  redis: BenchRedis | undefined,
  req: RateLimitRequest,
  via: 'grpc' | 'http',
  load: H2Load,
  sample?: MonitorSample,
): Promise<Pass> => {
  const { o } = ctx;
  let w0: Window | undefined;
  let w1: Window | undefined;
  const shape = h2Shape(o, load);
  const r = await runH2load({
    ...h2Target(target, req, via),
    ...shape,
    warmupS: o.warmupS,
    durationS: o.durationS,
    dir: ctx.dir,
    onWindow: (phase) => {
      if (phase === 'measuring') w0 = snapshot(target, redis);
      else w1 = snapshot(target, redis);
    },
  });
  if (!w0 || !w1) throw new Error('h2load window was not sampled');
  const m = await measure(w0, w1, r.clientCpuMs);
  return finishPass(ctx, {
    id,
    title,
    driver: 'h2load',
    mode: load.mode,
    ...(load.mode === 'paced' ? { targetRate: load.rate } : {}),
    ...(load.mode === 'half'
      ? { inFlight: load.streams * shape.connections, connections: shape.connections }
      : {}),
    result: { ...r, errors: r.failed ? { failed: r.failed } : {} },
    m,
    target,
    redis,
    ...(sample ? { sample } : {}),
  });
};

const h2Target = (target: Target, req: RateLimitRequest, via: 'grpc' | 'http') =>
  via === 'grpc'
    ? {
        url: `http://${target.grpc}${SERVICE_PATH}`,
        body: grpcFrame(req),
        headers: ['content-type: application/grpc', 'te: trailers'],
      }
    : {
        url: `${target.http}${SERVICE_PATH}`,
        body: toBinary(RateLimitRequestSchema, req),
        headers: ['content-type: application/proto', 'connect-protocol-version: 1'],
      };

const h2Shape = (o: Options, load: H2Load) => {
  if (load.mode === 'half') return { connections: Math.max(1, o.connections), streams: load.streams };
  if (load.mode === 'paced') {
    // Enough connections for at most STAGGER_MAX_RPS each: arrivals spread out (see runH2load).
    const connections = Math.max(o.connections, Math.ceil(load.rate / STAGGER_MAX_RPS));
    return {
      connections,
      streams: Math.max(1, Math.ceil((o.concurrency * 4) / connections)),
      rpsPerConnection: Math.max(1, Math.round(load.rate / connections)),
    };
  }
  const connections = Math.max(1, o.connections);
  return { connections, streams: Math.max(1, Math.ceil(o.concurrency / connections)) };
};

/**
 * Latency at half of peak, closed loop: the peak pass's connections (--connections) with the fewest streams
 * each (1, 2, 3, 4, 5, …) whose rate reaches half the scenario's peak, found with short probes. The same
 * shape as the peak at half its rate: on one connection the server's turn, Redis and the client take turns
 * instead of overlapping, and that loop alone tops out near half of (b)'s and (c)'s peaks, so its latency
 * there was mostly the loop's queue. Beside the open-loop pass (many connections, arrivals spread out):
 * requests that arrive together share the server's per-call costs (one read, one Redis call), so the two
 * bracket what a fleet of proxies would see.
 */
const halfLoadPass = async (
  ctx: Ctx,
  id: string,
  title: string,
  target: Target,
  redis: BenchRedis | undefined,
  req: RateLimitRequest,
  via: 'grpc' | 'http',
  sample?: MonitorSample,
): Promise<void> => {
  const streams = await halfLoadStreams(ctx, id, (s) =>
    runH2load({
      ...h2Target(target, req, via),
      ...h2Shape(ctx.o, { mode: 'half', streams: s }),
      warmupS: 1,
      durationS: 2,
      dir: ctx.dir,
    }),
  );
  if (streams === undefined) return;
  ctx.passes.push(await h2Pass(ctx, id, title, target, redis, req, via, { mode: 'half', streams }, sample));
};

/**
 * The fewest streams per connection whose 2-second probe reaches half the scenario's best peak, in steps
 * of about 1.25× (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 19, 24, 30, …): latency in a closed loop grows with the
 * calls in flight, so a coarse step measured up to 1.5× the load half of peak needs. Undefined without a peak.
 */
const halfLoadStreams = async (
  ctx: Ctx,
  id: string,
  probe: (streams: number) => Promise<{ rate: number }>,
): Promise<number | undefined> => {
  const half = peakOf(ctx.passes, id) / 2;
  if (half <= 0) return undefined;
  let streams = 1;
  const most = h2Shape(ctx.o, { mode: 'peak' }).streams;
  for (; streams < most; streams = Math.max(streams + 1, Math.round(streams * 1.25))) {
    if ((await probe(streams)).rate >= half) break;
  }
  return streams;
};

/**
 * halfLoadPass for shapes h2load cannot post (many distinct requests): the same search for the fewest
 * calls in flight on the peak's connections, driven by pre-encoded frames.
 */
const framesHalfPass = async (
  ctx: Ctx,
  id: string,
  title: string,
  target: Target,
  redis: BenchRedis | undefined,
  shape: RequestShape,
  sample?: MonitorSample,
): Promise<void> => {
  const { o } = ctx;
  const streams = await halfLoadStreams(ctx, id, (s) =>
    runLoadgen(
      {
        target: 'frames',
        address: target.grpc,
        connections: o.connections,
        concurrency: s * o.connections,
        warmupS: 1,
        durationS: 2,
        shape,
      },
      () => undefined,
    ),
  );
  if (streams === undefined) return;
  const inFlight = streams * o.connections;
  ctx.passes.push(
    await nodePass(ctx, id, title, target, redis, shape, 'grpc', { frames: true, inFlight, sample }),
  );
};

/** The script ceiling: the decision's own EVALSHA, replayed pipelined with no server in between. */
const scriptCeiling = async (
  ctx: Ctx,
  id: string,
  redis: BenchRedis,
  sample: MonitorSample,
  command: string[],
) => {
  const { o } = ctx;
  // Rates below are decisions/s: calls/s times the decisions the captured call carries.
  const per = decisionsPerCall(command);
  const title = `Redis script of (${id}) alone: ${command[0]} ${command.slice(1, 2).join(' ').slice(0, 12)}…, ${per} decision(s) per call`;
  let w0: Window | undefined;
  let w1: Window | undefined;
  const r = await runLoadgen(
    {
      target: 'redis',
      address: redis.url,
      connections: 1,
      concurrency: o.concurrency,
      warmupS: Math.min(1, o.warmupS),
      durationS: o.durationS,
      command,
    },
    (phase) => {
      if (phase === 'measuring') w0 = snapshot(undefined, redis);
      else if (phase === 'measured') w1 = snapshot(undefined, redis);
    },
  );
  if (w0 && w1) {
    const m = await measure(w0, w1, r.clientCpuMs);
    const pass = finishPass(ctx, {
      id: `script:${id}`,
      title,
      driver: 'ioredis',
      mode: 'peak',
      result: { ...r, rate: r.rate * per, decisions: r.decisions * per },
      m,
      target: undefined,
      redis,
      serverIsRedis: true,
      sample,
    });
    // Kept so the ceiling can be replayed by hand (redis-cli, redis-benchmark).
    pass.command = command;
    ctx.passes.push(pass);
  }
  if (command.some((a) => a.includes('\0'))) {
    ctx.notes.push(
      `(${id}): the script call has a binary argument (NUL bytes) that redis-benchmark's argv cannot carry: script ceiling from ioredis only`,
    );
    return;
  }
  // redis-benchmark counts requests, not time: about the measured duration at 1.5× the ioredis rate.
  const n = Math.max(20_000, Math.round(r.rate * 1.5 * o.durationS));
  const rb = await redisBenchmark(redis.port, command, n);
  if (!rb) {
    ctx.notes.push('redis-benchmark not found or failed: script ceiling from ioredis only');
    return;
  }
  log(`  script:${id} redis-benchmark: ${Math.round(rb.rate * per)}/s`);
  ctx.passes.push({
    scenario: `script:${id}`,
    title,
    driver: 'redis-benchmark',
    mode: 'peak',
    rate: rb.rate * per,
    decisions: 0,
    overLimit: 0,
    errors: {},
    latency: { p50: rb.p50, p99: rb.p99, p999: Number.NaN, max: Number.NaN, mean: Number.NaN },
    limitedBy: 'Redis (C client, 16 connections × pipeline 16)',
  });
};

const peakOf = (passes: Pass[], scenario: string): number =>
  Math.max(0, ...passes.filter((p) => p.scenario === scenario && p.mode === 'peak').map((p) => p.rate));

/**
 * Paced pass at half the scenario's best peak: h2load when it can carry the shape, else the Node
 * generator's pre-encoded frames (grpc-js could not reach half of a server-bound peak).
 */
const pacedPass = async (
  ctx: Ctx,
  id: string,
  title: string,
  target: Target,
  redis: BenchRedis | undefined,
  shape: RequestShape,
  via: 'grpc' | 'http',
  fixed: boolean,
  sample?: MonitorSample,
): Promise<void> => {
  const rate = peakOf(ctx.passes, id) / 2;
  if (rate <= 0) return;
  const req = buildRequests(shape)[0] as RateLimitRequest;
  if (ctx.h2load && fixed)
    ctx.passes.push(await h2Pass(ctx, id, title, target, redis, req, via, { mode: 'paced', rate }, sample));
  else
    ctx.passes.push(
      await nodePass(ctx, id, title, target, redis, shape, via, { rate, frames: !fixed, sample }),
    );
};

const runScenario = async (ctx: Ctx, id: string, configDir: string, redis: BenchRedis | undefined) => {
  const s = SCENARIOS[id] as Scenario;
  const shape = s.shape(ctx.o);
  const req = buildRequests(
    shape.kind === 'inference' ? { ...shape, keys: 1 } : shape,
  )[0] as RateLimitRequest;
  log(`scenario ${id}: ${s.title}`);
  if (redis) await redis.admin.flushall();
  const profileDir = ctx.o.profile ? join(ctx.dir, `profile-${id}`) : undefined;
  const target = await startRatekeeper(
    ctx.o.serverNodeOptions,
    configDir,
    req,
    s.store === 'redis' ? redis : undefined,
    profileDir,
  );
  const usesRedis = s.store === 'redis' ? redis : undefined;
  if (!target.limited)
    ctx.notes.push(`(${id}): the server applied no limit to the bench request: this measures a no-op answer`);
  let sample: MonitorSample | undefined;
  try {
    ctx.passes.push(
      await nodePass(ctx, id, s.title, target, usesRedis, shape, s.port, {
        monitor: (m) => {
          sample = m;
        },
      }),
    );
    // h2load repeats one body: scenario d's many keys cannot be expressed, and (c) already is that;
    // d gets the Node generator's pre-encoded frames instead, bracketed by the empty server's.
    const fixed = shape.kind === 'generic' || shape.keys === 1;
    if (ctx.h2load && fixed) {
      const before = await emptyH2Peak(ctx, 'ceiling next to a scenario');
      const peak = await h2Pass(ctx, id, s.title, target, usesRedis, req, s.port, { mode: 'peak' }, sample);
      peak.emptyNearby = [before.rate, (await emptyH2Peak(ctx, 'ceiling next to a scenario')).rate];
      ctx.passes.push(peak);
    }
    if (!fixed) {
      const before = await emptyFramesPeak(ctx);
      const peak = await nodePass(ctx, id, s.title, target, usesRedis, shape, s.port, {
        frames: true,
        sample,
      });
      peak.emptyNearby = [before.rate, (await emptyFramesPeak(ctx)).rate];
      ctx.passes.push(peak);
    }
    if (ctx.o.paced) {
      await pacedPass(ctx, id, s.title, target, usesRedis, shape, s.port, fixed, sample);
      if (ctx.h2load && fixed) await halfLoadPass(ctx, id, s.title, target, usesRedis, req, s.port, sample);
      else if (!fixed) await framesHalfPass(ctx, id, s.title, target, usesRedis, shape, sample);
    }
  } finally {
    await retire(ctx.passes, target, id);
  }
  const used = ctx.passes.some((p) => p.scenario === id && (p.redisCommandsPerDecision ?? 0) > 0);
  if (usesRedis && !used)
    ctx.notes.push(`(${id}): the server sent nothing to Redis: it is not on the Redis store`);
  if (s.scriptCeiling && usesRedis && sample?.hottest)
    await scriptCeiling(ctx, id, usesRedis, sample, sample.hottest);
  else if (s.scriptCeiling) ctx.notes.push(`(${id}): no script call seen by MONITOR; no script ceiling`);
};

/** Stops a server, its peak RSS read first into every pass of scenario `id`. */
const retire = async (passes: Pass[], target: Target, id: string): Promise<void> => {
  const rss = peakRssMb(target.pid);
  for (const p of passes) if (p.scenario === id) p.peakRssMb = rss;
  await target.stop();
};

/** The empty server's peak pass with pre-encoded frames (the ceiling for that driver's passes). */
const emptyFramesPeak = (ctx: Ctx): Promise<Pass> =>
  nodePass(ctx, 'empty', 'ceiling next to a scenario', ctx.empty, undefined, EMPTY_SHAPE, 'grpc', {
    frames: true,
  });

/** The empty server's h2load peak pass. */
const emptyH2Peak = (ctx: Ctx, title: string): Promise<Pass> =>
  h2Pass(ctx, 'empty', title, ctx.empty, undefined, EMPTY_REQ, 'grpc', { mode: 'peak' });

/**
 * The empty server's passes before the scenarios (peak and latency) and, with `again`, once more after
 * them (peak passes only): the machine's speed drifts within minutes, so the Node client's ratio uses
 * both (h2load's uses the passes right next to each scenario).
 */
const emptyCeiling = async (ctx: Ctx, again = false) => {
  const title = again
    ? 'ceiling: empty grpc-js server, again after the scenarios'
    : 'ceiling: empty grpc-js server, constant OK';
  log(title);
  const target = ctx.empty;
  ctx.passes.push(await nodePass(ctx, 'empty', title, target, undefined, EMPTY_SHAPE, 'grpc'));
  if (ctx.h2load) ctx.passes.push(await emptyH2Peak(ctx, title));
  if (ctx.emptyH2) {
    const h2Title = `ceiling: empty server on the gRPC port's HTTP/2 layer${again ? ', again' : ''}`;
    log(h2Title);
    ctx.passes.push(
      await h2Pass(ctx, 'empty:h2', h2Title, ctx.emptyH2, undefined, EMPTY_REQ, 'grpc', { mode: 'peak' }),
    );
  }
  if (ctx.o.paced && !again) {
    await pacedPass(ctx, 'empty', title, target, undefined, EMPTY_SHAPE, 'grpc', true);
    if (ctx.h2load) await halfLoadPass(ctx, 'empty', title, target, undefined, EMPTY_REQ, 'grpc');
  }
};

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
const perS = (xs: number[]): string => `${xs.map((x) => Math.round(x)).join(' / ')} per s`;

/**
 * Ratios to the ceiling measured by the same driver (a Node client against a Node client's ceiling):
 * for h2load the mean of the empty passes right before and after the scenario's, else the mean of its
 * peak passes before and after the scenarios; notes give their spread.
 */
const addRatios = (passes: Pass[], notes: string[]) => {
  const rates = new Map<Driver, number[]>();
  for (const p of passes)
    if (p.scenario === 'empty' && p.mode === 'peak')
      rates.set(p.driver, [...(rates.get(p.driver) ?? []), p.rate]);
  const h2Rates = passes.filter((p) => p.scenario === 'empty:h2').map((p) => p.rate);
  const emptyH2 = h2Rates.length ? mean(h2Rates) : 0;
  if (h2Rates.length > 1)
    notes.push(
      `empty HTTP/2-layer server (h2load) before / after the scenarios: ${perS(h2Rates)}; vs h2 uses their mean`,
    );
  const emptyBy = new Map<Driver, number>();
  for (const [driver, r] of rates) {
    emptyBy.set(driver, mean(r));
    if (r.length > 1)
      notes.push(
        `empty server (${driver}) before / after the scenarios: ${perS(r)} (${Math.round((100 * (Math.max(...r) - Math.min(...r))) / Math.min(...r))}% apart); ratios use their mean unless measured right next to their pass`,
      );
  }
  const script = (id: string) => peakOf(passes, `script:${id}`);
  for (const p of passes) {
    if (p.mode !== 'peak' || p.scenario.startsWith('empty') || p.scenario.startsWith('script:')) continue;
    const near = p.emptyNearby;
    if (near)
      notes.push(
        `(${p.scenario}): empty server (${p.driver}) right before / after its peak pass: ${perS(near)}; its ratio uses their mean`,
      );
    const e = near ? mean(near) : emptyBy.get(p.driver === 'connect-node' ? 'grpc-js' : p.driver);
    if (e) p.vsEmpty = p.rate / e;
    if (emptyH2 && p.driver === 'h2load') p.vsH2 = p.rate / emptyH2;
    const sid = p.scenario === 'd' ? 'c' : p.scenario;
    const sc = SCENARIOS[p.scenario]?.store === 'redis' ? script(sid) : 0;
    if (sc) p.vsScript = p.rate / sc;
  }
};

export const main = async (argv: string[]): Promise<number> => {
  const o = parseOptions(argv);
  const dir = mkdtempSync(join(tmpdir(), 'rk-bench-'));
  const configDir = writeBenchConfig(dir);
  const h2load = o.h2load && h2loadAvailable();
  const startedAt = new Date();
  const load0 = loadavg();
  const empty = await startEmpty(o.serverNodeOptions, EMPTY_REQ, './empty-server');
  const emptyH2 = h2load ? await startEmpty(o.serverNodeOptions, EMPTY_REQ, './empty-h2-server') : undefined;
  const ctx: Ctx = { o, dir, passes: [], notes: [], h2load, empty, ...(emptyH2 ? { emptyH2 } : {}) };
  if (o.h2load && !ctx.h2load)
    ctx.notes.push('h2load not installed (apt-get install -y nghttp2-client): h2load passes skipped');
  let redis: BenchRedis | undefined;
  const profiles: { scenario: string; summary: ProfileSummary }[] = [];
  try {
    if (o.scenarios.some((s) => SCENARIOS[s]?.store === 'redis')) redis = await startRedis();
    await emptyCeiling(ctx);
    for (const id of o.scenarios) {
      await runScenario(ctx, id, configDir, redis);
      if (o.profile)
        for (const f of profilesIn(join(dir, `profile-${id}`)))
          profiles.push({ scenario: id, summary: summarizeProfile(f) });
    }
    await emptyCeiling(ctx, true);
  } finally {
    if (emptyH2) await retire(ctx.passes, emptyH2, 'empty:h2');
    await retire(ctx.passes, empty, 'empty');
    await redis?.stop();
  }
  addRatios(ctx.passes, ctx.notes);
  const load1 = loadavg();
  const report = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    options: o,
    machine: { cpus: NCPU, loadavgBefore: load0, loadavgAfter: load1, node: process.version },
    notes: ctx.notes,
    passes: ctx.passes,
    profiles,
  };
  process.stdout.write(`${formatTable(report)}\n`);
  for (const p of profiles) process.stdout.write(`\n${formatProfile(p.scenario, p.summary)}\n`);
  const outDir = resolve(o.out);
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  process.stdout.write(`\nJSON: ${file}\n`);
  if (!o.profile) rmSync(dir, { recursive: true, force: true });
  else process.stdout.write(`profiles kept in ${dir}\n`);
  return 0;
};

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
