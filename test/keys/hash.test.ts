import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { hashWithPepper } from '../../src/keys/hash.js';

describe('hashWithPepper', () => {
  it('is the hex SHA-256 of pepper then key, as keys stored by earlier versions were hashed', () => {
    // The published SHA-256 of "abc" (FIPS 180-2, appendix B.1): pepper "a", key "bc".
    expect(hashWithPepper('bc', 'a')).toBe(
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
    );
    for (const [raw, pepper] of [
      ['sk-live-0123456789', 'pepper'],
      ['ключ', 'перец'],
      ['', 'only-pepper'],
    ] as const) {
      expect(hashWithPepper(raw, pepper)).toBe(createHash('sha256').update(pepper).update(raw).digest('hex'));
    }
  });

  it('changes with the pepper', () => {
    expect(hashWithPepper('sk-1', 'p1')).not.toBe(hashWithPepper('sk-1', 'p2'));
  });
});
