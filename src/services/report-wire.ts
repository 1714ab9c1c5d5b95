/**
 * ReportService on the wire, where its handlers and the CLI must agree: the request bounds, the
 * flag state and signal names ⇄ enums, and one flag conversion for every place that sends a flag
 * (ListFlags, WatchAlerts, AdminService's ReviewFlag).
 */
import { create } from '@bufbuild/protobuf';
import { type Timestamp, timestampFromMs } from '@bufbuild/protobuf/wkt';
import { type Flag, FlagSchema, FlagState, Signal } from '../../gen/ratekeeper/v1/report_pb.js';
import type { SignalKind } from '../policy/signals.js';
import { type FlagRecord, type FlagState as FlagStateName, TOP_RETENTION_MS } from '../report/types.js';

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 500;
export const DEFAULT_TOP_WINDOW_S = 3_600;
/** TopKeys answers for as long as totals are kept. */
export const MAX_TOP_WINDOW_S = TOP_RETENTION_MS / 1000;
export const DEFAULT_TOP_LIMIT = 10;
export const MAX_TOP_LIMIT = 1_000;

export const FLAG_STATE_TO_MSG: Readonly<Record<FlagStateName, FlagState>> = {
  open: FlagState.OPEN,
  reviewed: FlagState.REVIEWED,
  dismissed: FlagState.DISMISSED,
};

export const SIGNAL_TO_MSG: Readonly<Record<SignalKind, Signal>> = {
  excessive_request_rate: Signal.EXCESSIVE_REQUEST_RATE,
  excessive_token_rate: Signal.EXCESSIVE_TOKEN_RATE,
  runaway_requests: Signal.RUNAWAY_REQUESTS,
  retry_storm: Signal.RETRY_STORM,
  limit_splitting: Signal.LIMIT_SPLITTING,
};

/** Whole milliseconds: a clock may hand out fractions, which a Timestamp's integer nanos cannot carry. */
export const wholeMsTimestamp = (ms: number): Timestamp => timestampFromMs(Math.floor(ms));

export const flagToProto = (f: FlagRecord): Flag =>
  create(FlagSchema, {
    id: f.id,
    key: f.key,
    account: f.account,
    signal: SIGNAL_TO_MSG[f.signal] ?? Signal.UNSPECIFIED,
    observed: f.observed,
    threshold: f.threshold,
    windowSeconds: BigInt(Math.round(f.windowMs / 1000)),
    firstSeen: wholeMsTimestamp(f.firstSeenMs),
    lastSeen: wholeMsTimestamp(f.lastSeenMs),
    state: FLAG_STATE_TO_MSG[f.state],
    note: f.note,
    reviewedBy: f.reviewedBy,
    detail: f.detail,
  });
