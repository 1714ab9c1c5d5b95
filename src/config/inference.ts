/**
 * The inference policy file (a YAML document with `kind: inference-policy`): tiers, models and static
 * keys, parsed once into immutable values with precomputed lookups (contract §2).
 */
import { z } from 'zod';
import { hashWithPepper } from '../keys/hash.js';
import type { KeyCaps, KeyRecord } from '../keys/types.js';
import type { SignalSettings } from '../policy/signals.js';
import { signalsSchema } from '../report/config.js';
import { durationMs } from './duration.js';
import { formatPath } from './errors.js';

export const WINDOWS = { second: 1_000, minute: 60_000, hour: 3_600_000, day: 86_400_000 } as const;
export type WindowName = keyof typeof WINDOWS;

/** A sliding-window limit: `limit` units in any rolling window of `windowMs`. */
export interface Limit {
  readonly limit: number;
  readonly window: WindowName;
  readonly windowMs: number;
}

/** Per-key limits of a tier; an absent limit is unlimited. */
export interface Tier {
  readonly name: string;
  readonly requests?: Limit;
  readonly tokens?: Limit;
  readonly concurrent?: number;
}

/** Per account × model limits for one tier. */
export interface ModelLimits {
  readonly requests?: Limit;
  readonly tokensIn?: Limit;
  readonly tokensOut?: Limit;
  readonly concurrent?: number;
}

export interface Price {
  /** Micro-dollars per million tokens (= USD per token × 10^12), integers so spend stays exact. */
  readonly inputMicrosPerMillion: number;
  readonly outputMicrosPerMillion: number;
}

export interface Model {
  readonly id: string;
  readonly price?: Price;
  readonly leaseMs: number;
  /** Retry-After advised on CONCURRENT_LIMIT_EXCEEDED for this model (the policy's unless set). */
  readonly concurrencyRetryAfterMs: number;
  /** By tier name; `*` applies to tiers not listed. */
  readonly limits: ReadonlyMap<string, ModelLimits>;
}

/** The models entry that applies to models not listed (limits per model id, price, lease). */
export const ANY_MODEL = '*';

export interface InferencePolicy {
  readonly domain: string;
  readonly unknownKeys: 'allow' | 'deny';
  readonly pepper: string;
  readonly timezone: string;
  readonly defaultTier: string;
  readonly leaseMs: number;
  /**
   * Retry-After advised on CONCURRENT_LIMIT_EXCEEDED, capped by the time until the oldest lease
   * expires. A slot frees when a request ends, which no one can predict; the lease expiry is only
   * an upper bound, and advising it would make clients wait minutes for a slot freed in seconds.
   */
  readonly concurrencyRetryAfterMs: number;
  readonly tiers: ReadonlyMap<string, Tier>;
  readonly models: ReadonlyMap<string, Model>;
  readonly keysById: ReadonlyMap<string, KeyRecord>;
  /** By hex SHA-256 of pepper + raw key. */
  readonly keysByHash: ReadonlyMap<string, KeyRecord>;
  /** Abuse-signal thresholds and alert shares (ReportService). */
  readonly signals: SignalSettings;
}

/** Where a policy document came from, so errors can name file and line. */
export interface PolicySource {
  file: string;
  /** 1-based line of the node at `path` in the document, when known. */
  lineOf(path: readonly (string | number)[]): number | undefined;
}

/** A policy document that does not validate; names file, line and field. */
export class PolicyError extends Error {
  override name = 'PolicyError';
  constructor(
    readonly file: string,
    readonly line: number | undefined,
    readonly field: string,
    readonly detail: string,
  ) {
    super(`${file}${line === undefined ? '' : `:${line}`}: ${field}: ${detail}`);
  }
}

