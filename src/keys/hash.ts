import { hash } from 'node:crypto';

/**
 * Hex SHA-256 of pepper + raw key: the only form in which a raw API key is looked up, logged or
 * stored. The pepper (a server secret) keeps a leaked store from being brute-forced offline.
 * One-shot (crypto.hash): a Hash object's native half is a weak handle that each scavenge must process,
 * one per inference request.
 */
export const hashWithPepper = (raw: string, pepper: string): string => hash('sha256', pepper + raw, 'hex');
