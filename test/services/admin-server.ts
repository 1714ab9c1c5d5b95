/**
 * A real gRPC server with AdminService, RLS and Usage mounted over one key registry, for the admin
 * and CLI tests; and grpc-js clients built from the generated types.
 */
import { pino } from 'pino';
import { parse } from 'yaml';
import { type Connection, rpcClient } from '../../src/cli/client.js';
import { parseInferencePolicy } from '../../src/config/inference.js';
import type { KeyRegistry } from '../../src/keys/registry.js';
import type { ReportStore } from '../../src/report/types.js';
import { adminBinding } from '../../src/services/admin.js';
import type { Deps, RuntimeConfig } from '../../src/services/deps.js';
import { rlsBinding } from '../../src/services/rls.js';
import { usageBinding } from '../../src/services/usage.js';
import { MemoryStore } from '../../src/store/memory.js';
import type { LimiterStore } from '../../src/store/store.js';
import { bearerAuth } from '../../src/transport/auth.js';
import { startGrpc } from '../../src/transport/grpc.js';
import { Health } from '../../src/transport/health.js';
import type { Listener } from '../../src/transport/types.js';

export const PEPPER = 'test-pepper';
export const ADMIN_TOKEN = 'alice-token-0123456789';
export const OTHER_TOKEN = 'bob-token-9876543210xx';

export const POLICY = `
kind: inference-policy
pepper: ${PEPPER}
default_tier: free
tiers:
  free: { requests: 100/minute, concurrent: 5 }
  pro: { requests: 1000/minute, concurrent: 20 }
models:
  m1:
    price: { input_per_million_usd: 1.00, output_per_million_usd: 2.00 }
keys:
  - id: static-1
    account: acme
    tier: free
    name: from the file
    monthly_tokens: 5000
    max_tokens: 100
`;

export interface AdminServer {
  addr: string;
  deps: Deps;
  conn(token?: string): Connection;
  stop(): Promise<void>;
}

export async function startAdminServer(opts: {
  registry: KeyRegistry;
  store?: LimiterStore;
  flags?: ReportStore;
  policy?: string;
}): Promise<AdminServer> {
  const config: RuntimeConfig = {
    domains: new Map(),
    inference: parseInferencePolicy(
      parse(opts.policy ?? POLICY),
      { file: 'test.yaml', lineOf: () => undefined },
      {},
    ),
  };
  const log = pino({ level: process.env['TEST_LOG_LEVEL'] ?? 'silent' });
  const store = opts.store ?? new MemoryStore();
  const deps: Deps = {
    store,
    config: () => config,
    keys: opts.registry,
    log,
    registry: opts.registry,
    auth: {
      admin: bearerAuth(
        [
          { name: 'alice', token: ADMIN_TOKEN },
          { name: 'bob', token: OTHER_TOKEN },
        ],
        'admin',
      ),
    },
    ...(opts.flags ? { flags: opts.flags } : {}),
  };
  const bindings = [adminBinding(deps), rlsBinding(deps), usageBinding(deps)];
  const health = new Health(bindings.map((b) => b.service.typeName));
  const grpc: Listener = await startGrpc({ bindings, health, log, host: '127.0.0.1', port: 0 });
  health.set(true);
  const addr = `127.0.0.1:${grpc.port}`;
  return {
    addr,
    deps,
    conn: (token = ADMIN_TOKEN) => ({ addr, ...(token ? { token } : {}), tls: false, timeoutMs: 5000 }),
    stop: async () => {
      await grpc.shutdown(0);
      if (!opts.store) await store.close();
    },
  };
}

export { rpcClient };
