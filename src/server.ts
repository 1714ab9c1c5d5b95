import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseConfigFiles, readConfigFiles } from './config/load.js';
import { watchConfig } from './config/watch.js';
import { type KeyRegistry, MemoryKeyRegistry } from './keys/registry.js';
import { RedisKeyRegistry } from './keys/registry-redis.js';
import { createLogger, type Logger } from './log.js';
import { configReloads, registry as metricsRegistry, storeFailures } from './metrics.js';
import { createReport, type ReportRuntime } from './report/index.js';
import type { Deps, RuntimeConfig } from './services/deps.js';
import { bindings } from './services/index.js';
import type { Settings } from './settings.js';
import { createStore, type StoreHandle, type StoreSettings, withFailureMode } from './store/factory.js';
import type { LimiterStore } from './store/store.js';
import { type ServiceAuth, serviceAuthFromEnv } from './transport/auth.js';
import { startHttp } from './transport/connect.js';
import { startGrpc } from './transport/grpc.js';
import { Health } from './transport/health.js';
import type { Listener } from './transport/types.js';

/** How often the store's health is looked at, for closed failure mode's NOT_SERVING. */
const STORE_HEALTH_POLL_MS = 1_000;
/** How long a start waits for Redis, NOT_SERVING, before serving anyway (it keeps reconnecting). */
const STORE_READY_TIMEOUT_MS = 5_000;
/** Store failures are logged at most this often (each one is counted in the metric). */
const STORE_FAILURE_LOG_MS = 10_000;

export interface RunningServer {
  /** The bound ports (the real ones when 0 was asked for). */
  ports: { grpc: number; http: number; metrics: number };
  health: Health;
  deps: Deps;
  /** Graceful stop: NOT_SERVING, stop accepting, drain in-flight calls (bounded), close the stores. */
  stop(): Promise<void>;
}

/** Parts a caller (tests, embedding) supplies instead of the ones the settings describe. */
export interface ServerParts {
  /** Used instead of the store the settings describe; the server closes it on stop. */
  store?: LimiterStore;
  /** Admin-managed keys; default: in Redis when Redis is configured, else in memory. */
  registry?: KeyRegistry;
  /** Bearer credentials; default: from the environment (RATEKEEPER_ADMIN_TOKENS, …). */
  auth?: ServiceAuth;
  log?: Logger;
}

const storeSettings = (s: Settings): StoreSettings => {
  if (s.redisUrl) return { kind: 'redis', url: s.redisUrl };
  if (s.redisCluster) return { kind: 'cluster', nodes: s.redisCluster };
  if (s.redisSentinel) return { kind: 'sentinel', sentinels: s.redisSentinel, name: s.redisSentinelName! };
  return { kind: 'memory' };
};

const givenStore = (store: LimiterStore): StoreHandle => ({
  limiter: store,
  ready: async () => true,
  close: () => store.close(),
});

const closeAll = async (fns: (() => unknown)[]): Promise<void> => {
  for (const f of fns.reverse()) await f();
};

