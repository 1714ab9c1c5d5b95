/** Redis clients and stores for tests: unique key prefixes so tests can share one server. */
import { randomUUID } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import { connectRedis, readyWithin, type StoreSettings } from '../../src/store/factory.js';
import { RedisStore, type RedisStoreOptions } from '../../src/store/redis.js';

export const uniquePrefix = (): string => `rk:test:${randomUUID().slice(0, 8)}:`;

export async function client(settings: Exclude<StoreSettings, { kind: 'memory' }>): Promise<Redis | Cluster> {
  const redis = connectRedis({ commandTimeoutMs: 1000, ...settings });
  if (!(await readyWithin(redis, 10_000))) throw new Error(`redis not ready: ${JSON.stringify(settings)}`);
  return redis;
}

export async function redisStore(
  settings: Exclude<StoreSettings, { kind: 'memory' }>,
  options: Omit<RedisStoreOptions, 'prefix'> & { prefix?: string } = {},
): Promise<{ store: RedisStore; redis: Redis | Cluster; close(): Promise<void> }> {
  const redis = await client(settings);
  const store = new RedisStore(redis, { prefix: options.prefix ?? uniquePrefix(), ...options });
  await store.scriptsLoaded();
  await store.syncClock();
  return {
    store,
    redis,
    async close() {
      await store.close();
      redis.disconnect();
    },
  };
}
