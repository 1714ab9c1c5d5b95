import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { RkError } from '../../src/errors.js';
import {
  bearerAuth,
  CredentialError,
  credentialsFromEnv,
  parseCredentials,
  serviceAuthFromEnv,
} from '../../src/transport/auth.js';
import { callContext } from '../harness/context.js';

const ctx = (authorization?: string) => callContext(authorization === undefined ? {} : { authorization });

const T1 = 'token-one-0123456789';
const T2 = 'token-two-0123456789';

describe('parseCredentials', () => {
  it('reads name:token pairs separated by commas or newlines, skipping blanks and comments', () => {
    expect(parseCredentials(` ops:${T1} ,\n# a comment\n\nci:${T2}:with-colon`, 'X')).toEqual([
      { name: 'ops', token: T1 },
      { name: 'ci', token: `${T2}:with-colon` },
    ]);
    expect(parseCredentials('', 'X')).toEqual([]);
  });

  it('rejects entries without a name or token, short tokens and duplicate names, naming the source', () => {
    expect(() => parseCredentials(T1, 'RATEKEEPER_ADMIN_TOKENS')).toThrow(
      /RATEKEEPER_ADMIN_TOKENS: entry 1: expected name:token/,
    );
    expect(() => parseCredentials(`a:${T1},b:`, 'X')).toThrow(/entry 2/);
    expect(() => parseCredentials('a:short', 'X')).toThrow(/at least 16/);
    expect(() => parseCredentials(`a:${T1},a:${T2}`, 'X')).toThrow(/given twice/);
  });
});

describe('credentials from the environment', () => {
  it('merges the variable and the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rk-auth-'));
    const file = join(dir, 'tokens');
    writeFileSync(file, `# mounted secret\nfile-user:${T2}\n`);
    try {
      const creds = credentialsFromEnv('admin', {
        RATEKEEPER_ADMIN_TOKENS: `env-user:${T1}`,
        RATEKEEPER_ADMIN_TOKENS_FILE: file,
      });
      expect(creds.map((c) => c.name)).toEqual(['env-user', 'file-user']);
      expect(() =>
        credentialsFromEnv('admin', { RATEKEEPER_ADMIN_TOKENS_FILE: join(dir, 'missing') }),
      ).toThrow(CredentialError);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('leaves RLS open without RLS tokens, and guards it with them', () => {
    const open = serviceAuthFromEnv({ RATEKEEPER_ADMIN_TOKENS: `ops:${T1}` });
    expect(open.rls).toBeUndefined();
    const guarded = serviceAuthFromEnv({ RATEKEEPER_RLS_TOKENS: `envoy:${T2}` });
    expect(guarded.rls?.actor(ctx(`Bearer ${T2}`))).toBe('envoy');
    // No admin tokens: every admin call is refused rather than served open.
    expect(() => guarded.admin.check(ctx(`Bearer ${T2}`))).toThrow(RkError);
  });
});

describe('bearerAuth', () => {
  const auth = bearerAuth(
    [
      { name: 'ops', token: T1 },
      { name: 'ci', token: T2 },
    ],
    'admin',
  );

  it('names the credential of a valid token; the scheme is case-insensitive', () => {
    expect(auth.actor(ctx(`Bearer ${T1}`))).toBe('ops');
    expect(auth.actor(ctx(`bearer ${T2}`))).toBe('ci');
    expect(() => auth.check(ctx(`Bearer ${T1}`))).not.toThrow();
  });

  it('refuses missing, malformed and unknown credentials with UNAUTHENTICATED', () => {
    for (const [header, msg] of [
      [undefined, /missing authorization/],
      ['', /missing authorization/],
      [T1, /malformed/],
      [`Basic ${T1}`, /malformed/],
      [`Bearer ${T1} extra`, /malformed/],
      [`Bearer ${T1}x`, /unknown token/],
      [`Bearer ${T1.slice(0, -1)}`, /unknown token/],
    ] as const) {
      let err: unknown;
      try {
        auth.check(ctx(header));
      } catch (e) {
        err = e;
      }
      expect(err, String(header)).toBeInstanceOf(RkError);
      expect((err as RkError).code).toBe('UNAUTHENTICATED');
      expect((err as RkError).message).toMatch(msg);
    }
  });
});
