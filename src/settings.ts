import { parseArgs } from 'node:util';
import { z } from 'zod';
import { LOG_LEVELS } from './log.js';

/** How each setting is given: a `serve` flag and an environment variable (the flag wins). */
export const SETTING_SOURCES = {
  config: { flag: 'config', env: 'RATEKEEPER_CONFIG', help: 'config file or directory (YAML)' },
  host: { flag: 'host', env: 'RATEKEEPER_HOST', help: 'listen address for all ports (default 0.0.0.0)' },
  port: { flag: 'port', env: 'RATEKEEPER_PORT', help: 'gRPC port (default 8081; 0 picks a free port)' },
  httpPort: {
    flag: 'http-port',
    env: 'RATEKEEPER_HTTP_PORT',
    help: 'HTTP port: Connect, gRPC-Web, /healthz (default 8080; 0 = free)',
  },
  metricsPort: {
    flag: 'metrics-port',
    env: 'RATEKEEPER_METRICS_PORT',
    help: 'Prometheus /metrics port (default 9102; 0 = free)',
  },
  redisUrl: { flag: 'redis-url', env: 'REDIS_URL', help: 'one Redis, e.g. redis://localhost:6379/0' },
  redisCluster: {
    flag: 'redis-cluster',
    env: 'RATEKEEPER_REDIS_CLUSTER',
    help: 'Redis Cluster seed nodes, host:port,host:port',
  },
  redisSentinel: {
    flag: 'redis-sentinel',
    env: 'RATEKEEPER_REDIS_SENTINEL',
    help: 'Redis Sentinels, host:port,host:port',
  },
  redisSentinelName: {
    flag: 'redis-sentinel-name',
    env: 'RATEKEEPER_REDIS_SENTINEL_NAME',
    help: 'master name the Sentinels watch',
  },
  failureMode: {
    flag: 'failure-mode',
    env: 'RATEKEEPER_FAILURE_MODE',
    help: 'store unreachable: open (admit) or closed (UNAVAILABLE); default open',
  },
  logLevel: { flag: 'log-level', env: 'LOG_LEVEL', help: `${LOG_LEVELS.join('|')} (default info)` },
  drainTimeout: {
    flag: 'drain-timeout',
    env: 'RATEKEEPER_DRAIN_TIMEOUT',
    help: 'seconds to let in-flight calls finish on SIGTERM (default 10)',
  },
} as const;

type Key = keyof typeof SETTING_SOURCES;

const port = (fallback: number) => z.coerce.number().int().min(0).max(65535).default(fallback);

const hostPorts = z
  .string()
  .transform((s) => s.split(',').map((h) => h.trim()))
  .pipe(z.array(z.string().regex(/^[^\s:]+:\d{1,5}$/, 'expected host:port')).min(1));

const numeric = (s: unknown) => (typeof s === 'string' && s.trim() === '' ? undefined : s);

export const SettingsSchema = z
  .object({
    config: z.string({ error: 'required' }).min(1, 'required'),
    host: z.string().min(1).default('0.0.0.0'),
    port: z.preprocess(numeric, port(8081)),
    httpPort: z.preprocess(numeric, port(8080)),
    metricsPort: z.preprocess(numeric, port(9102)),
    redisUrl: z.url({ protocol: /^rediss?$/, error: 'expected redis://… or rediss://…' }).optional(),
    redisCluster: hostPorts.optional(),
    redisSentinel: hostPorts.optional(),
    redisSentinelName: z.string().min(1).optional(),
    failureMode: z.enum(['open', 'closed']).default('open'),
    logLevel: z.enum(LOG_LEVELS).default('info'),
    drainTimeout: z.preprocess(numeric, z.coerce.number().positive().max(3600).default(10)),
  })
  .superRefine((s, ctx) => {
    const redis = (['redisUrl', 'redisCluster', 'redisSentinel'] as const).filter((k) => s[k] !== undefined);
    if (redis.length > 1) {
      ctx.addIssue({
        code: 'custom',
        path: [redis[1]!],
        message: `only one of --redis-url, --redis-cluster, --redis-sentinel may be given`,
      });
    }
    if (s.redisSentinel && !s.redisSentinelName) {
      ctx.addIssue({
        code: 'custom',
        path: ['redisSentinelName'],
        message: 'required with --redis-sentinel',
      });
    }
  });

/** Validated settings; ports may be 0 (a free port, logged at start). */
export type Settings = z.output<typeof SettingsSchema>;
export type SettingsInput = z.input<typeof SettingsSchema>;

export class SettingsError extends Error {
  override name = 'SettingsError';
}

const describe = (key: string): string => {
  const src = SETTING_SOURCES[key as Key];
  return src ? `--${src.flag} (${src.env})` : key;
};

/** Validates settings given as values (tests, embedding); errors name the flag and env var. */
export const settingsFrom = (input: SettingsInput): Settings => {
  const parsed = SettingsSchema.safeParse(input);
  if (parsed.success) return parsed.data;
  throw new SettingsError(
    parsed.error.issues.map((i) => `${describe(String(i.path[0] ?? ''))}: ${i.message}`).join('\n'),
  );
};

/** `serve` flags over environment variables over defaults. */
export const parseSettings = (argv: string[], env: NodeJS.ProcessEnv = process.env): Settings => {
  const options = Object.fromEntries(
    Object.values(SETTING_SOURCES).map((s) => [s.flag, { type: 'string' as const }]),
  );
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new SettingsError((err as Error).message);
  }
  const input: Record<string, unknown> = {};
  for (const [key, src] of Object.entries(SETTING_SOURCES)) {
    const v = values[src.flag] ?? env[src.env];
    if (v !== undefined) input[key] = v;
  }
  return settingsFrom(input as SettingsInput);
};

export const settingsHelp = (): string =>
  Object.values(SETTING_SOURCES)
    .map((s) => `  --${s.flag.padEnd(22)} ${s.env.padEnd(32)} ${s.help}`)
    .join('\n');
