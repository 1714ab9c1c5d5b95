import { spawn } from 'node:child_process';
import { connect } from 'node:net';
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

export interface CommandStat {
  calls: number;
  /** Time Redis spent in the command; a script's includes the commands it ran. */
  usec: number;
}

/** Per command name (INFO commandstats), counting commands run inside scripts too. */
export const commandStats = async (admin: Redis): Promise<Map<string, CommandStat>> => {
  const info = await admin.info('commandstats');
  const stats = new Map<string, CommandStat>();
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/gm))
    stats.set(m[1] as string, { calls: Number(m[2]), usec: Number(m[3]) });
  return stats;
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
  before: Map<string, CommandStat>,
  after: Map<string, CommandStat>,
): { calls: Record<string, number>; usec: Record<string, number> } => {
  const calls: Record<string, number> = {};
  const usec: Record<string, number> = {};
  for (const [k, v] of after) {
    const delta = v.calls - (before.get(k)?.calls ?? 0);
    if (delta <= 0 || OWN.has(k)) continue;
    calls[k] = delta;
    usec[k] = v.usec - (before.get(k)?.usec ?? 0);
  }
  return { calls, usec };
};

/** What MONITOR saw for a moment: per command, how often a client sent it vs a script ran it. */
export interface MonitorSample {
  client: Record<string, number>;
  lua: Record<string, number>;
  /** The most frequent client command line (the decision's script call), to replay for the ceiling. */
  hottest?: string[];
}

/** One MONITOR line: `+1700000000.123456 [0 127.0.0.1:5000] "evalsha" "ab…"` (source `lua` inside scripts). */
const parseMonitorLine = (line: string): { source: string; args: string[] } | undefined => {
  const m = /^\+\d+\.\d+ \[\d+ ([^\]]+)\] (.*)$/.exec(line);
  if (!m) return undefined;
  const args: string[] = [];
  const body = m[2] as string;
  for (let i = 0; i < body.length; i++) {
    if (body[i] !== '"') continue;
    let arg = '';
    for (i++; i < body.length && body[i] !== '"'; i++) {
      if (body[i] !== '\\') {
        arg += body[i];
        continue;
      }
      const c = body[++i];
      if (c === 'x') {
        arg += String.fromCharCode(Number.parseInt(body.slice(i + 1, i + 3), 16));
        i += 2;
      } else
        arg += ({ n: '\n', r: '\r', t: '\t', a: '\x07', b: '\b' } as Record<string, string>)[c ?? ''] ?? c;
    }
    args.push(arg);
  }
  return { source: m[1] as string, args };
};

/** MONITOR over a raw socket (ioredis 6's monitor mode loses track of its queue under load). */
export const sampleMonitor = (port: number, ms: number): Promise<MonitorSample> =>
  new Promise((resolve, reject) => {
    const client: Record<string, number> = {};
    const lua: Record<string, number> = {};
    const lines = new Map<string, { n: number; args: string[] }>();
    let rest = '';
    const sock = connect(port, '127.0.0.1', () => {
      sock.write('MONITOR\r\n');
      setTimeout(() => sock.destroy(), ms);
    });
    sock.setEncoding('latin1');
    sock.on('data', (chunk: string) => {
      const parts = (rest + chunk).split('\r\n');
      rest = parts.pop() ?? '';
      for (const line of parts) {
        const e = parseMonitorLine(line);
        if (!e) continue;
        const name = (e.args[0] ?? '').toLowerCase();
        if (e.source === 'lua') lua[name] = (lua[name] ?? 0) + 1;
        else if (!OWN.has(name)) {
          client[name] = (client[name] ?? 0) + 1;
          const key = e.args.join('\u0000');
          const hit = lines.get(key) ?? { n: 0, args: e.args };
          hit.n++;
          lines.set(key, hit);
        }
      }
    });
    sock.on('error', reject);
    sock.on('close', () => {
      let hottest: string[] | undefined;
      let best = 0;
      for (const e of lines.values())
        if (e.n > best) {
          best = e.n;
          hottest = e.args;
        }
      resolve({ client, lua, ...(hottest ? { hottest } : {}) });
    });
  });

/**
 * Decisions one captured decide call carries: decide.lua's ARGV[2] (calls are EVALSHA sha numkeys
 * keys… args…); 1 when the line is not shaped so.
 */
export const decisionsPerCall = (command: string[]): number => {
  const count = Number(command[3 + Number(command[2]) + 1]);
  return Number.isInteger(count) && count > 0 ? count : 1;
};

/**
 * The part of a per-command quantity (calls, usec) due to commands a client sent (round trips): a
 * command the sample saw only inside scripts is not one; one seen both ways counts by the share the
 * sample saw from clients.
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
