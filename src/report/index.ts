import type { Cluster, Redis } from 'ioredis';
import type { Logger } from 'pino';
import { defaultSignalSettings, type SignalSettings } from '../policy/signals.js';
import type { InferenceEvents } from '../services/inference-events.js';
import type { LimiterStore } from '../store/store.js';
import { SignalEngine } from './engine.js';
import { inferenceHooks, limiterCounter } from './hooks.js';
import { MemoryReportStore } from './memory.js';
import { RedisReportStore } from './redis.js';
import type { ReportStore } from './types.js';

/** The report side of a server: shared state, the per-instance engine, and the hooks feeding it. */
export interface ReportRuntime {
  store: ReportStore;
  engine: SignalEngine;
  /** Goes into Deps.events. */
  hooks: InferenceEvents;
  close(): Promise<void>;
}

export interface ReportOptions {
  /**
   * The limiter store's Redis client, only duplicated: the report store runs on its own connections
   * (closed by close()), so its batch writes never delay a decision. Absent: state is kept in this process.
   */
  redis?: Redis | Cluster;
  /** The limiter store's key prefix (default `rk:`). */
  namespace?: string;
  /** The store clock (Unix ms). */
  now: () => number;
  /** The limiter store, to read counters it keeps for every instance (lease expiries). */
  limiter?: LimiterStore;
  /** The policy in force: its signals section and time zone; undefined before a policy is loaded. */
  policy: () => { signals: SignalSettings; timezone: string } | undefined;
  log: Logger;
  /** How often totals are written for TopKeys (default 5 s); 0: only on flush(). */
  flushIntervalMs?: number;
}

export function createReport(o: ReportOptions): ReportRuntime {
  const onError = (err: unknown) => o.log.warn({ err }, 'report: alert subscription error');
  const store = o.redis
    ? new RedisReportStore(o.redis, o.namespace ?? 'rk:', onError)
    : new MemoryReportStore(o.now);
  // Alerts raised on other instances reach this one's WatchAlerts streams from the start.
  if (store instanceof RedisReportStore) store.subscribed().catch(onError);
  const engine = new SignalEngine(
    store,
    () => o.policy()?.signals ?? defaultSignalSettings,
    o.log,
    o.limiter ? limiterCounter(o.limiter) : undefined,
  );
  const interval = o.flushIntervalMs ?? 5_000;
  if (interval > 0) engine.start(interval);
  return {
    store,
    engine,
    hooks: inferenceHooks(engine, () => o.policy()?.timezone ?? 'UTC', o.limiter),
    async close() {
      engine.stop();
      await engine.flush().catch((err) => o.log.warn({ err }, 'report: last flush failed'));
      await engine.idle();
      await store.close();
    },
  };
}
