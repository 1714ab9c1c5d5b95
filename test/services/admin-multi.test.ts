/**
 * Two server instances on one Redis (standalone and Cluster), each with its own connections, store
 * and key registry, as two pods would run: a change made through A's AdminService is in force on B
 * at B's next ShouldRateLimit.
 */
import { create } from '@bufbuild/protobuf';
import { afterAll, describe, expect, inject, it } from 'vitest';
import {
  RateLimitDescriptor_EntrySchema,
  RateLimitDescriptorSchema,
} from '../../gen/envoy/extensions/common/ratelimit/v3/ratelimit_pb.js';
import {
  type RateLimitResponse,
  RateLimitResponse_Code,
  RateLimitService,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { AdminService } from '../../gen/ratekeeper/v1/admin_pb.js';
import { UsageService } from '../../gen/ratekeeper/v1/usage_pb.js';
import { RedisKeyRegistry } from '../../src/keys/registry-redis.js';
import { createStore, type StoreHandle, type StoreSettings } from '../../src/store/factory.js';
import { type AdminServer, rpcClient, startAdminServer } from './admin-server.js';

const denied = (res: RateLimitResponse): string | undefined =>
  res.responseHeadersToAdd.find((h) => h.key === 'x-ratelimit-denied')?.value;

const cleanup: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const c of cleanup.reverse()) await c();
});

let seq = 0;

/**
 * One instance: its own Redis connections, store and registry, sharing the namespace. The store's
 * command deadline is raised from 50 ms so a loaded test machine does not time out a Release.
 */
const instance = async (settings: StoreSettings): Promise<AdminServer> => {
  const handle: StoreHandle = createStore(settings);
  await handle.ready(5000);
  const registry = await RedisKeyRegistry.open({ client: handle.redis!, prefix: settings.prefix! });
  const server = await startAdminServer({ registry, store: handle.limiter });
  cleanup.push(async () => {
    await server.stop();
    await registry.close();
    await handle.close();
  });
  return server;
};

describe.each([
  [
    'redis',
    (): StoreSettings => ({
      kind: 'redis',
      url: inject('redisUrl'),
      prefix: `rkm${++seq}:`,
      commandTimeoutMs: 1000,
    }),
  ],
  [
    'redis cluster',
    (): StoreSettings => ({
      kind: 'cluster',
      nodes: inject('redisClusterNodes'),
      prefix: `rkm${++seq}:`,
      commandTimeoutMs: 1000,
    }),
  ],
] as const)('two instances on one %s', (_name, settingsOf) => {
  it('disable on A → refused on B at the next request; lowered cap on A applies on B; in-flight debit counts; enable', async () => {
    const settings = settingsOf();
    const a = await instance(settings);
    const b = await instance(settings);
    const adminA = rpcClient(AdminService, a.conn());
    const rlsB = rpcClient(RateLimitService, b.conn());
    const usageB = rpcClient(UsageService, b.conn());
    cleanup.push(() => {
      adminA.close();
      rlsB.close();
      usageB.close();
    });
    const ask = (raw: string, entries: Record<string, string | number>) =>
      rlsB.shouldRateLimit({
        domain: 'inference',
        descriptors: [
          create(RateLimitDescriptorSchema, {
            entries: Object.entries({ key: raw, model: 'm1', ...entries }).map(([key, value]) =>
              create(RateLimitDescriptor_EntrySchema, { key, value: String(value) }),
            ),
          }),
        ],
      });

    const { rawKey, key } = await adminA.createKey({ account: 'acme', caps: { maxTokensPerRequest: 1000n } });
    const id = key!.id;
    const admitted = await ask(rawKey, { tokens: 200, request_id: 'inflight-1' });
    expect(admitted.overallCode).toBe(RateLimitResponse_Code.OK);

    // Each admin call returns, then the very next request goes to the other instance.
    for (let i = 0; i < 20; i++) {
      await adminA.disableKey({ id, reason: `round ${i}` });
      expect(denied(await ask(rawKey, { tokens: 10 })), `round ${i} disabled`).toBe('KEY_DISABLED');
      await adminA.enableKey({ id });
      const ok = await ask(rawKey, { tokens: 10, request_id: `round-${i}` });
      expect(ok.overallCode, `round ${i} enabled`).toBe(RateLimitResponse_Code.OK);
      // Free the concurrency slot, so the rounds test the key's state and not the tier's 5 slots.
      expect((await usageB.release({ requestId: `round-${i}`, key: rawKey })).released).toBe(true);
    }

    await adminA.updateKey({ id, caps: { maxTokensPerRequest: 100n } });
    expect(denied(await ask(rawKey, { tokens_out: 500 }))).toBe('MAX_TOKENS_LIMIT_EXCEEDED');

    // Admitted before the disable: its debit settles and counts on the other instance.
    await adminA.disableKey({ id, reason: 'chargeback' });
    expect(denied(await ask(rawKey, { tokens: 10 }))).toBe('KEY_DISABLED');
    const d = await usageB.debit({
      requestId: 'inflight-1',
      key: rawKey,
      model: 'm1',
      tokensIn: 100n,
      tokensOut: 50n,
    });
    expect(d.admitted).toBe(true);
    expect(d.duplicate).toBe(false);
    expect(d.spendMicros).toBe(200n);

    await adminA.enableKey({ id });
    expect((await ask(rawKey, { tokens_out: 50 })).overallCode).toBe(RateLimitResponse_Code.OK);

    // A key deleted on A is unknown on B: charged as an unregistered key, not as the deleted one.
    await adminA.deleteKey({ id });
    expect(b.deps.keys.byId(id)).toBeUndefined();
  });
});
