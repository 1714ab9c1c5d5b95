import { z } from 'zod';
import { durationMs } from '../config/duration.js';
import { defaultSignalSettings as d, type SignalSettings } from '../policy/signals.js';

/**
 * The `signals:` section of the inference policy file. Every field is optional; what is left out
 * keeps its default (see defaultSignalSettings). Durations as elsewhere in the policy: "10m",
 * "90s", "1h", or a number of seconds.
 */
const duration = z.union([
  z
    .number()
    .min(1)
    .transform((s) => Math.round(s * 1000)),
  z.string().transform((s, ctx) => {
    const ms = durationMs(s) ?? 0;
    if (ms < 1000) {
      ctx.addIssue({
        code: 'custom',
        message: `expected a duration of 1s or more like "10m", "90s", "1h", got "${s}"`,
      });
      return z.NEVER;
    }
    return ms;
  }),
]);
const share = z.number().gt(0).lte(1);

const shareRule = (def: { share: number; windowMs: number }) =>
  z.strictObject({ share: share.optional(), window: duration.optional() }).transform((r) => ({
    share: r.share ?? def.share,
    windowMs: r.window ?? def.windowMs,
  }));

const countRule = (def: { count: number; windowMs: number }) =>
  z
    .strictObject({ count: z.number().int().positive().optional(), window: duration.optional() })
    .transform((r) => ({
      count: r.count ?? def.count,
      windowMs: r.window ?? def.windowMs,
    }));

const runawayRule = z
  .strictObject({
    count: z.number().int().positive().optional(),
    window: duration.optional(),
    held_longer_than: duration.optional(),
  })
  .transform((r) => ({
    count: r.count ?? d.runaway.count,
    windowMs: r.window ?? d.runaway.windowMs,
    heldLongerThanMs: r.held_longer_than ?? d.runaway.heldLongerThanMs,
  }));

export const signalsSchema = z
  .strictObject({
    bucket: duration.optional(),
    request_rate: shareRule(d.requestRate).optional(),
    token_rate: shareRule(d.tokenRate).optional(),
    runaway: runawayRule.optional(),
    retry_storm: countRule(d.retryStorm).optional(),
    limit_splitting: z
      .strictObject({
        share: share.optional(),
        keys: z.number().int().min(2).optional(),
        window: duration.optional(),
      })
      .optional(),
    alert_shares: z.array(share).min(1).optional(),
  })
  .transform(
    (s): SignalSettings => ({
      bucketMs: s.bucket ?? d.bucketMs,
      requestRate: s.request_rate ?? d.requestRate,
      tokenRate: s.token_rate ?? d.tokenRate,
      runaway: s.runaway ?? d.runaway,
      retryStorm: s.retry_storm ?? d.retryStorm,
      limitSplitting: {
        share: s.limit_splitting?.share ?? d.limitSplitting.share,
        keys: s.limit_splitting?.keys ?? d.limitSplitting.keys,
        windowMs: s.limit_splitting?.window ?? d.limitSplitting.windowMs,
      },
      alertShares: [...new Set(s.alert_shares ?? d.alertShares)].sort((a, b) => a - b),
    }),
  );