const listenMetrics = (host: string, port: number): Promise<http.Server> => {
  const server = http.createServer((req, res) => {
    if (req.url !== '/metrics' || req.method !== 'GET') {
      res.writeHead(404).end();
      return;
    }
    metricsRegistry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': metricsRegistry.contentType }).end(text),
      (err: Error) => res.writeHead(500).end(err.message),
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
};

/**
 * Loads the config (a bad one throws ConfigError naming file, line and field) and the credentials,
 * connects the store, then serves both transports and metrics: NOT_SERVING until the store is ready
 * (or its start timeout passes).
 */
export const startServer = async (settings: Settings, parts: ServerParts = {}): Promise<RunningServer> => {
  const log = parts.log ?? createLogger(settings.logLevel);
  const loadedFiles = await readConfigFiles(settings.config);
  let config: RuntimeConfig = parseConfigFiles(loadedFiles);
  const auth = parts.auth ?? serviceAuthFromEnv();

  // What was started, closed in reverse: the listeners on a failed start (e.g. a port in use), the
  // resources then and on stop.
  const resources: (() => unknown)[] = [];
  const listeners: (() => unknown)[] = [];

  const handle = parts.store ? givenStore(parts.store) : createStore(storeSettings(settings));
  resources.push(() => handle.close());
  let lastFailureLog = 0;
  let failuresSinceLog = 0;
  const store = withFailureMode(handle.limiter, settings.failureMode, {
    onFailure: (err) => {
      storeFailures.inc({ mode: settings.failureMode });
      failuresSinceLog++;
      const now = Date.now();
      if (now - lastFailureLog >= STORE_FAILURE_LOG_MS) {
        log.warn(
          { err: err.message, failures: failuresSinceLog, failureMode: settings.failureMode },
          'store unavailable',
        );
        lastFailureLog = now;
        failuresSinceLog = 0;
      }
    },
  });

  let health: Health;
  let grpc: Listener;
  let httpT: Listener;
  let metrics: http.Server;
  let deps: Deps;
  let report: ReportRuntime;
  try {
    const registry =
      parts.registry ??
      (handle.redis ? await RedisKeyRegistry.open({ client: handle.redis, log }) : new MemoryKeyRegistry());
    resources.push(() => registry.close());
    report = createReport({
      ...(handle.redis ? { redis: handle.redis } : {}),
      now: () => store.now(),
      limiter: store,
      policy: () => config.inference,
      log,
    });
    resources.push(() => report.close());

    // A bad reload keeps the config in force; the error names file, line and field.
    const unwatch = watchConfig(
      settings.config,
      (next) => {
        config = next;
        configReloads.inc({ result: 'success' });
        log.info({ config: settings.config }, 'config reloaded');
      },
      (err) => {
        configReloads.inc({ result: 'error' });
        log.error(
          { config: settings.config, error: err.message },
          'config reload failed; keeping the previous config',
        );
      },
      { baseline: loadedFiles },
    );
    resources.push(unwatch);

    deps = {
      store,
      config: () => config,
      keys: registry,
      registry,
      auth,
      flags: report.store,
      events: report.hooks,
      report,
      log,
    };
    const services = bindings(deps);
    health = new Health(services.map((b) => b.service.typeName));
    const common = { bindings: services, health, log, host: settings.host };
    grpc = await startGrpc({ ...common, port: settings.port });
    listeners.push(() => grpc.shutdown(0));
    httpT = await startHttp({ ...common, port: settings.httpPort });
    listeners.push(() => httpT.shutdown(0));
    metrics = await listenMetrics(settings.host, settings.metricsPort);
  } catch (err) {
    await closeAll(listeners);
    await closeAll(resources);
    throw err;
  }
  const ports = {
    grpc: grpc.port,
    http: httpT.port,
    metrics: (metrics.address() as AddressInfo).port,
  };
  log.info(
    { grpcPort: ports.grpc, httpPort: ports.http, metricsPort: ports.metrics, config: settings.config },
    'ratekeeper listening',
  );

  let stopping = false;
  if (!(await handle.ready(STORE_READY_TIMEOUT_MS))) {
    log.warn({ timeoutMs: STORE_READY_TIMEOUT_MS }, 'store not reachable yet; serving, reconnecting');
  }
  const poll = setInterval(() => {
    if (!stopping) health.set(store.serving());
  }, STORE_HEALTH_POLL_MS);
  poll.unref();
  health.set(store.serving());
  log.info(
    {
      grpcPort: ports.grpc,
      httpPort: ports.http,
      metricsPort: ports.metrics,
      store: storeSettings(settings).kind,
      failureMode: settings.failureMode,
    },
    'ratekeeper serving',
  );

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      stopping = true;
      clearInterval(poll);
      health.set(false);
      const drainMs = settings.drainTimeout * 1000;
      log.info({ drainMs }, 'shutting down: draining in-flight calls');
      await Promise.all([grpc.shutdown(drainMs), httpT.shutdown(drainMs)]);
      await closeAll(resources);
      metrics.closeAllConnections();
      await new Promise<void>((resolve) => metrics.close(() => resolve()));
      log.info('stopped');
    })();
    return stopped;
  };
  return { ports, health, deps, stop };
};
