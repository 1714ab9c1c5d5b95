import { create } from '@bufbuild/protobuf';
import {
  type Alert as AlertMsg,
  AlertSchema,
  FlagState as FlagStateMsg,
  KeyUsageSchema,
  ListFlagsResponseSchema,
  ReportService,
  Signal as SignalMsg,
  ThresholdCrossingSchema,
  TopKeysResponse_EntrySchema,
  TopKeysResponseSchema,
} from '../../gen/ratekeeper/v1/report_pb.js';
import { LimitStateSchema } from '../../gen/ratekeeper/v1/usage_pb.js';
import { checkLength, invalid, RkError } from '../errors.js';
import { resolveKey } from '../keys/resolve.js';
import { planAdmission } from '../policy/inference.js';
import { inferenceKeys as K, periodsAt } from '../policy/inference-keys.js';
import { SIGNALS, type SignalKind } from '../policy/signals.js';
import type { ReportRuntime } from '../report/index.js';
import type { Alert, FlagState, TopBy } from '../report/types.js';
import type { BudgetOp, Op } from '../store/store.js';
import { bearerAuth } from '../transport/auth.js';
import type { ServiceBinding } from '../transport/types.js';
import { bind } from '../transport/types.js';
import type { Deps } from './deps.js';
import {
  DEFAULT_PAGE_SIZE,
  DEFAULT_TOP_LIMIT,
  DEFAULT_TOP_WINDOW_S,
  FLAG_STATE_TO_MSG,
  flagToProto,
  MAX_PAGE_SIZE,
  MAX_TOP_LIMIT,
  MAX_TOP_WINDOW_S,
  SIGNAL_TO_MSG,
  wholeMsTimestamp,
} from './report-wire.js';
import { policyOf } from './usage.js';

/** Keys, models and accounts in requests. */
const MAX_ARG = 512;
/** Alerts a slow WatchAlerts subscriber may fall behind by before its stream is ended. */
const WATCH_BACKLOG = 1_000;

const alertToProto = (a: Alert): AlertMsg =>
  create(AlertSchema, {
    at: wholeMsTimestamp(a.atMs),
    kind:
      'flag' in a
        ? { case: 'flag', value: flagToProto(a.flag) }
        : {
            case: 'threshold',
            value: create(ThresholdCrossingSchema, {
              ...a.crossing,
              used: BigInt(a.crossing.used),
              limit: BigInt(a.crossing.limit),
            }),
          },
  });

const stateFilter = (s: FlagStateMsg): FlagState | undefined => {
  if (s === FlagStateMsg.UNSPECIFIED) return undefined;
  const found = (Object.keys(FLAG_STATE_TO_MSG) as FlagState[]).find((k) => FLAG_STATE_TO_MSG[k] === s);
  if (!found) throw invalid('state', `unknown flag state ${s}`);
  return found;
};

const signalFilter = (s: SignalMsg): SignalKind | undefined => {
  if (s === SignalMsg.UNSPECIFIED) return undefined;
  const found = SIGNALS.find((k) => SIGNAL_TO_MSG[k] === s);
  if (!found) throw invalid('signal', `unknown signal ${s}`);
  return found;
};

const bounded = (v: number, field: string, def: number, max: number): number => {
  if (v < 0) throw invalid(field, `must be >= 0, got ${v}`);
  if (v > max) throw invalid(field, `at most ${max}, got ${v}`);
  return v === 0 ? def : v;
};

const TOP_BY: ReadonlySet<string> = new Set<TopBy>(['requests', 'tokens', 'spend']);
const BIG = Number.MAX_SAFE_INTEGER;

/**
 * Pushes alerts from the store's fan-out into an async iterator; ends when the call is cancelled,
 * or with UNAVAILABLE when the subscriber falls too far behind.
 */
async function* watch(runtime: ReportRuntime, account: string, signal: AbortSignal): AsyncIterable<AlertMsg> {
  const queue: Alert[] = [];
  let wake: (() => void) | undefined;
  let overflow = false;
  const off = runtime.store.subscribe((a) => {
    const acct = 'flag' in a ? a.flag.account : a.crossing.account;
    if (account !== '' && acct !== account) return;
    if (queue.length >= WATCH_BACKLOG) overflow = true;
    else queue.push(a);
    wake?.();
  });
  const onAbort = () => wake?.();
  signal.addEventListener('abort', onAbort);
  try {
    while (!signal.aborted) {
      const next = queue.shift();
      if (next) {
        yield alertToProto(next);
        continue;
      }
      if (overflow) throw new RkError('UNAVAILABLE', 'alert stream fell behind; reconnect');
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
      wake = undefined;
    }
  } finally {
    off();
    signal.removeEventListener('abort', onAbort);
  }
}

