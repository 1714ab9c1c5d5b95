/**
 * Starts the Redis servers tests share (one standalone, one 3-master cluster) on free ports, and stops
 * them after the run. Tests read the addresses with `inject('redisUrl')` and
 * `inject('redisClusterNodes')`. REDIS_URL (and REDIS_CLUSTER_NODES, host:port,…) point at existing
 * servers instead (except port 6379, the machine's shared Redis); keys are namespaced per test.
 */
import type { TestProject } from 'vitest/node';
import {
  hasRedisServer,
  type RedisClusterProcess,
  type RedisProcess,
  startRedis,
  startRedisCluster,
} from './redis.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** redis://host:port of a standalone Redis. */
    redisUrl: string;
    /** host:port of each Redis Cluster master. */
    redisClusterNodes: string[];
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // The machine's shared Redis (6379) is never used, even when the environment points at it.
  const shared = (addr: string): boolean => /:6379(\/|$)/.test(addr) || !/:\d+/.test(addr);
  const url = process.env['REDIS_URL'];
  const nodes = process.env['REDIS_CLUSTER_NODES']?.split(',').map((s) => s.trim());
  const givenUrl = url && !shared(url) ? url : undefined;
  const givenCluster = nodes && !nodes.some(shared) ? nodes : undefined;
  const needServer = !givenUrl || !givenCluster;
  if (needServer && !hasRedisServer()) {
    throw new Error(
      'redis-server not found on PATH: install it (e.g. `apt-get install redis-server`, `brew install redis`) ' +
        'or set REDIS_URL and REDIS_CLUSTER_NODES to servers the tests may use',
    );
  }
  const started = await Promise.allSettled([
    givenUrl ? undefined : startRedis(),
    givenCluster ? undefined : startRedisCluster(3),
  ]);
  const standalone =
    started[0].status === 'fulfilled' ? (started[0].value as RedisProcess | undefined) : undefined;
  const cluster =
    started[1].status === 'fulfilled' ? (started[1].value as RedisClusterProcess | undefined) : undefined;
  for (const r of started) {
    if (r.status === 'rejected') {
      await Promise.all([standalone?.stop(), cluster?.stop()]);
      throw r.reason;
    }
  }
  project.provide('redisUrl', givenUrl ?? standalone!.url);
  project.provide('redisClusterNodes', givenCluster ?? cluster!.nodes);
  return async () => {
    await Promise.all([standalone?.stop(), cluster?.stop()]);
  };
}
