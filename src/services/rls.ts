import type { RateLimitDescriptor } from '../../gen/envoy/extensions/common/ratelimit/v3/ratelimit_pb.js';
import {
  type RateLimitRequest,
  RateLimitResponse_Code,
  RateLimitService,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { RateLimitUnitSchema } from '../../gen/envoy/type/v3/ratelimit_unit_pb.js';
import { invalid, RkError } from '../errors.js';
import { rlsDecisions, rlsDuration, UNKNOWN_DOMAIN } from '../metrics.js';
import { StoreUnavailableError } from '../store/store.js';
import { bind, type ServiceBinding } from '../transport/types.js';
import type { Deps } from './deps.js';
import { decideGeneric } from './rls-generic.js';
import { decideInference } from './rls-inference.js';

/** Envoy sends a handful; far more is a misconfiguration or abuse, refused before any work. */
export const MAX_DESCRIPTORS = 64;
export const MAX_ENTRIES = 64;
/** Far above any real per-request cost (tokens included); larger values are bugs or overflow. */
export const MAX_HITS_ADDEND = 1_000_000_000;

const UNITS = new Set(RateLimitUnitSchema.values.map((v) => v.number));

const validateDescriptor = (d: RateLimitDescriptor, i: number): void => {
  const at = `descriptors[${i}]`;
  if (d.entries.length === 0) throw invalid(`${at}.entries`, 'a descriptor needs at least one entry');
  if (d.entries.length > MAX_ENTRIES) {
    throw invalid(`${at}.entries`, `at most ${MAX_ENTRIES} entries, got ${d.entries.length}`);
  }
  d.entries.forEach((e, j) => {
    if (e.key === '') throw invalid(`${at}.entries[${j}].key`, 'must not be empty');
    if (e.value === '') throw invalid(`${at}.entries[${j}].value`, 'must not be empty');
  });
  if (d.hitsAddend !== undefined && d.hitsAddend > BigInt(MAX_HITS_ADDEND)) {
    throw invalid(`${at}.hits_addend`, `at most ${MAX_HITS_ADDEND}, got ${d.hitsAddend}`);
  }
  if (d.limit && !UNITS.has(d.limit.unit)) {
    throw invalid(`${at}.limit.unit`, `unknown unit ${d.limit.unit}`);
  }
};

/** Refuses malformed requests with INVALID_ARGUMENT naming the field (contract §8). */
export const validate = (req: RateLimitRequest): void => {
  if (req.domain === '') throw invalid('domain', 'must not be empty');
  if (req.descriptors.length === 0) throw invalid('descriptors', 'at least one descriptor is required');
  if (req.descriptors.length > MAX_DESCRIPTORS) {
    throw invalid('descriptors', `at most ${MAX_DESCRIPTORS} descriptors, got ${req.descriptors.length}`);
  }
  if (req.hitsAddend > MAX_HITS_ADDEND) {
    throw invalid('hits_addend', `at most ${MAX_HITS_ADDEND}, got ${req.hitsAddend}`);
  }
  req.descriptors.forEach(validateDescriptor);
};

/** The store could not answer and the failure mode did not admit: the caller may retry elsewhere. */
const unavailable = (err: unknown): never => {
  if (err instanceof StoreUnavailableError)
    throw new RkError('UNAVAILABLE', `store unavailable: ${err.message}`);
  throw err;
};

const CODE_LABEL: Record<RateLimitResponse_Code, string> = {
  [RateLimitResponse_Code.UNKNOWN]: 'UNKNOWN',
  [RateLimitResponse_Code.OK]: 'OK',
  [RateLimitResponse_Code.OVER_LIMIT]: 'OVER_LIMIT',
};

interface DomainMetrics {
  decisions: Record<RateLimitResponse_Code, { inc(): void }>;
  duration: { observe(seconds: number): void };
}

/**
 * Labelled metric children per domain label, resolved once: a label lookup hashes the label set,
 * which costs on every call otherwise. Bounded by the configured domains plus UNKNOWN_DOMAIN.
 */
const domainMetrics = new Map<string, DomainMetrics>();
const metricsFor = (domain: string): DomainMetrics => {
  let m = domainMetrics.get(domain);
  if (!m) {
    const code = (c: RateLimitResponse_Code) => rlsDecisions.labels({ domain, code: CODE_LABEL[c] });
    m = {
      decisions: {
        [RateLimitResponse_Code.UNKNOWN]: code(RateLimitResponse_Code.UNKNOWN),
        [RateLimitResponse_Code.OK]: code(RateLimitResponse_Code.OK),
        [RateLimitResponse_Code.OVER_LIMIT]: code(RateLimitResponse_Code.OVER_LIMIT),
      },
      duration: rlsDuration.labels({ domain }),
    };
    domainMetrics.set(domain, m);
  }
  return m;
};

export const rlsBinding = (deps: Deps): ServiceBinding =>
  bind(RateLimitService, {
    async shouldRateLimit(req, ctx) {
      validate(req);
      const started = performance.now();
      const config = deps.config();
      const known = config.domains.has(req.domain) || config.inference?.domain === req.domain;
      const domain = known ? req.domain : UNKNOWN_DOMAIN;
      const decision =
        config.inference?.domain === req.domain ? decideInference(req, deps, ctx) : decideGeneric(req, deps);
      const res = await decision.catch(unavailable);
      const metrics = metricsFor(domain);
      metrics.decisions[res.overallCode].inc();
      metrics.duration.observe((performance.now() - started) / 1000);
      return res;
    },
  });
