import type { Logger } from 'pino';
import type { GenericDomain } from '../config/generic.js';
import type { InferencePolicy } from '../config/inference.js';
import type { KeyRegistry } from '../keys/registry.js';
import type { KeyDirectory } from '../keys/types.js';
import type { ReportRuntime } from '../report/index.js';
import type { ReportStore } from '../report/types.js';
import type { LimiterStore } from '../store/store.js';
import type { ServiceAuth } from '../transport/auth.js';
import type { InferenceEvents } from './inference-events.js';

/** The validated, immutable configuration in force; replaced whole on reload. */
export interface RuntimeConfig {
  domains: ReadonlyMap<string, GenericDomain>;
  inference?: InferencePolicy;
}

/** What handlers need, passed explicitly (no globals). */
export interface Deps {
  store: LimiterStore;
  /** The current config snapshot; read once per request. */
  config(): RuntimeConfig;
  keys: KeyDirectory;
  log: Logger;
  /** Admin-managed keys (AdminService); `keys` is this registry's directory. */
  registry?: KeyRegistry;
  /** Bearer checks: `admin` guards AdminService and ReportService; `rls`, when set, RLS and Usage. */
  auth?: ServiceAuth;
  /** The report store's flags, for AdminService.ReviewFlag. */
  flags?: ReportStore;
  /** Decision, debit and lease-expiry hooks of the inference domain (report signals). */
  events?: InferenceEvents;
  /** ReportService state (createReport); its store is `flags`, its hooks are `events`. */
  report?: ReportRuntime;
}
