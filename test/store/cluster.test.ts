import { inject } from 'vitest';
import { conformance } from './conformance.js';
import { redisStore } from './helpers.js';

conformance(
  'redis cluster',
  (clock) => redisStore({ kind: 'cluster', nodes: inject('redisClusterNodes') }, { testClock: clock }),
  { propertyRuns: 40 },
);
