/** Per-key caps; an absent cap is unlimited. Spend is in integer micro-dollars. */
export interface KeyCaps {
  maxTokensPerRequest?: number;
  monthlyTokens?: number;
  monthlySpendMicros?: number;
  dailySpendMicros?: number;
}

/** A registered key, from the policy file or from the store (AdminService). Never holds the raw key. */
export interface KeyRecord {
  id: string;
  /** Hex SHA-256 of pepper + raw key, when the raw key is known. */
  hash?: string;
  account: string;
  tier: string;
  caps: KeyCaps;
  disabled: boolean;
  disabledReason?: string;
  name?: string;
  createdAtMs?: number;
  updatedAtMs?: number;
}

/** A stored (admin-managed) key: fields it sets win over the policy file's record of the same id. */
export type StoredKey = Partial<Omit<KeyRecord, 'id' | 'caps'>> & {
  id: string;
  caps?: KeyCaps;
  /** Cap names cleared in the store (unlimited even when the policy file sets them). */
  clearedCaps?: (keyof KeyCaps)[];
};

/**
 * Admin-managed keys as every instance sees them: an in-memory view kept current from the store,
 * so lookups on the hot path are synchronous and cost no round trip.
 */
export interface KeyDirectory {
  byId(id: string): StoredKey | undefined;
  byHash(hash: string): StoredKey | undefined;
}

/** The directory with no stored keys (policy-file keys only). */
export const emptyDirectory: KeyDirectory = { byId: () => undefined, byHash: () => undefined };
