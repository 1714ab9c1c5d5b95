import type { Logger } from 'pino';
import type { GenericDomain } from '../config/generic.js';
import type { InferencePolicy } from '../config/inference.js';
import type { KeyDirectory } from '../keys/types.js';
import type { LimiterStore } from '../store/store.js';

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
}
