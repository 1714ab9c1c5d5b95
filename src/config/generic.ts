/**
 * Generic domains in envoyproxy/ratelimit's YAML format: the schema of one file, and its
 * compilation into an immutable matcher (maps by key and key/value, wildcard lists per level)
 * that the policy walks on the hot path.
 */
import { z } from 'zod';
import { ConfigError, type ConfigIssue, type ConfigSource, type FieldPath, formatPath } from './errors.js';

export const GENERIC_UNITS = ['second', 'minute', 'hour', 'day'] as const;
export type GenericUnit = (typeof GENERIC_UNITS)[number];

export const UNIT_MS: Readonly<Record<GenericUnit, number>> = {
  second: 1_000,
  minute: 60_000,
  hour: 3_600_000,
  day: 86_400_000,
};

const UINT32_MAX = 4_294_967_295;

const required =
  (what: string) =>
  (iss: { input: unknown }): string =>
    iss.input === undefined ? 'required' : `expected ${what}`;

// envoyproxy/ratelimit upper-cases the unit before looking it up, so `MINUTE` and `Minute` load too.
const unitSchema = z
  .string({ error: required('one of second, minute, hour, day') })
  .transform((s) => s.toLowerCase())
  .pipe(z.enum(GENERIC_UNITS, { error: () => `expected one of ${GENERIC_UNITS.join(', ')}` }));

// Go's YAML decoder accepts a number or boolean scalar for a string field; so do we.
const scalarString = (what: string) =>
  z.union([z.string(), z.number(), z.boolean()], { error: required(what) }).transform((v) => String(v));

const flag = z.boolean({ error: 'expected true or false' }).optional();

const rateLimitSchema = z
  .strictObject({
    unit: unitSchema.optional(),
    requests_per_unit: z
      .int({ error: required('an integer') })
      .min(0, 'must be >= 0')
      .max(UINT32_MAX, `must be <= ${UINT32_MAX}`)
      .optional(),
    unlimited: flag,
    name: scalarString('a string').optional(),
    replaces: z
      .array(
        z.strictObject({ name: scalarString('a string').pipe(z.string().min(1, 'must not be empty')) }),
        {
          error: 'expected a list of {name}',
        },
      )
      .optional(),
  })
  .superRefine((r, ctx) => {
    if (r.unlimited) {
      if (r.unit !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['unit'], message: 'must not be set when unlimited is true' });
      }
    } else {
      if (r.unit === undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['unit'],
          message: 'required (one of second, minute, hour, day)',
        });
      }
      if (r.requests_per_unit === undefined) {
        ctx.addIssue({ code: 'custom', path: ['requests_per_unit'], message: 'required' });
      }
    }
    r.replaces?.forEach((rep, i) => {
      if (r.name !== undefined && rep.name === r.name) {
        ctx.addIssue({
          code: 'custom',
          path: ['replaces', i, 'name'],
          message: 'must not name its own rate limit',
        });
      }
    });
  });

interface DescriptorDoc {
  key: string;
  value?: string | undefined;
  rate_limit?: z.output<typeof rateLimitSchema> | undefined;
  shadow_mode?: boolean | undefined;
  detailed_metric?: boolean | undefined;
  value_to_metric?: boolean | undefined;
  share_threshold?: boolean | undefined;
  descriptors?: DescriptorDoc[] | undefined;
}

const descriptorSchema: z.ZodType<DescriptorDoc> = z.lazy(() =>
  z.strictObject({
    key: scalarString('a string').pipe(z.string().min(1, 'must not be empty')),
    value: scalarString('a string').optional(),
    rate_limit: rateLimitSchema.optional(),
    shadow_mode: flag,
    detailed_metric: flag,
    value_to_metric: flag,
    share_threshold: flag,
    descriptors: descriptorListSchema.optional(),
  }),
);

const descriptorListSchema = z.array(descriptorSchema, { error: 'expected a list of descriptors' });

export const genericDomainSchema = z.strictObject({
  domain: scalarString('a string').pipe(z.string().min(1, 'must not be empty')),
  descriptors: descriptorListSchema.nullish(),
});

/** A `rate_limit` block as it applies. */
export type RuleLimit =
  | {
      readonly unlimited: false;
      readonly unit: GenericUnit;
      readonly requestsPerUnit: number;
      /** '' when unnamed (as in the response's current_limit.name). */
      readonly name: string;
      readonly replaces: readonly string[];
    }
  | { readonly unlimited: true; readonly name: string; readonly replaces: readonly string[] };

