import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RkError } from '../../src/errors.js';
import { ENTRY_NAMES, MAX_TOKENS, parseInferenceRequest } from '../../src/policy/inference.js';

const NAMES = [...ENTRY_NAMES, 'path'];
const value = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.nat().map(String),
  fc.constantFrom('-1', '1.5', '1e3', ' 5', String(MAX_TOKENS + 1), 'tokens', 'tokens_in', 'k1', 'k2'),
);
const descriptor = fc.record({
  entries: fc.array(fc.record({ key: fc.constantFrom(...NAMES), value }), { minLength: 1, maxLength: 5 }),
  hitsAddend: fc.option(fc.bigInt({ min: 0n, max: 2_000_000_000n }), { nil: undefined }),
});

describe('parseInferenceRequest', () => {
  it('returns a merged request or INVALID_ARGUMENT naming a descriptor field; never anything else', () => {
    fc.assert(
      fc.property(fc.array(descriptor, { minLength: 1, maxLength: 4 }), fc.nat(10), (ds, hits) => {
        try {
          const r = parseInferenceRequest(ds, hits);
          expect(r.scopes).toHaveLength(ds.length);
          if (r.llm) {
            for (const n of [r.llm.tokens, r.llm.tokensIn, r.llm.tokensOut]) {
              if (n !== undefined) expect(Number.isSafeInteger(n) && n >= 0 && n <= MAX_TOKENS).toBe(true);
            }
          }
        } catch (e) {
          expect(e).toBeInstanceOf(RkError);
          expect((e as RkError).code).toBe('INVALID_ARGUMENT');
          expect((e as RkError).field).toMatch(/^descriptors\[\d+\]\.(entries\[\d+\]\.value|hits_addend)$/);
        }
      }),
      { numRuns: 500 },
    );
  });

  it('scopes: no key → none; key only → key; with model → model', () => {
    const r = parseInferenceRequest(
      [
        { entries: [{ key: 'path', value: '/x' }] },
        { entries: [{ key: 'key', value: 'k' }] },
        {
          entries: [
            { key: 'key', value: 'k' },
            { key: 'model', value: 'm' },
          ],
        },
      ],
      0,
    );
    expect(r.scopes).toEqual(['none', 'key', 'model']);
    expect(r.llm).toMatchObject({ key: 'k', model: 'm' });
  });

  it('an entry given twice with different values names both places, not the values', () => {
    const call = () =>
      parseInferenceRequest(
        [
          { entries: [{ key: 'key', value: 'sk-secret-1' }] },
          {
            entries: [
              { key: 'model', value: 'm' },
              { key: 'key', value: 'sk-secret-2' },
            ],
          },
        ],
        0,
      );
    expect(call).toThrow(RkError);
    try {
      call();
    } catch (e) {
      expect((e as RkError).field).toBe('descriptors[1].entries[1].value');
      expect((e as RkError).message).toContain('differs from the one in descriptors[0].entries[0].value');
      expect((e as RkError).message).not.toContain('sk-secret');
    }
  });
});
