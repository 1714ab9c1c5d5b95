import { inject } from 'vitest';
import { conformance } from './conformance.js';
import { redisStore } from './helpers.js';

conformance(
  'redis standalone',
  (clock) => redisStore({ kind: 'redis', url: inject('redisUrl') }, { testClock: clock }),
  {
    propertyRuns: 40,
  },
);
