import { Counter, collectDefaultMetrics, Histogram, Registry } from 'prom-client';

/**
 * The process-wide Prometheus registry, served on the metrics port at /metrics.
 * Other modules register their own metrics here with `registers: [registry]`.
 */
export const registry = new Registry();
collectDefaultMetrics({ register: registry, prefix: 'ratekeeper_' });

/** Label value for domains that are not configured, so clients cannot inflate label cardinality. */
export const UNKNOWN_DOMAIN = '_unconfigured';

export const rlsDecisions = new Counter({
  name: 'ratekeeper_rls_decisions_total',
  help: 'ShouldRateLimit answers by domain and overall code (OK, OVER_LIMIT).',
  labelNames: ['domain', 'code'] as const,
  registers: [registry],
});

export const rlsDuration = new Histogram({
  name: 'ratekeeper_rls_duration_seconds',
  help: 'ShouldRateLimit decision time (config lookup, policy, store) of valid requests, by domain.',
  labelNames: ['domain'] as const,
  buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
  registers: [registry],
});

export const invalidRequests = new Counter({
  name: 'ratekeeper_invalid_requests_total',
  help: 'Requests refused with INVALID_ARGUMENT, by method and field (indices folded to []).',
  labelNames: ['method', 'field'] as const,
  registers: [registry],
});

export const rpcErrors = new Counter({
  name: 'ratekeeper_rpc_errors_total',
  help: 'Calls that ended in an error other than INVALID_ARGUMENT, by method and status code.',
  labelNames: ['method', 'code'] as const,
  registers: [registry],
});

export const configReloads = new Counter({
  name: 'ratekeeper_config_reloads_total',
  help: 'Config reloads by result (success, error); on error the previous config stays in force.',
  labelNames: ['result'] as const,
  registers: [registry],
});

/** `descriptors[3].entries[0].key` → `descriptors[].entries[].key`, a bounded label value. */
export const fieldLabel = (field: string): string => field.replace(/\[\d+\]/g, '[]');

export const storeFailures = new Counter({
  name: 'ratekeeper_store_failures_total',
  help: 'Store calls that failed (backend unreachable or timed out), by failure mode in force.',
  labelNames: ['mode'] as const,
  registers: [registry],
});
