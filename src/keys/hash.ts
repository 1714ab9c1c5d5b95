import { createHash } from 'node:crypto';

/**
 * Hex SHA-256 of pepper + raw key: the only form in which a raw API key is looked up, logged or
 * stored. The pepper (a server secret) keeps a leaked store from being brute-forced offline.
 */
export const hashWithPepper = (raw: string, pepper: string): string =>
  createHash('sha256').update(pepper).update(raw).digest('hex');
