/**
 * Starts the real server in-process on free ports (127.0.0.1, ports 0) with a config directory of
 * real YAML files written to a temp dir. Use with the clients in ./clients.ts.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { KeyRegistry } from '../../src/keys/registry.js';
import { createLogger, type Logger } from '../../src/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { type SettingsInput, settingsFrom } from '../../src/settings.js';
import type { LimiterStore } from '../../src/store/store.js';
import type { ServiceAuth } from '../../src/transport/auth.js';

export interface TestServerOptions {
  /** Config files to write, relative path → YAML text (e.g. `{ 'domains/a.yaml': '…' }`). */
  files?: Record<string, string>;
  /** Store to use (the server closes it on stop); default: the embedded memory store. */
  store?: LimiterStore;
  /** Admin key registry (default: in memory) and bearer credentials (default: from the environment). */
  registry?: KeyRegistry;
  auth?: ServiceAuth;
  /** Any other settings (failureMode, drainTimeout, …); config and ports are set by the harness. */
  settings?: Partial<SettingsInput>;
  /** Default: silent (set LOG_LEVEL=debug to see server logs in a test run). */
  log?: Logger;
}

export interface TestServer {
  /** `127.0.0.1:PORT` of the gRPC port, for grpcClient(). */
  grpcAddress: string;
  /** `http://127.0.0.1:PORT` of the HTTP port, for connectClient() and fetch. */
  httpUrl: string;
  /** `http://127.0.0.1:PORT/metrics`. */
  metricsUrl: string;
  ports: RunningServer['ports'];
  server: RunningServer;
  /** The temp config directory. */
  configDir: string;
  /** Writes (or replaces) one config file; the server's watcher reloads it. */
  writeFile(path: string, text: string): Promise<void>;
  /** Graceful stop (drains), then removes the config directory. Safe to call twice. */
  stop(): Promise<void>;
}

export const writeConfigFiles = async (dir: string, files: Record<string, string>): Promise<void> => {
  for (const [path, text] of Object.entries(files)) {
    const full = join(dir, path);
    await mkdir(dirname(full), { recursive: true });
    await writeFile(full, text);
  }
};

export const startTestServer = async (opts: TestServerOptions = {}): Promise<TestServer> => {
  const configDir = await mkdtemp(join(tmpdir(), 'rk-test-'));
  await writeConfigFiles(configDir, opts.files ?? {});
  const settings = settingsFrom({
    host: '127.0.0.1',
    ...opts.settings,
    config: configDir,
    port: 0,
    httpPort: 0,
    metricsPort: 0,
  });
  const log = opts.log ?? createLogger(process.env.LOG_LEVEL ? undefined : 'silent');
  let server: RunningServer;
  try {
    server = await startServer(settings, {
      log,
      ...(opts.store ? { store: opts.store } : {}),
      ...(opts.registry ? { registry: opts.registry } : {}),
      ...(opts.auth ? { auth: opts.auth } : {}),
    });
  } catch (err) {
    await rm(configDir, { recursive: true, force: true });
    throw err;
  }
  const { ports } = server;
  return {
    grpcAddress: `127.0.0.1:${ports.grpc}`,
    httpUrl: `http://127.0.0.1:${ports.http}`,
    metricsUrl: `http://127.0.0.1:${ports.metrics}/metrics`,
    ports,
    server,
    configDir,
    writeFile: (path, text) => writeConfigFiles(configDir, { [path]: text }),
    stop: async () => {
      await server.stop();
      await rm(configDir, { recursive: true, force: true });
    },
  };
};