/** One configured descriptor entry (a node of the descriptor tree). */
export interface Rule {
  readonly key: string;
  /** Absent for a key-only (default) rule; for a wildcard, the value with its trailing `*`. */
  readonly value?: string;
  /** For a wildcard rule: the value without its trailing `*`. */
  readonly prefix?: string;
  readonly limit?: RuleLimit;
  readonly shadowMode: boolean;
  /** Metrics options, accepted for compatibility with envoyproxy/ratelimit files. */
  readonly detailedMetric: boolean;
  readonly valueToMetric: boolean;
  /** A wildcard rule whose matching values all count against one shared window. */
  readonly shareThreshold: boolean;
  readonly children: RuleLevel;
  /** Where it was configured, e.g. `descriptors[0].descriptors[1]`, for logs. */
  readonly field: string;
}

/** The rules of one nesting level, indexed for matching. */
export interface RuleLevel {
  /** By `key + '\0' + value`. */
  readonly exact: ReadonlyMap<string, Rule>;
  /** Values ending in `*`, matched by prefix in the order configured. */
  readonly wildcards: readonly Rule[];
  /** Key-only rules: the default for any value of the key. */
  readonly byKey: ReadonlyMap<string, Rule>;
  readonly size: number;
}

export interface GenericDomain {
  readonly domain: string;
  /** The file that configured it. */
  readonly file: string;
  readonly root: RuleLevel;
}

export const exactKey = (key: string, value: string): string => `${key}\u0000${value}`;

export const EMPTY_LEVEL: RuleLevel = Object.freeze({
  exact: new Map<string, Rule>(),
  wildcards: Object.freeze([]) as readonly Rule[],
  byKey: new Map<string, Rule>(),
  size: 0,
});

/** Validates one generic-domain YAML document and compiles it; throws ConfigError naming line and field. */
export const parseGenericDomain = (doc: unknown, source: ConfigSource): GenericDomain => {
  const parsed = genericDomainSchema.safeParse(doc);
  if (!parsed.success) throw new ConfigError(source.fromZod(parsed.error));
  const issues: ConfigIssue[] = [];
  const root = compileLevel(parsed.data.descriptors ?? [], ['descriptors'], source, issues);
  if (issues.length > 0) throw new ConfigError(issues);
  return Object.freeze({ domain: parsed.data.domain, file: source.file, root });
};

const compileLevel = (
  docs: readonly DescriptorDoc[],
  at: FieldPath,
  source: ConfigSource,
  issues: ConfigIssue[],
): RuleLevel => {
  if (docs.length === 0) return EMPTY_LEVEL;
  const exact = new Map<string, Rule>();
  const wildcards: Rule[] = [];
  const byKey = new Map<string, Rule>();
  const seen = new Set<string>();
  docs.forEach((d, i) => {
    const path = [...at, i];
    // envoyproxy/ratelimit treats an empty value as no value.
    const value = d.value === '' ? undefined : d.value;
    const id = value === undefined ? d.key : exactKey(d.key, value);
    if (seen.has(id)) {
      const what = value === undefined ? `key '${d.key}'` : `key '${d.key}' with value '${value}'`;
      issues.push(source.issue(path, `duplicate descriptor: ${what} is already configured at this level`));
      return;
    }
    seen.add(id);
    if (d.share_threshold && !value?.endsWith('*')) {
      issues.push(
        source.issue([...path, 'share_threshold'], "only allowed on a wildcard value (ending in '*')"),
      );
    }
    const rule: Rule = Object.freeze({
      key: d.key,
      ...(value === undefined ? {} : { value }),
      ...(value?.endsWith('*') ? { prefix: value.slice(0, -1) } : {}),
      ...(d.rate_limit ? { limit: compileLimit(d.rate_limit) } : {}),
      shadowMode: d.shadow_mode ?? false,
      detailedMetric: d.detailed_metric ?? false,
      valueToMetric: d.value_to_metric ?? false,
      shareThreshold: d.share_threshold ?? false,
      children: compileLevel(d.descriptors ?? [], [...path, 'descriptors'], source, issues),
      field: formatPath(path),
    });
    if (value === undefined) byKey.set(d.key, rule);
    else {
      // A wildcard is also found by its literal value first, as in envoyproxy/ratelimit.
      exact.set(id, rule);
      if (value.endsWith('*')) wildcards.push(rule);
    }
  });
  return Object.freeze({ exact, wildcards: Object.freeze(wildcards), byKey, size: docs.length });
};

const compileLimit = (r: z.output<typeof rateLimitSchema>): RuleLimit => {
  const replaces = Object.freeze((r.replaces ?? []).map((x) => x.name));
  const name = r.name ?? '';
  if (r.unlimited) return Object.freeze({ unlimited: true, name, replaces });
  // Both are present: the schema's refinement requires them when not unlimited.
  return Object.freeze({
    unlimited: false,
    unit: r.unit!,
    requestsPerUnit: r.requests_per_unit!,
    name,
    replaces,
  });
};