export const DEFAULT_TIER_REQUESTS: Limit = { limit: 60, window: 'minute', windowMs: WINDOWS.minute };
export const DEFAULT_TIER_CONCURRENT = 5;
export const DEFAULT_LEASE_MS = 10 * 60_000;
export const DEFAULT_CONCURRENCY_RETRY_AFTER_MS = 1_000;
export const DEFAULT_PEPPER_ENV = 'RATEKEEPER_KEY_PEPPER';
/** Upper bound of any count in the policy, far above real use and exact in a double. */
export const MAX_COUNT = 1e12;

const ID = /^[A-Za-z0-9._@-]{1,128}$/;
const MODEL_ID = /^[A-Za-z0-9._:/@+-]{1,200}$/;
const WINDOW_ALIASES: Record<string, WindowName> = {
  s: 'second',
  sec: 'second',
  second: 'second',
  m: 'minute',
  min: 'minute',
  minute: 'minute',
  h: 'hour',
  hour: 'hour',
  d: 'day',
  day: 'day',
};

const count = z.number().int().min(0).max(MAX_COUNT);
const windowName = z
  .string()
  .transform((s, ctx) => {
    const w = WINDOW_ALIASES[s.trim().toLowerCase()];
    if (!w) ctx.addIssue({ code: 'custom', message: `unknown window "${s}" (second, minute, hour, day)` });
    return w ?? 'minute';
  })
  .pipe(z.enum(['second', 'minute', 'hour', 'day']));

const mkLimit = (limit: number, window: WindowName): Limit => ({ limit, window, windowMs: WINDOWS[window] });

/** `{limit, window}`, `"60/minute"`, or a bare number (per minute). null/blank: unlimited. */
const limitSpec = z
  .union([
    count.transform((n) => mkLimit(n, 'minute')),
    z
      .strictObject({ limit: count, window: windowName.default('minute') })
      .transform((o) => mkLimit(o.limit, o.window)),
    z.string().transform((s, ctx) => {
      const m = /^\s*(\d+)\s*(?:\/|per)\s*([a-z]+)\s*$/i.exec(s);
      const n = m ? Number(m[1]) : Number.NaN;
      const w = m ? WINDOW_ALIASES[m[2]!.toLowerCase()] : undefined;
      if (!w || !Number.isSafeInteger(n) || n > MAX_COUNT) {
        ctx.addIssue({ code: 'custom', message: `expected "N/window" (e.g. "60/minute"), got "${s}"` });
        return z.NEVER;
      }
      return mkLimit(n, w);
    }),
  ])
  .nullable();

const duration = z.union([
  z
    .number()
    .positive()
    .transform((s) => Math.round(s * 1000)),
  z.string().transform((s, ctx) => {
    const ms = durationMs(s);
    if (ms === undefined) {
      ctx.addIssue({ code: 'custom', message: `expected a duration like "10m", "90s", "1h", got "${s}"` });
      return z.NEVER;
    }
    return ms;
  }),
]);

/** A Retry-After: a duration above zero. */
const retryAfter = duration.refine((ms) => ms > 0, { message: 'must be above zero' });

const usd = z.number().min(0).max(1e6);
const concurrent = count.nullable();

const tierSchema = z
  .strictObject({
    requests: limitSpec.optional(),
    tokens: limitSpec.optional(),
    concurrent: concurrent.optional(),
  })
  .nullable();

const modelLimitsSchema = z.strictObject({
  requests: limitSpec.optional(),
  tokens_in: limitSpec.optional(),
  tokens_out: limitSpec.optional(),
  concurrent: concurrent.optional(),
});

const modelSchema = z
  .strictObject({
    price: z.strictObject({ input_per_million_usd: usd, output_per_million_usd: usd }).optional(),
    lease: duration.optional(),
    /** Overrides the top-level concurrency_retry_after for requests to this model. */
    concurrency_retry_after: retryAfter.optional(),
    limits: z.record(z.string(), modelLimitsSchema.nullable()).optional(),
  })
  .nullable();

