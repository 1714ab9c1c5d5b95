/**
 * Store key names of the inference domain. Every key of one request carries the account's hash tag,
 * so a decision or settlement runs on one Redis Cluster node; variable parts are URI-encoded so no
 * value can forge a tag or another key's name. Raw API keys never appear: a key is named by its
 * policy/admin id (`k:<id>`) or its peppered hash (`h:<hex>`).
 */

/** Lease expiries per key are counted in a sliding window of this length (runaway/hung signal). */
export const EXPIRED_WINDOW_MS = 3_600_000;

const enc = encodeURIComponent;
// One request builds ~8 names of one account and key: the encoded parts are kept from the last call
// instead of re-encoding a 64-hex hash each time.
let lastAccount = '';
let lastTag = '{a:}';
const tag = (account: string): string => {
  if (account !== lastAccount) {
    lastTag = `{a:${enc(account)}}`;
    lastAccount = account;
  }
  return lastTag;
};
let lastRef = '';
let lastRefAccount = '';
let lastKey = '';
/** Key names for the key's ref. A key charged to itself (unregistered, no account hint) is named by
 * the tag alone plus `=`, which no encoded ref contains, instead of repeating its hash. */
const key = (account: string, ref: string): string => {
  if (ref !== lastRef || account !== lastRefAccount) {
    lastKey = account === ref ? `${tag(account)}:=` : `${tag(account)}:${enc(ref)}`;
    lastRef = ref;
    lastRefAccount = account;
  }
  return lastKey;
};
/** Budget counters keep the full name: renaming them would restart monthly and daily budgets. */
const budgetKey = (account: string, ref: string): string => `${tag(account)}:${enc(ref)}`;
const am = (account: string, model: string): string => `${tag(account)}:m:${enc(model)}`;

export const inferenceKeys = {
  keyRequests: (account: string, ref: string, windowMs: number) => `${key(account, ref)}:req:${windowMs}`,
  keyTokens: (account: string, ref: string, windowMs: number) => `${key(account, ref)}:tok:${windowMs}`,
  keySlots: (account: string, ref: string) => `${key(account, ref)}:conc`,
  keyExpired: (account: string, ref: string) => `${key(account, ref)}:expired`,
  /** Denied calls that came before Retry-After (report's retry-storm signal), counted by every instance. */
  keyEarlyRetries: (account: string, ref: string, windowMs: number) =>
    `${key(account, ref)}:early:${windowMs}`,
  monthlyTokens: (account: string, ref: string, month: string) => `${budgetKey(account, ref)}:mtok:${month}`,
  monthlySpend: (account: string, ref: string, month: string) => `${budgetKey(account, ref)}:mspend:${month}`,
  dailySpend: (account: string, ref: string, day: string) => `${budgetKey(account, ref)}:dspend:${day}`,
  modelRequests: (account: string, model: string, windowMs: number) =>
    `${am(account, model)}:req:${windowMs}`,
  modelTokensIn: (account: string, model: string, windowMs: number) => `${am(account, model)}:in:${windowMs}`,
  modelTokensOut: (account: string, model: string, windowMs: number) =>
    `${am(account, model)}:out:${windowMs}`,
  modelSlots: (account: string, model: string) => `${am(account, model)}:conc`,
  reservation: (account: string, requestId: string) => `${tag(account)}:res:${enc(requestId)}`,
  once: (account: string, requestId: string, suffix = '') =>
    `${tag(account)}:once:${enc(requestId)}${suffix}`,
};

export interface Periods {
  /** `YYYY-MM` and `YYYY-MM-DD` in the policy time zone. */
  month: string;
  day: string;
  monthStartMs: number;
  monthEndMs: number;
  dayStartMs: number;
  dayEndMs: number;
}

const formatters = new Map<string, Intl.DateTimeFormat>();
const formatter = (tz: string): Intl.DateTimeFormat => {
  let f = formatters.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: tz,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
    formatters.set(tz, f);
  }
  return f;
};

/** Wall-clock fields of `ms` in `tz`. */
const wall = (ms: number, tz: string) => {
  const parts: Record<string, number> = {};
  for (const p of formatter(tz).formatToParts(ms)) if (p.type !== 'literal') parts[p.type] = Number(p.value);
  return parts as { year: number; month: number; day: number; hour: number; minute: number; second: number };
};

/** UTC ms of local midnight starting y-m-d in tz (day may overflow; Date.UTC normalises it). */
const midnight = (y: number, m: number, d: number, tz: string): number => {
  const guess = Date.UTC(y, m - 1, d);
  let t = guess;
  // Two passes settle the zone offset, also across a DST change.
  for (let i = 0; i < 2; i++) {
    const w = wall(t, tz);
    const asUtc = Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second);
    t = guess - (asUtc - t);
  }
  return t;
};

const pad = (n: number) => String(n).padStart(2, '0');
const cache = new Map<string, Periods>();

/** The calendar month and day containing nowMs in tz (cached until the day ends). */
export function periodsAt(nowMs: number, tz: string): Periods {
  const hit = cache.get(tz);
  if (hit && nowMs >= hit.dayStartMs && nowMs < hit.dayEndMs) return hit;
  const w = wall(nowMs, tz);
  const p: Periods = {
    month: `${w.year}-${pad(w.month)}`,
    day: `${w.year}-${pad(w.month)}-${pad(w.day)}`,
    monthStartMs: midnight(w.year, w.month, 1, tz),
    monthEndMs: midnight(w.year, w.month + 1, 1, tz),
    dayStartMs: midnight(w.year, w.month, w.day, tz),
    dayEndMs: midnight(w.year, w.month, w.day + 1, tz),
  };
  cache.set(tz, p);
  return p;
}
