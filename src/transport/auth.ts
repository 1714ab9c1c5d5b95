import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { RkError } from '../errors.js';
import type { CallContext } from './types.js';

/** A named bearer token; the name is what the audit log records as the actor. */
export interface Credential {
  name: string;
  token: string;
}

export class CredentialError extends Error {
  override name = 'CredentialError';
}

/** Parses `name:token,name2:token2` (commas or newlines; `#` starts a comment line). */
export const parseCredentials = (spec: string, source: string): Credential[] => {
  const out: Credential[] = [];
  const names = new Set<string>();
  for (const [i, raw] of spec.split(/[,\n]/).entries()) {
    const item = raw.trim();
    if (item === '' || item.startsWith('#')) continue;
    const colon = item.indexOf(':');
    const name = colon < 0 ? '' : item.slice(0, colon).trim();
    const token = colon < 0 ? '' : item.slice(colon + 1).trim();
    if (name === '' || token === '') {
      throw new CredentialError(`${source}: entry ${i + 1}: expected name:token`);
    }
    if (token.length < 16) throw new CredentialError(`${source}: token "${name}": at least 16 characters`);
    if (names.has(name)) throw new CredentialError(`${source}: token name "${name}" given twice`);
    names.add(name);
    out.push({ name, token });
  }
  return out;
};

/** Where each credential set comes from: a `name:token,…` variable and a file of such lines. */
export const CREDENTIAL_SOURCES = {
  admin: { env: 'RATEKEEPER_ADMIN_TOKENS', fileEnv: 'RATEKEEPER_ADMIN_TOKENS_FILE' },
  rls: { env: 'RATEKEEPER_RLS_TOKENS', fileEnv: 'RATEKEEPER_RLS_TOKENS_FILE' },
} as const;

/** Reads one credential set from the environment (both sources are merged; names must be unique). */
export const credentialsFromEnv = (
  which: keyof typeof CREDENTIAL_SOURCES,
  env: NodeJS.ProcessEnv = process.env,
): Credential[] => {
  const src = CREDENTIAL_SOURCES[which];
  let spec = env[src.env] ?? '';
  let source: string = src.env;
  const file = env[src.fileEnv];
  if (file) {
    try {
      spec = `${spec}\n${readFileSync(file, 'utf8')}`;
    } catch (err) {
      throw new CredentialError(`${src.fileEnv}: cannot read ${file}: ${(err as Error).message}`);
    }
    source = `${src.env} + ${file}`;
  }
  return parseCredentials(spec, source);
};

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/** Checks `authorization: Bearer <token>` against a fixed set of credentials. */
export interface Authenticator {
  /** Throws RkError UNAUTHENTICATED unless the call carries a known token; the binding's auth hook. */
  check(ctx: CallContext): void;
  /** The credential's name for an authenticated call (the audit actor). */
  actor(ctx: CallContext): string;
}

/**
 * Tokens are compared as SHA-256 digests (equal length) with timingSafeEqual, against every
 * credential without stopping at a match, so timing tells neither the token nor which one matched.
 * An empty set refuses every call: a service that requires a credential never runs open.
 */
export const bearerAuth = (credentials: readonly Credential[], realm: string): Authenticator => {
  const known = credentials.map((c) => ({ name: c.name, digest: digest(c.token) }));
  const identify = (ctx: CallContext): string => {
    const header = ctx.headers.get('authorization') ?? '';
    const m = /^Bearer[ ]+(\S+)\s*$/i.exec(header);
    if (!m) {
      throw new RkError(
        'UNAUTHENTICATED',
        header === ''
          ? `${realm}: missing authorization: Bearer <token>`
          : `${realm}: malformed authorization header`,
      );
    }
    const presented = digest(m[1]!);
    let name: string | undefined;
    for (const k of known) {
      if (timingSafeEqual(presented, k.digest) && name === undefined) name = k.name;
    }
    if (name === undefined) throw new RkError('UNAUTHENTICATED', `${realm}: unknown token`);
    return name;
  };
  return { check: (ctx) => void identify(ctx), actor: identify };
};

/** The credentials each service group requires; RLS and Usage run open without `rls`. */
export interface ServiceAuth {
  admin: Authenticator;
  rls?: Authenticator;
}

/** Both credential sets from the environment; an empty admin set refuses every admin call. */
export const serviceAuthFromEnv = (env: NodeJS.ProcessEnv = process.env): ServiceAuth => {
  const rls = credentialsFromEnv('rls', env);
  return {
    admin: bearerAuth(credentialsFromEnv('admin', env), 'admin'),
    ...(rls.length > 0 ? { rls: bearerAuth(rls, 'rls') } : {}),
  };
};
