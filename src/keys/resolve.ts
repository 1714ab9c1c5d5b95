import type { InferencePolicy } from '../config/inference.js';
import { hashWithPepper } from './hash.js';
import type { KeyCaps, KeyDirectory, KeyRecord, StoredKey } from './types.js';

/** Who a request is charged to, resolved from the presented key. Never holds the raw key. */
export interface Principal {
  /** Store and log identity: `k:<id>` for a registered key, `h:<hash>` otherwise. */
  readonly ref: string;
  readonly keyId?: string;
  /** Hex SHA-256 of pepper + the presented value. */
  readonly hash: string;
  readonly account: string;
  readonly tier: string;
  readonly caps: KeyCaps;
  readonly disabled: boolean;
  readonly disabledReason?: string;
  readonly registered: boolean;
}

/** Descriptor hints that apply only to unregistered keys. */
export interface KeyHints {
  account?: string | undefined;
  tier?: string | undefined;
}

/** Policy record overlaid with the admin-managed record: set fields win, cleared caps go. */
const merge = (
  base: KeyRecord | undefined,
  stored: StoredKey | undefined,
  policy: InferencePolicy,
): KeyRecord => {
  const id = (base?.id ?? stored?.id)!;
  const caps: KeyCaps = { ...base?.caps, ...stored?.caps };
  for (const c of stored?.clearedCaps ?? []) delete caps[c];
  return {
    id,
    account: stored?.account ?? base?.account ?? id,
    tier: stored?.tier ?? base?.tier ?? policy.defaultTier,
    caps,
    disabled: stored?.disabled ?? base?.disabled ?? false,
    ...((stored?.disabledReason ?? base?.disabledReason) !== undefined
      ? { disabledReason: stored?.disabledReason ?? base?.disabledReason }
      : {}),
  };
};

/**
 * Resolves the entry `key`: the value is hashed first and looked up by hash (a raw key), then taken
 * as a key id; a key known to neither is unregistered and charged to the hinted account (else its
 * own) under the hinted tier (else the default one).
 */
export function resolveKey(
  presented: string,
  policy: InferencePolicy,
  dir: KeyDirectory,
  hints: KeyHints = {},
): Principal {
  const hash = hashWithPepper(presented, policy.pepper);
  let base = policy.keysByHash.get(hash);
  let stored = dir.byHash(hash);
  if (!base && !stored) {
    base = policy.keysById.get(presented);
    stored = dir.byId(presented);
  } else if (!base) {
    base = policy.keysById.get(stored!.id);
  } else if (!stored) {
    stored = dir.byId(base.id);
  }
  if (base || stored) {
    const rec = merge(base, stored, policy);
    return {
      ref: `k:${rec.id}`,
      keyId: rec.id,
      hash,
      account: rec.account,
      // A tier dropped by a reload falls back to the default rather than failing every request.
      tier: policy.tiers.has(rec.tier) ? rec.tier : policy.defaultTier,
      caps: rec.caps,
      disabled: rec.disabled,
      ...(rec.disabledReason !== undefined ? { disabledReason: rec.disabledReason } : {}),
      registered: true,
    };
  }
  const ref = `h:${hash}`;
  return {
    ref,
    hash,
    account: hints.account ?? ref,
    tier: hints.tier ?? policy.defaultTier,
    caps: {},
    disabled: false,
    registered: false,
  };
}
