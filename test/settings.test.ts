import { describe, expect, it } from 'vitest';
import { parseSettings, SettingsError } from '../src/settings.js';

const err = (argv: string[], env: NodeJS.ProcessEnv = {}): string => {
  try {
    parseSettings(argv, env);
  } catch (e) {
    expect(e).toBeInstanceOf(SettingsError);
    return (e as Error).message;
  }
  throw new Error('expected a SettingsError');
};

describe('serve settings', () => {
  it('defaults: ports 8081 / 8080 / 9102, memory store, failure mode open, info logs, 10 s drain', () => {
    expect(parseSettings(['--config', 'config'], {})).toEqual({
      config: 'config',
      host: '0.0.0.0',
      port: 8081,
      httpPort: 8080,
      metricsPort: 9102,
      failureMode: 'open',
      logLevel: 'info',
      drainTimeout: 10,
    });
  });

  it('reads every setting from its env var, and a flag wins over the env var', () => {
    const env = {
      RATEKEEPER_CONFIG: '/etc/rk',
      RATEKEEPER_PORT: '0',
      RATEKEEPER_HTTP_PORT: '18080',
      RATEKEEPER_METRICS_PORT: '19102',
      RATEKEEPER_HOST: '127.0.0.1',
      REDIS_URL: 'redis://r:6379/0',
      RATEKEEPER_FAILURE_MODE: 'closed',
      LOG_LEVEL: 'debug',
      RATEKEEPER_DRAIN_TIMEOUT: '2.5',
    };
    expect(parseSettings([], env)).toMatchObject({
      config: '/etc/rk',
      port: 0,
      httpPort: 18080,
      metricsPort: 19102,
      host: '127.0.0.1',
      redisUrl: 'redis://r:6379/0',
      failureMode: 'closed',
      logLevel: 'debug',
      drainTimeout: 2.5,
    });
    expect(parseSettings(['--port', '9000', '--failure-mode', 'open'], env)).toMatchObject({
      port: 9000,
      failureMode: 'open',
    });
  });

  it('parses Redis Cluster and Sentinel node lists', () => {
    expect(parseSettings(['--config', 'c', '--redis-cluster', 'a:7000, b:7001'], {}).redisCluster).toEqual([
      'a:7000',
      'b:7001',
    ]);
    const s = parseSettings(
      ['--config', 'c', '--redis-sentinel', 's1:26379,s2:26379', '--redis-sentinel-name', 'mymaster'],
      {},
    );
    expect(s).toMatchObject({ redisSentinel: ['s1:26379', 's2:26379'], redisSentinelName: 'mymaster' });
  });

  it.each([
    [[], {}, '--config (RATEKEEPER_CONFIG): required'],
    [['--config', 'c', '--port', 'http'], {}, '--port (RATEKEEPER_PORT)'],
    [['--config', 'c'], { RATEKEEPER_HTTP_PORT: '70000' }, '--http-port (RATEKEEPER_HTTP_PORT)'],
    [['--config', 'c', '--metrics-port=-1'], {}, '--metrics-port (RATEKEEPER_METRICS_PORT)'],
    [['--config', 'c', '--failure-mode', 'maybe'], {}, '--failure-mode (RATEKEEPER_FAILURE_MODE)'],
    [['--config', 'c'], { LOG_LEVEL: 'loud' }, '--log-level (LOG_LEVEL)'],
    [['--config', 'c', '--redis-url', 'http://x'], {}, '--redis-url (REDIS_URL)'],
    [
      ['--config', 'c', '--redis-cluster', 'a'],
      {},
      '--redis-cluster (RATEKEEPER_REDIS_CLUSTER): expected host:port',
    ],
    [
      ['--config', 'c', '--redis-sentinel', 's:1'],
      {},
      '--redis-sentinel-name (RATEKEEPER_REDIS_SENTINEL_NAME)',
    ],
    [['--config', 'c', '--redis-url', 'redis://a', '--redis-cluster', 'b:1'], {}, 'only one of'],
    [['--config', 'c', '--drain-timeout', '0'], {}, '--drain-timeout (RATEKEEPER_DRAIN_TIMEOUT)'],
    [['--config', 'c', '--bogus', '1'], {}, "Unknown option '--bogus'"],
    [['--config', 'c', 'extra'], {}, 'extra'],
  ] as [string[], NodeJS.ProcessEnv, string][])('refuses %j %j naming the setting', (argv, env, text) => {
    expect(err(argv, env)).toContain(text);
  });
});