const keySchema = z
  .strictObject({
    id: z.string().regex(ID, 'letters, digits, . _ @ - (1-128)'),
    hash: z
      .string()
      .regex(/^sha256:[0-9a-f]{64}$/, 'expected "sha256:" and 64 lower-case hex digits')
      .optional(),
    key_env: z.string().min(1).optional(),
    name: z.string().optional(),
    account: z.string().regex(ID, 'letters, digits, . _ @ - (1-128)').optional(),
    tier: z.string().optional(),
    max_tokens: count.nullable().optional(),
    monthly_tokens: count.nullable().optional(),
    monthly_spend_usd: usd.nullable().optional(),
    daily_spend_usd: usd.nullable().optional(),
    disabled: z.boolean().optional(),
    disabled_reason: z.string().optional(),
  })
  .refine((k) => !(k.hash && k.key_env), { message: 'set hash or key_env, not both', path: ['key_env'] });

const policySchema = z.strictObject({
  kind: z.literal('inference-policy'),
  domain: z.string().min(1).default('inference'),
  unknown_keys: z.enum(['allow', 'deny']).default('allow'),
  pepper: z.string().optional(),
  pepper_env: z.string().min(1).optional(),
  timezone: z.string().default('UTC'),
  default_tier: z.string().optional(),
  lease: duration.optional(),
  /**
   * Retry-After on CONCURRENT_LIMIT_EXCEEDED (default 1s), capped by the time until the oldest slot's
   * lease expires: a slot frees when some request ends, so there is no true time until admission.
   */
  concurrency_retry_after: retryAfter.optional(),
  tiers: z.record(z.string().regex(ID), tierSchema).optional(),
  models: z.record(z.union([z.literal('*'), z.string().regex(MODEL_ID)]), modelSchema).optional(),
  keys: z.array(keySchema).optional(),
  signals: signalsSchema.optional(),
});

const usdToMicros = (v: number): number => Math.round(v * 1e6);

/**
 * Validates a parsed YAML document of kind `inference-policy`. Secrets (pepper, raw static keys)
 * come from `env`; raw keys are hashed here and never kept.
 */
