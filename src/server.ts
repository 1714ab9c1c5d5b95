import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { loadConfig } from './config/load.js';
import { watchConfig } from './config/watch.js';
import { emptyDirectory, type KeyDirectory } from './keys/types.js';
import { createLogger, type Logger } from './log.js';
import { configReloads, registry } from './metrics.js';
import type { Deps, RuntimeConfig } from './services/deps.js';
import { bindings } from './services/index.js';
import type { Settings } from './settings.js';
import { MemoryStore } from './store/memory.js';
import type { LimiterStore } from './store/store.js';
import { type HttpTransport, startHttp } from './transport/connect.js';
import { type GrpcTransport, startGrpc } from './transport/grpc.js';
import { Health } from './transport/health.js';

/** How often the store's health is looked at, for closed failure mode's NOT_SERVING. */
const STORE_HEALTH_POLL_MS = 1_000;

export interface RunningServer {
  /** The bound ports (the real ones when 0 was asked for). */
  ports: { grpc: number; http: number; metrics: number };
  health: Health;
  deps: Deps;
  /** Graceful stop: NOT_SERVING, stop accepting, drain in-flight calls (bounded), close the store. */
  stop(): Promise<void>;
}

/** Parts a caller (tests, embedding) supplies instead of the ones the settings describe. */
export interface ServerParts {
  /** Used instead of the store the settings describe; the server closes it on stop. */
  store?: LimiterStore;
  keys?: KeyDirectory;
  log?: Logger;
}

const listenMetrics = (host: string, port: number): Promise<http.Server> => {
  const server = http.createServer((req, res) => {
    if (req.url !== '/metrics' || req.method !== 'GET') {
      res.writeHead(404).end();
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: Error) => res.writeHead(500).end(err.message),
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
};

/**
 * Loads the config (a bad one throws ConfigError, naming file, line and field), then serves both
 * transports and metrics; NOT_SERVING until everything is up.
 */
export const startServer = async (settings: Settings, parts: ServerParts = {}): Promise<RunningServer> => {
  const log = parts.log ?? createLogger(settings.logLevel);
  let config: RuntimeConfig = await loadConfig(settings.config);
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
  );
  const store = parts.store ?? new MemoryStore();
  const deps: Deps = { store, config: () => config, keys: parts.keys ?? emptyDirectory, log };
  const services = bindings(deps);
  const health = new Health(services.map((b) => b.service.typeName));

  const common = { bindings: services, health, log, host: settings.host };
  // A port that cannot be bound undoes what was started, so a failed start leaves nothing running.
  const undo: (() => unknown)[] = [unwatch, () => store.close()];
  let grpc: GrpcTransport;
  let httpT: HttpTransport;
  let metrics: http.Server;
  try {
    grpc = await startGrpc({ ...common, port: settings.port });
    undo.push(() => grpc.shutdown(0));
    httpT = await startHttp({ ...common, port: settings.httpPort });
    undo.push(() => httpT.shutdown(0));
    metrics = await listenMetrics(settings.host, settings.metricsPort);
  } catch (err) {
    for (const u of undo.reverse()) await u();
    throw err;
  }
  const ports = {
    grpc: grpc.port,
    http: httpT.port,
    metrics: (metrics.address() as AddressInfo).port,
  };

  let stopping = false;
  const storeServes = (): boolean => settings.failureMode === 'open' || store.healthy();
  const poll = setInterval(() => {
    if (!stopping) health.set(storeServes());
  }, STORE_HEALTH_POLL_MS);
  poll.unref();
  health.set(storeServes());
  log.info(
    { grpcPort: ports.grpc, httpPort: ports.http, metricsPort: ports.metrics, config: settings.config },
    'ratekeeper serving',
  );

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      stopping = true;
      clearInterval(poll);
      unwatch();
      health.set(false);
      const drainMs = settings.drainTimeout * 1000;
      log.info({ drainMs }, 'shutting down: draining in-flight calls');
      await Promise.all([grpc.shutdown(drainMs), httpT.shutdown(drainMs)]);
      await store.close();
      metrics.closeAllConnections();
      await new Promise<void>((resolve) => metrics.close(() => resolve()));
      log.info('stopped');
    })();
    return stopped;
  };
  return { ports, health, deps, stop };
};
