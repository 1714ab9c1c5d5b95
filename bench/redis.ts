import { spawn } from 'node:child_process';
import { Redis } from 'ioredis';
import { type Child, freePort, startChild, waitFor } from './proc.js';

/** A private redis-server on a free port (never the machine's 6379), no persistence. */
export interface BenchRedis {
  url: string;
  port: number;
  child: Child;
  admin: Redis;
  stop(): Promise<void>;
}

export const startRedis = async (): Promise<BenchRedis> => {
  const port = await freePort();
  const child = startChild('redis-server', [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    'no',
    '--protected-mode',
    'no',
  ]);
  const admin = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 1 });
  // Connection errors surface as failed commands; after stop() they are expected.
  admin.on('error', () => undefined);
  await waitFor(`redis-server on ${port}`, 5000, async () => {
    if (admin.status === 'wait' || admin.status === 'end') await admin.connect();
    return (await admin.ping()) === 'PONG';
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    child,
    admin,
    stop: async () => {
      admin.disconnect();
      await child.stop('SIGTERM', 3000);
    },
  };
};

/** Calls per command name (INFO commandstats), counting commands run inside scripts too. */
export const commandStats = async (admin: Redis): Promise<Map<string, number>> => {
  const info = await admin.info('commandstats');
  const calls = new Map<string, number>();
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls.set(m[1] as string, Number(m[2]));
  return calls;
};

/** The bench's own INFO / CONFIG / MONITOR traffic is not the server's. */
const OWN = new Set([
  'info',
  'config|resetstat',
  'monitor',
  'ping',
  'flushall',
  'script|flush',
  'hello',
  'client|setinfo',
]);

export const diffStats = (
  before: Map<string, number>,
  after: Map<string, number>,
): Record<string, number> => {
  const d: Record<string, number> = {};
  for (const [k, v] of after) {
    const delta = v - (before.get(k) ?? 0);
    if (delta > 0 && !OWN.has(k)) d[k] = delta;
  }
  return d;
};

/** What MONITOR saw for a moment: per command, how often a client sent it vs a script ran it. */
export interface MonitorSample {
  client: Record<string, number>;
  lua: Record<string, number>;
  /** The most frequent client command line (the decision's script call), to replay for the ceiling. */
  hottest?: string[];
}

export const sampleMonitor = async (port: number, ms: number): Promise<MonitorSample> => {
  const conn = new Redis(port, '127.0.0.1');
  conn.on('error', () => undefined);
  const monitor = await conn.monitor();
  monitor.on('error', () => undefined);
  const client: Record<string, number> = {};
  const lua: Record<string, number> = {};
  const lines = new Map<string, { n: number; args: string[] }>();
  monitor.on('monitor', (_time: string, args: string[], source: string) => {
    const name = (args[0] ?? '').toLowerCase();
    if (source === 'lua') lua[name] = (lua[name] ?? 0) + 1;
    else if (!OWN.has(name)) {
      client[name] = (client[name] ?? 0) + 1;
      const key = args.join('\u0000');
      const e = lines.get(key) ?? { n: 0, args };
      e.n++;
      lines.set(key, e);
    }
  });
  await new Promise((r) => setTimeout(r, ms));
  monitor.disconnect();
  conn.disconnect();
  let hottest: string[] | undefined;
  let best = 0;
  for (const e of lines.values())
    if (e.n > best) {
      best = e.n;
      hottest = e.args;
    }
  return { client, lua, ...(hottest ? { hottest } : {}) };
};

/**
 * Round trips (commands a client sent) in a commandstats delta: a command the sample saw only inside
 * scripts is not one; one seen both ways counts by the share the sample saw from clients.
 */
export const clientCalls = (delta: Record<string, number>, sample: MonitorSample | undefined): number => {
  let n = 0;
  for (const [name, calls] of Object.entries(delta)) {
    const base = name.split('|')[0] ?? name;
    const c = sample?.client[base] ?? 0;
    const l = sample?.lua[base] ?? 0;
    n += c + l === 0 ? calls : (calls * c) / (c + l);
  }
  return n;
};

export interface RedisBenchmarkResult {
  rate: number;
  p50: number;
  p99: number;
}

/** redis-benchmark (C client) replaying one command line, pipelined; undefined when not installed. */
export const redisBenchmark = (
  port: number,
  command: string[],
  requests: number,
): Promise<RedisBenchmarkResult | undefined> =>
  new Promise((resolve) => {
    const p = spawn(
      'redis-benchmark',
      [
        '-h',
        '127.0.0.1',
        '-p',
        String(port),
        '-c',
        '16',
        '-P',
        '16',
        '-n',
        String(requests),
        '--csv',
        ...command,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    p.stdout.on('data', (b: Buffer) => {
      out += b.toString();
    });
    p.on('error', () => resolve(undefined));
    p.on('exit', () => {
      // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
      const row = out
        .trim()
        .split('\n')
        .at(-1)
        ?.match(/"([^"]*)"/g)
        ?.map((s) => s.slice(1, -1));
      const rate = Number(row?.[1]);
      if (!row || !Number.isFinite(rate)) return resolve(undefined);
      resolve({ rate, p50: Number(row[4]), p99: Number(row[6]) });
    });
  });