export function parseInferencePolicy(
  doc: unknown,
  source: PolicySource,
  env: NodeJS.ProcessEnv = process.env,
): InferencePolicy {
  const fail = (path: readonly (string | number)[], detail: string): never => {
    throw new PolicyError(source.file, source.lineOf(path), formatPath(path) || '(document)', detail);
  };
  const parsed = policySchema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const path = issue.path.filter((p): p is string | number => typeof p !== 'symbol');
    if (issue.code === 'unrecognized_keys') fail([...path, issue.keys[0]!], 'unknown field');
    fail(path, issue.message);
  }
  const p = parsed.data!;

  try {
    new Intl.DateTimeFormat('en-US', { timeZone: p.timezone });
  } catch {
    fail(['timezone'], `unknown IANA time zone "${p.timezone}"`);
  }

  let pepper = p.pepper ?? '';
  if (p.pepper === undefined) {
    const name = p.pepper_env ?? DEFAULT_PEPPER_ENV;
    pepper = env[name] ?? '';
    if (p.pepper_env !== undefined && pepper === '')
      fail(['pepper_env'], `environment variable ${name} is not set`);
  }

  const tiers = new Map<string, Tier>();
  for (const [name, t] of Object.entries(p.tiers ?? {})) {
    // Absent requests/concurrent take the contract defaults; an explicit blank means unlimited.
    const requests = t?.requests === undefined ? DEFAULT_TIER_REQUESTS : (t.requests ?? undefined);
    const conc = t?.concurrent === undefined ? DEFAULT_TIER_CONCURRENT : (t.concurrent ?? undefined);
    tiers.set(name, Object.freeze({ name, requests, tokens: t?.tokens ?? undefined, concurrent: conc }));
  }
  const defaultTier = p.default_tier ?? (tiers.size > 0 ? tiers.keys().next().value! : 'default');
  if (!tiers.has(defaultTier)) {
    if (tiers.size > 0) fail(['default_tier'], `tier "${defaultTier}" is not defined under tiers`);
    tiers.set(
      defaultTier,
      Object.freeze({
        name: defaultTier,
        requests: DEFAULT_TIER_REQUESTS,
        concurrent: DEFAULT_TIER_CONCURRENT,
      }),
    );
  }

  const leaseMs = p.lease ?? DEFAULT_LEASE_MS;
  const concurrencyRetryAfterMs = p.concurrency_retry_after ?? DEFAULT_CONCURRENCY_RETRY_AFTER_MS;
  const models = new Map<string, Model>();
  for (const [id, m] of Object.entries(p.models ?? {})) {
    const limits = new Map<string, ModelLimits>();
    for (const [tier, l] of Object.entries(m?.limits ?? {})) {
      if (tier !== '*' && !tiers.has(tier))
        fail(['models', id, 'limits', tier], `tier "${tier}" is not defined`);
      limits.set(
        tier,
        Object.freeze({
          requests: l?.requests ?? undefined,
          tokensIn: l?.tokens_in ?? undefined,
          tokensOut: l?.tokens_out ?? undefined,
          concurrent: l?.concurrent ?? undefined,
        }),
      );
    }
    const price = m?.price
      ? Object.freeze({
          inputMicrosPerMillion: usdToMicros(m.price.input_per_million_usd),
          outputMicrosPerMillion: usdToMicros(m.price.output_per_million_usd),
        })
      : undefined;
    models.set(
      id,
      Object.freeze({
        id,
        price,
        leaseMs: m?.lease ?? leaseMs,
        concurrencyRetryAfterMs: m?.concurrency_retry_after ?? concurrencyRetryAfterMs,
        limits,
      }),
    );
  }

  const keysById = new Map<string, KeyRecord>();
  const keysByHash = new Map<string, KeyRecord>();
  (p.keys ?? []).forEach((k, i) => {
    if (keysById.has(k.id)) fail(['keys', i, 'id'], `duplicate key id "${k.id}"`);
    const tier = k.tier ?? defaultTier;
    if (!tiers.has(tier)) fail(['keys', i, 'tier'], `tier "${tier}" is not defined`);
    let hash = k.hash?.slice('sha256:'.length);
    if (k.key_env !== undefined) {
      const raw = env[k.key_env];
      if (!raw) fail(['keys', i, 'key_env'], `environment variable ${k.key_env} is not set`);
      hash = hashWithPepper(raw!, pepper);
    }
    if (hash !== undefined && keysByHash.has(hash)) fail(['keys', i], 'two keys share one hash');
    const caps: KeyCaps = {};
    if (k.max_tokens != null) caps.maxTokensPerRequest = k.max_tokens;
    if (k.monthly_tokens != null) caps.monthlyTokens = k.monthly_tokens;
    if (k.monthly_spend_usd != null) caps.monthlySpendMicros = usdToMicros(k.monthly_spend_usd);
    if (k.daily_spend_usd != null) caps.dailySpendMicros = usdToMicros(k.daily_spend_usd);
    const rec: KeyRecord = Object.freeze({
      id: k.id,
      ...(hash !== undefined ? { hash } : {}),
      account: k.account ?? k.id,
      tier,
      caps: Object.freeze(caps),
      disabled: k.disabled ?? false,
      ...(k.disabled_reason !== undefined ? { disabledReason: k.disabled_reason } : {}),
      ...(k.name !== undefined ? { name: k.name } : {}),
    });
    keysById.set(k.id, rec);
    if (hash !== undefined) keysByHash.set(hash, rec);
  });

  return Object.freeze({
    domain: p.domain,
    unknownKeys: p.unknown_keys,
    pepper,
    timezone: p.timezone,
    defaultTier,
    leaseMs,
    concurrencyRetryAfterMs,
    tiers,
    models,
    keysById,
    keysByHash,
    signals: p.signals ?? signalsSchema.parse({}),
  });
}
