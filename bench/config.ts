import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BENCH_MODEL, GENERIC_DOMAIN, INFERENCE_DOMAIN } from './requests.js';

/**
 * Far above any rate this machine reaches (512 tokens × 20k/s × 60 s is 0.6e9), so the bench measures
 * decisions that admit; within uint32, as Envoy's current_limit.requests_per_unit is.
 */
const HIGH = 4_000_000_000;

/** One generic domain with one descriptor limit (scenarios a, b, e). */
const GENERIC = `domain: ${GENERIC_DOMAIN}
descriptors:
  - key: client
    rate_limit:
      unit: second
      requests_per_unit: ${HIGH}
`;

/**
 * Unregistered keys on a tier with request and token windows per key, and account × model request,
 * tokens-in and tokens-out windows: five sliding windows per decision. Concurrency is left unlimited
 * (blank) because the bench sends no Debit/Release: limited slots would fill and deny. The key's own
 * slot set is still written (leases feed the runaway signal) and grows for a lease's length, to ~10^5
 * members and more; replaying the script, that cost Redis ~4% more per decision than a set of a few members.
 */
const POLICY = `kind: inference-policy
domain: ${INFERENCE_DOMAIN}
pepper: bench-pepper
default_tier: bench
tiers:
  bench:
    requests: { limit: ${HIGH}, window: minute }
    tokens: { limit: ${HIGH}, window: minute }
    concurrent: null
models:
  ${BENCH_MODEL}:
    price: { input_per_million_usd: 1, output_per_million_usd: 2 }
    limits:
      bench:
        requests: { limit: ${HIGH}, window: minute }
        tokens_in: { limit: ${HIGH}, window: minute }
        tokens_out: { limit: ${HIGH}, window: minute }
        concurrent: null
`;

/** Writes the bench config directory; returns its path. */
export const writeBenchConfig = (dir: string): string => {
  const path = join(dir, 'config');
  mkdirSync(path, { recursive: true });
  writeFileSync(join(path, 'bench.yaml'), GENERIC);
  writeFileSync(join(path, 'policy.yaml'), POLICY);
  return path;
};

/**
 * The Node flags the image runs the server with (deploy/Dockerfile's `ENV NODE_OPTIONS=`), so the bench
 * measures the shipped runtime by default; none when the file or the line is missing.
 */
export const imageNodeOptions = (dockerfile = 'deploy/Dockerfile'): string[] => {
  if (!existsSync(dockerfile)) return [];
  const m = /^ENV NODE_OPTIONS=(.*)$/m.exec(readFileSync(dockerfile, 'utf8'));
  return (m?.[1] ?? '').replace(/^"|"$/g, '').split(/\s+/).filter(Boolean);
};
