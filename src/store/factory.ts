/**
 * Builds the configured store (memory by default, or Redis standalone / Cluster / Sentinel), and
 * wraps a store with the configured failure mode (contract §8).
 */
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { RkError } from '../errors.js';
import { MemoryStore } from './memory.js';
import { RedisStore } from './redis.js';
import {
  type Decision,
  type DecisionResult,
  type LimiterStore,
  type Settle,
  type SettleResult,
  StoreUnavailableError,
} from './store.js';

export type StoreSettings = (
  | { kind: 'memory' }
  | { kind: 'redis'; url: string }
  | { kind: 'cluster'; nodes: string[] }
  | { kind: 'sentinel'; sentinels: string[]; name: string }
) & {
  /** Per-command deadline, so a hung Redis never hangs Envoy (default 50). */
  commandTimeoutMs?: number;
  /** Key namespace (default `rk:`). */
  prefix?: string;
};

export interface StoreHandle {
  limiter: LimiterStore;
  /** The ioredis client, for other Redis-backed stores (admin keys, reports); absent for memory. */
  redis?: Redis | Cluster;
  /** Resolves true once the backend answers, false after timeoutMs (the store keeps reconnecting). */
  ready(timeoutMs?: number): Promise<boolean>;
  close(): Promise<void>;
}

const hostPort = (s: string): { host: string; port: number } => {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
};

/**
 * Fail fast (no offline queue, no retries of a sent command) and reconnect forever in the background.
 * No auto-pipelining: the store already sends a turn's decisions as one script call, and ioredis's
 * pipeline per turn on top cost ~10% of the inference decisions per second (bench, interleaved runs).
 */
const clientOptions = (commandTimeoutMs: number): RedisOptions => ({
  enableOfflineQueue: false,
  commandTimeout: commandTimeoutMs,
  maxRetriesPerRequest: 0,
  connectTimeout: 2_000,
  retryStrategy: (times) => Math.min(50 * times, 1_000),
});

export function createStore(settings: StoreSettings): StoreHandle {
  if (settings.kind === 'memory') {
    const limiter = new MemoryStore();
    return { limiter, ready: async () => true, close: () => limiter.close() };
  }
  const redis = connectRedis(settings);
  const limiter = new RedisStore(redis, settings.prefix === undefined ? {} : { prefix: settings.prefix });
  return {
    limiter,
    redis,
    ready: (timeoutMs = 5_000) => readyWithin(redis, timeoutMs),
    async close() {
      await limiter.close();
      redis.disconnect();
    },
  };
}

/** The ioredis client for Redis settings, connecting in the background. */
export function connectRedis(settings: Exclude<StoreSettings, { kind: 'memory' }>): Redis | Cluster {
  const options = clientOptions(settings.commandTimeoutMs ?? 50);
  let redis: Redis | Cluster;
  if (settings.kind === 'redis') {
    redis = new Redis(settings.url, options);
  } else if (settings.kind === 'sentinel') {
    redis = new Redis({ ...options, sentinels: settings.sentinels.map(hostPort), name: settings.name });
  } else {
    const { enableOfflineQueue: _, retryStrategy: __, ...redisOptions } = options;
    redis = new Cluster(settings.nodes.map(hostPort), {
      enableOfflineQueue: false,
      redisOptions,
      clusterRetryStrategy: (times) => Math.min(100 * times, 1_000),
      slotsRefreshTimeout: 2_000,
    });
  }
  // Errors surface per command (and through healthy()); without a listener they would be re-thrown.
  redis.on('error', () => {});
  return redis;
}

export function readyWithin(redis: Redis | Cluster, timeoutMs: number): Promise<boolean> {
  if (redis.status === 'ready') return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      redis.off('ready', onReady);
      resolve(ok);
    };
    const onReady = (): void => done(true);
    const timer = setTimeout(() => done(false), timeoutMs);
    redis.on('ready', onReady);
  });
}

export type FailureMode = 'open' | 'closed';

export interface FailureHooks {
  /** Called on every backend failure; the caller rate-limits logging and counts a metric. */
  onFailure(err: Error): void;
}

export interface FailureModeStore extends LimiterStore {
  /** false only in closed mode while the backend is down: health answers NOT_SERVING. */
  serving(): boolean;
}

/**
 * Applies failure_mode to a store. decide(): `open` admits (every op ok with its full limit
 * remaining), `closed` throws RkError UNAVAILABLE. settle() and release() always throw UNAVAILABLE
 * so a debit is never silently lost (clients retry; settle is idempotent). Errors that are not
 * StoreUnavailableError are bugs and pass through.
 */
export function withFailureMode(
  store: LimiterStore,
  mode: FailureMode,
  hooks: FailureHooks,
): FailureModeStore {
  const unavailable = (err: StoreUnavailableError): RkError => {
    hooks.onFailure(err);
    return new RkError('UNAVAILABLE', `rate-limit store unavailable: ${err.message}`);
  };
  return {
    now: () => store.now(),
    healthy: () => store.healthy(),
    serving: () => mode === 'open' || store.healthy(),
    close: () => store.close(),
    async decide(d: Decision): Promise<DecisionResult> {
      try {
        return await store.decide(d);
      } catch (err) {
        if (!(err instanceof StoreUnavailableError)) throw err;
        if (mode === 'closed') throw unavailable(err);
        hooks.onFailure(err);
        return {
          admitted: true,
          denied: -1,
          nowMs: store.now(),
          expiredLeases: 0,
          states: d.ops.map((op) => ({ ok: true, used: 0, remaining: op.limit, resetMs: 0, retryMs: 0 })),
        };
      }
    },
    async settle(s: Settle): Promise<SettleResult> {
      try {
        return await store.settle(s);
      } catch (err) {
        throw err instanceof StoreUnavailableError ? unavailable(err) : err;
      }
    },
    async release(key: string): Promise<boolean> {
      try {
        return await store.release(key);
      } catch (err) {
        throw err instanceof StoreUnavailableError ? unavailable(err) : err;
      }
    },
  };
}