/** ReportService: flags, key usage, top keys and the alert stream (contract §7); admin bearer auth. */
export const reportBinding = (deps: Deps): ServiceBinding => {
  const auth = deps.auth?.admin ?? bearerAuth([], 'report');
  const runtime = (): ReportRuntime => {
    if (!deps.report) throw new RkError('FAILED_PRECONDITION', 'the report service is not configured');
    return deps.report;
  };

  return bind(
    ReportService,
    {
      async listFlags(req) {
        const pageSize = bounded(req.pageSize, 'page_size', DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
        const state = stateFilter(req.state);
        const signal = signalFilter(req.signal);
        const page = await runtime().store.listFlags(
          {
            ...(state ? { state } : {}),
            ...(signal ? { signal } : {}),
            ...(req.account !== '' ? { account: req.account } : {}),
          },
          pageSize,
          req.pageToken,
        );
        return create(ListFlagsResponseSchema, {
          flags: page.flags.map(flagToProto),
          nextPageToken: page.nextPageToken,
        });
      },

      async getKeyUsage(req) {
        if (req.key === '') throw invalid('key', 'must not be empty');
        checkLength(req.key, 'key', MAX_ARG);
        checkLength(req.model, 'model', MAX_ARG);
        const policy = policyOf(deps);
        const p = resolveKey(req.key, policy, deps.keys);
        const nowMs = deps.store.now();
        const adm = planAdmission(
          policy,
          p,
          { key: req.key, ...(req.model !== '' ? { model: req.model } : {}) },
          nowMs,
          `usage-probe-${nowMs}`,
          true,
        );
        // Current usage, without this probe's own cost; the month and day counters are read even uncapped.
        const ops: Op[] = adm.decision.ops.map((op, i) =>
          op.kind === 'window' ? { ...op, cost: 0, limit: adm.meta[i]!.limit } : op,
        );
        const periods = periodsAt(nowMs, policy.timezone);
        const extra = (
          [
            [K.monthlyTokens(p.account, p.ref, periods.month), periods.monthEndMs],
            [K.monthlySpend(p.account, p.ref, periods.month), periods.monthEndMs],
            [K.dailySpend(p.account, p.ref, periods.day), periods.dayEndMs],
          ] as const
        ).map(([key, periodEndMs]): BudgetOp => ({ kind: 'budget', key, limit: BIG, periodEndMs }));
        const r = await deps.store.decide({
          ...adm.decision,
          ops: [...ops, ...extra],
          atomic: false,
          dryRun: true,
        });
        const n = ops.length;
        const limits = adm.meta.flatMap((m, i) => {
          const s = r.states[i];
          if (m.unlimited || !s) return [];
          return [
            create(LimitStateSchema, {
              metric: m.metric,
              scope: m.scope,
              limit: BigInt(m.limit),
              used: BigInt(s.used),
              remaining: BigInt(Math.max(0, m.limit - s.used)),
              windowSeconds: BigInt(Math.round(m.windowMs / 1000)),
              reset: BigInt(Math.ceil((r.nowMs + s.resetMs) / 1000)),
            }),
          ];
        });
        return create(KeyUsageSchema, {
          key: p.keyId ?? p.ref,
          account: p.account,
          tier: p.tier,
          limits,
          monthTokens: BigInt(r.states[n]?.used ?? 0),
          monthSpendMicros: BigInt(r.states[n + 1]?.used ?? 0),
          daySpendMicros: BigInt(r.states[n + 2]?.used ?? 0),
        });
      },

      async topKeys(req) {
        const by = req.by === '' ? 'requests' : req.by;
        if (!TOP_BY.has(by))
          throw invalid('by', `one of requests, tokens, spend; got "${req.by.slice(0, 32)}"`);
        const windowS = bounded(
          Number(req.windowSeconds),
          'window_seconds',
          DEFAULT_TOP_WINDOW_S,
          MAX_TOP_WINDOW_S,
        );
        const limit = bounded(req.limit, 'limit', DEFAULT_TOP_LIMIT, MAX_TOP_LIMIT);
        const rt = runtime();
        // This instance's latest totals count too; other instances' arrive within their flush interval.
        await rt.engine.flush();
        const nowMs = deps.store.now();
        const entries = await rt.store.topKeys(by as TopBy, nowMs - windowS * 1000, nowMs, limit);
        return create(TopKeysResponseSchema, {
          entries: entries.map((e) =>
            create(TopKeysResponse_EntrySchema, { key: e.key, account: e.account, value: BigInt(e.value) }),
          ),
        });
      },

      async *watchAlerts(req, ctx) {
        checkLength(req.account, 'account', MAX_ARG);
        yield* watch(runtime(), req.account, ctx.signal);
      },
    },
    auth.check,
  );
};
