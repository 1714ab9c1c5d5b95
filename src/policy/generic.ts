/**
 * Generic domains, pure: which configured rule each request descriptor selects (as envoyproxy/
 * ratelimit matches), the store operations that follow, and the Envoy response built from the
 * store's answer. Windows slide (contract §6); everything else reads as envoyproxy/ratelimit.
 */
import { createHash } from 'node:crypto';
import type { Duration } from '@bufbuild/protobuf/wkt';
import type { RateLimitDescriptor_Entry } from '../../gen/envoy/extensions/common/ratelimit/v3/ratelimit_pb.js';
import {
  type RateLimitRequest,
  type RateLimitResponse,
  RateLimitResponse_Code,
  type RateLimitResponse_DescriptorStatus,
  RateLimitResponse_RateLimit_Unit,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { RateLimitUnit } from '../../gen/envoy/type/v3/ratelimit_unit_pb.js';
import {
  exactKey,
  type GenericDomain,
  type GenericUnit,
  type Rule,
  type RuleLevel,
  type RuleLimit,
  UNIT_MS,
} from '../config/generic.js';
import { invalid } from '../errors.js';
import type { Decision, DecisionResult, WindowOp } from '../store/store.js';
import { descriptorStatus, durationOf, headerValue, rateLimit, rlsResponse } from './rls-messages.js';

/** What envoyproxy/ratelimit reports as limit_remaining for an unlimited descriptor (MaxUint32). */
export const UNLIMITED_REMAINING = 4_294_967_295;

/** Descriptor keys longer than this are hashed, so a huge value cannot make a huge store key. */
export const MAX_KEY_BODY = 256;

/** The rule a descriptor selected, and which entries count as their wildcard (share_threshold). */
export interface Match {
  readonly rule: Rule;
  readonly limit: RuleLimit;
  /** Per entry index: the wildcard value to count under instead of the entry's own value. */
  readonly shared?: readonly (string | undefined)[];
}

type Entry = Pick<RateLimitDescriptor_Entry, 'key' | 'value'>;

/**
 * The most specific rule for a descriptor's entries, as envoyproxy/ratelimit finds it: level by
 * level, key+value first, then the first wildcard whose prefix matches, then the key alone; a rule
 * applies only when its depth equals the number of entries.
 */
export function findRule(root: RuleLevel, entries: readonly Entry[]): Match | undefined {
  let level = root;
  let shared: (string | undefined)[] | undefined;
  const last = entries.length - 1;
  for (let i = 0; i <= last; i++) {
    const e = entries[i]!;
    let node = level.exact.get(exactKey(e.key, e.value));
    if (!node) {
      for (const w of level.wildcards) {
        if (w.key === e.key && e.value.startsWith(w.prefix!)) {
          node = w;
          if (w.shareThreshold) {
            shared ??= [];
            shared[i] = w.value;
          }
          break;
        }
      }
    }
    node ??= level.byKey.get(e.key);
    if (!node) return undefined;
    if (i === last) {
      if (!node.limit) return undefined;
      return shared ? { rule: node, limit: node.limit, shared } : { rule: node, limit: node.limit };
    }
    if (node.children.size === 0) return undefined;
    level = node.children;
  }
  return undefined;
}

/** How one descriptor is answered. */
export type Slot =
  | { readonly kind: 'none' }
  | { readonly kind: 'unlimited' }
  | {
      readonly kind: 'limit';
      /** Index of its op in the decision. */
      readonly op: number;
      readonly unit: GenericUnit;
      readonly requestsPerUnit: number;
      readonly name: string;
      readonly shadow: boolean;
    };

export interface GenericPlan {
  /** Non-atomic: each descriptor's window counts on its own, as envoyproxy/ratelimit counts. */
  readonly decision: Omit<Decision, 'ops'> & { ops: WindowOp[] };
  /** One per request descriptor, in order. */
  readonly slots: readonly Slot[];
}

const NONE: Slot = { kind: 'none' };
const UNLIMITED: Slot = { kind: 'unlimited' };

const OVERRIDE_UNITS: Partial<Record<RateLimitUnit, GenericUnit>> = {
  [RateLimitUnit.SECOND]: 'second',
  [RateLimitUnit.MINUTE]: 'minute',
  [RateLimitUnit.HOUR]: 'hour',
  [RateLimitUnit.DAY]: 'day',
};

const RESPONSE_UNITS: Record<GenericUnit, RateLimitResponse_RateLimit_Unit> = {
  second: RateLimitResponse_RateLimit_Unit.SECOND,
  minute: RateLimitResponse_RateLimit_Unit.MINUTE,
  hour: RateLimitResponse_RateLimit_Unit.HOUR,
  day: RateLimitResponse_RateLimit_Unit.DAY,
};

// Separators of the key body, escaped inside values so distinct descriptors never share a key.
const SPECIAL = /[%{}|=]/;
const SPECIAL_ALL = /[%{}|=]/g;
const esc = (s: string): string =>
  SPECIAL.test(s) ? s.replace(SPECIAL_ALL, (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`) : s;

/**
 * The store key of a descriptor's window: `g:{domain|k1=v1|k2=v2}:unit`. The braces are the Redis
 * Cluster hash tag, so each descriptor's window lives on its own slot; the unit keeps windows of
 * different lengths apart (as envoyproxy/ratelimit's per-unit window start does).
 */
export function windowKey(
  domain: string,
  entries: readonly Entry[],
  unit: GenericUnit,
  shared?: readonly (string | undefined)[],
): string {
  let body = esc(domain);
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    body += `|${esc(e.key)}=${esc(shared?.[i] ?? e.value)}`;
  }
  if (body.length > MAX_KEY_BODY) body = `#${createHash('sha256').update(body).digest('base64url')}`;
  return `g:{${body}}:${unit}`;
}

/**
 * Turns a request into one non-atomic decision. `domain` undefined (not configured) limits
 * nothing. Replaced limits (`replaces`) drop out, as in envoyproxy/ratelimit.
 */
export function planGeneric(domain: GenericDomain | undefined, req: RateLimitRequest): GenericPlan {
  const n = req.descriptors.length;
  const slots: Slot[] = new Array(n).fill(NONE);
  const ops: WindowOp[] = [];
  if (!domain) return { decision: { ops, atomic: false }, slots };

  const matches = new Array<Match | undefined>(n);
  let replaced: Set<string> | undefined;
  for (let i = 0; i < n; i++) {
    const d = req.descriptors[i]!;
    if (d.limit) continue;
    const m = findRule(domain.root, d.entries);
    matches[i] = m;
    if (m && m.limit.replaces.length > 0) {
      replaced ??= new Set();
      for (const r of m.limit.replaces) replaced.add(r);
    }
  }

  for (let i = 0; i < n; i++) {
    const d = req.descriptors[i]!;
    // A descriptor's own hits_addend wins, 0 included (check without counting); else the request's, at least 1.
    const cost = d.hitsAddend !== undefined ? Number(d.hitsAddend) : Math.max(1, req.hitsAddend);
    let unit: GenericUnit;
    let requestsPerUnit: number;
    let name = '';
    let shadow = false;
    let shared: readonly (string | undefined)[] | undefined;
    if (d.limit) {
      // Envoy's per-descriptor override replaces the configured rule entirely (never shadowed).
      const u = OVERRIDE_UNITS[d.limit.unit];
      if (!u) throw invalid(`descriptors[${i}].limit.unit`, `unsupported unit ${d.limit.unit}`);
      unit = u;
      requestsPerUnit = d.limit.requestsPerUnit;
    } else {
      const m = matches[i];
      if (!m) continue;
      if (m.limit.unlimited) {
        slots[i] = UNLIMITED;
        continue;
      }
      if (m.limit.name !== '' && replaced?.has(m.limit.name)) continue;
      unit = m.limit.unit;
      requestsPerUnit = m.limit.requestsPerUnit;
      name = m.limit.name;
      shadow = m.rule.shadowMode;
      shared = m.shared;
    }
    const op: WindowOp = {
      kind: 'window',
      key: windowKey(domain.domain, d.entries, unit, shared),
      limit: requestsPerUnit,
      windowMs: UNIT_MS[unit],
      cost,
    };
    if (shadow) op.shadow = true;
    slots[i] = { kind: 'limit', op: ops.length, unit, requestsPerUnit, name, shadow };
    ops.push(op);
  }
  return { decision: { ops, atomic: false }, slots };
}

/** Response header names for the binding limit, as envoyproxy/ratelimit's optional custom headers. */
export interface GenericHeaderNames {
  limit: string;
  remaining: string;
  reset: string;
}

/** envoyproxy/ratelimit's defaults when LIMIT_RESPONSE_HEADERS_ENABLED is set. */
export const DEFAULT_GENERIC_HEADERS: GenericHeaderNames = {
  limit: 'RateLimit-Limit',
  remaining: 'RateLimit-Remaining',
  reset: 'RateLimit-Reset',
};

const seconds = (ms: number): Duration => durationOf(BigInt(Math.ceil(Math.max(0, ms) / 1000)), 0);

/**
 * Builds Envoy's answer from the plan and the store's result (undefined when there were no ops).
 * duration_until_reset: on OVER_LIMIT the time until this request would be admitted, on OK the
 * time until the whole limit is available again (contract §4), in whole seconds rounded up.
 * A shadow-mode descriptor over its limit answers OK with limit_remaining 0, as envoyproxy/ratelimit
 * does, and never makes the overall code OVER_LIMIT.
 */
export function genericResponse(
  plan: GenericPlan,
  result: DecisionResult | undefined,
  headers?: GenericHeaderNames,
): RateLimitResponse {
  let overall = RateLimitResponse_Code.OK;
  let binding: RateLimitResponse_DescriptorStatus | undefined;
  let bindingOver = false;
  const statuses = plan.slots.map((slot) => {
    if (slot.kind === 'none') return descriptorStatus(RateLimitResponse_Code.OK, 0);
    if (slot.kind === 'unlimited') return descriptorStatus(RateLimitResponse_Code.OK, UNLIMITED_REMAINING);
    const state = result?.states[slot.op];
    if (!state) throw new Error(`genericResponse: no store state for op ${slot.op}`);
    const over = !state.ok;
    // retryMs is -1 when the cost alone exceeds the limit: it never fits, so report the full reset.
    const untilMs = over && state.retryMs >= 0 ? state.retryMs : state.resetMs;
    const st = descriptorStatus(
      over && !slot.shadow ? RateLimitResponse_Code.OVER_LIMIT : RateLimitResponse_Code.OK,
      over ? 0 : state.remaining,
      rateLimit(slot.requestsPerUnit, RESPONSE_UNITS[slot.unit], slot.name),
      seconds(untilMs),
    );
    const enforcedOver = over && !slot.shadow;
    if (enforcedOver) overall = RateLimitResponse_Code.OVER_LIMIT;
    // The binding limit: the last enforced one over its limit, else the one with least remaining.
    if (enforcedOver) {
      binding = st;
      bindingOver = true;
    } else if (!bindingOver && (!binding || st.limitRemaining < binding.limitRemaining)) {
      binding = st;
    }
    return st;
  });
  if (!headers || !binding?.currentLimit) return rlsResponse(overall, statuses);
  return rlsResponse(overall, statuses, [
    headerValue(headers.limit, String(binding.currentLimit.requestsPerUnit)),
    headerValue(headers.remaining, String(binding.limitRemaining)),
    headerValue(headers.reset, String(binding.durationUntilReset?.seconds ?? 0n)),
  ]);
}
