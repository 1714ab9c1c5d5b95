/**
 * Sliding-window arithmetic shared by the stores (the Lua scripts mirror it in lib.lua).
 *
 * Bucket j of a window W covers [j·W/B, (j+1)·W/B). At time t the counted buckets are i-B..i with
 * i = bucketIndex(t, W); bucket j stops being counted at leaveMs(j, W).
 */
import { WINDOW_BUCKETS } from './store.js';

const B = WINDOW_BUCKETS;

export const bucketIndex = (nowMs: number, windowMs: number): number => Math.floor((nowMs * B) / windowMs);

/** Unix ms at which bucket j leaves the counted range. */
export const leaveMs = (j: number, windowMs: number): number => ((j + B + 1) * windowMs) / B;

/** Ms from now until bucket j leaves, rounded up so a client retrying then is admitted. */
export const msUntilLeave = (j: number, windowMs: number, nowMs: number): number =>
  Math.max(0, Math.ceil(leaveMs(j, windowMs) - nowMs));
