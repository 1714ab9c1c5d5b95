import { randomBytes } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError } from '@connectrpc/connect';
import {
  AdminService,
  type AuditEntry,
  AuditEntrySchema,
  CreateKeyResponseSchema,
  DeleteKeyResponseSchema,
  type Key,
  type KeyCaps as KeyCapsMsg,
  KeyCapsSchema,
  KeySchema,
  ListAuditResponseSchema,
  ListKeysResponseSchema,
} from '../../gen/ratekeeper/v1/admin_pb.js';
import { FlagState as FlagStateMsg } from '../../gen/ratekeeper/v1/report_pb.js';
import type { InferencePolicy } from '../config/inference.js';
import { checkLength, invalid, RkError } from '../errors.js';
import { hashWithPepper } from '../keys/hash.js';
import { type AuditRecord, type KeyRegistry, type Mutation, pageById } from '../keys/registry.js';
import type { KeyCaps, KeyRecord, StoredKey } from '../keys/types.js';
import { type Authenticator, bearerAuth } from '../transport/auth.js';
import { bind, type CallContext, type ServiceBinding } from '../transport/types.js';
import type { Deps } from './deps.js';
import { flagToProto } from './report-wire.js';

/** Cap names on the wire (snake_case, as in KeyCaps and `clear_caps`) and in records. */
const CAPS = [
  ['max_tokens_per_request', 'maxTokensPerRequest'],
  ['monthly_tokens', 'monthlyTokens'],
  ['monthly_spend_micros', 'monthlySpendMicros'],
  ['daily_spend_micros', 'dailySpendMicros'],
] as const satisfies readonly (readonly [string, keyof KeyCaps & keyof KeyCapsMsg])[];

/** The policy file's key-id alphabet, so an id works in both places and in Envoy descriptors. */
const ID_RE = /^[A-Za-z0-9._@-]{1,128}$/;
/** Raw keys: recognisable prefix + 256 random bits. */
export const RAW_KEY_PREFIX = 'rk_';
const HASH_PREFIX_LEN = 12;

/** Caps from the wire: integers >= 0 that fit a double exactly; errors name the field. */
const capsFrom = (msg: KeyCapsMsg | undefined, field: string): KeyCaps => {
  const out: KeyCaps = {};
  for (const [wire, local] of CAPS) {
    const v = msg?.[local];
    if (v === undefined) continue;
    if (v < 0n) throw invalid(`${field}.${wire}`, 'must be >= 0 (clear it for unlimited)');
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`${field}.${wire}`, 'too large');
    out[local] = Number(v);
  }
  return out;
};

const capsTo = (caps: KeyCaps): KeyCapsMsg =>
  create(
    KeyCapsSchema,
    Object.fromEntries(CAPS.filter(([, l]) => caps[l] !== undefined).map(([, l]) => [l, BigInt(caps[l]!)])),
  );

const tierCheck = (policy: InferencePolicy, tier: string, field: string): void => {
  if (!policy.tiers.has(tier)) {
    throw invalid(field, `unknown tier "${tier}"; known: ${[...policy.tiers.keys()].join(', ')}`);
  }
};

/** Accounts name store keys (and their Cluster hash tags): the policy file's alphabet, no braces. */
const accountCheck = (account: string): void => {
  if (!ID_RE.test(account)) throw invalid('account', 'letters, digits, . _ @ - (1-128)');
};

/** Names and reasons: short free text. */
const MAX_TEXT = 256;

const requireId = (id: string): string => {
  if (id === '') throw invalid('id', 'required');
  return id;
};

const notFound = (id: string): RkError => new RkError('NOT_FOUND', `key "${id}" not found`);

/** A key as GetKey shows it: policy record overlaid by the stored one, with each value's source. */
interface MergedKey {
  record: KeyRecord;
  sources: Record<string, 'policy' | 'store'>;
}

/**
 * The same overlay the request path applies (src/keys/resolve.ts): stored fields win, cleared caps
 * are unlimited, a missing account is the key itself, a missing tier is the policy's default.
 * A value neither file nor store sets (a default) has no entry in `sources`.
 */
const mergeKey = (
  base: KeyRecord | undefined,
  stored: StoredKey | undefined,
  policy: InferencePolicy | undefined,
): MergedKey => {
  const id = (stored?.id ?? base?.id)!;
  const sources: Record<string, 'policy' | 'store'> = {};
  const pick = <T>(field: string, s: T | undefined, b: T | undefined): T | undefined => {
    if (s !== undefined) sources[field] = 'store';
    else if (b !== undefined) sources[field] = 'policy';
    return s ?? b;
  };
  const caps: KeyCaps = {};
  const cleared = new Set(stored?.clearedCaps ?? []);
  for (const [wire, local] of CAPS) {
    if (cleared.has(local)) {
      sources[`caps.${wire}`] = 'store';
      continue;
    }
    const v = pick(`caps.${wire}`, stored?.caps?.[local], base?.caps[local]);
    if (v !== undefined) caps[local] = v;
  }
  const disabled = pick('disabled', stored?.disabled, base?.disabled) ?? false;
  // A reason belongs to the disabling that is in force: the store's, when the store decides.
  const reason = !disabled
    ? undefined
    : stored?.disabled !== undefined
      ? pick('disabled_reason', stored.disabledReason, undefined)
      : pick('disabled_reason', undefined, base?.disabledReason);
  const name = pick('name', stored?.name, base?.name);
  const hash = stored?.hash ?? base?.hash;
  const record: KeyRecord = {
    id,
    account: pick('account', stored?.account, base?.account) ?? id,
    tier: pick('tier', stored?.tier, base?.tier) ?? policy?.defaultTier ?? '',
    caps,
    disabled,
    ...(reason !== undefined ? { disabledReason: reason } : {}),
    ...(name !== undefined ? { name } : {}),
    ...(hash !== undefined ? { hash } : {}),
    ...(stored?.createdAtMs !== undefined ? { createdAtMs: stored.createdAtMs } : {}),
    ...(stored?.updatedAtMs !== undefined ? { updatedAtMs: stored.updatedAtMs } : {}),
  };
  return { record, sources };
};

const keyTo = ({ record: r, sources }: MergedKey): Key =>
  create(KeySchema, {
    id: r.id,
    account: r.account,
    tier: r.tier,
    caps: capsTo(r.caps),
    disabled: r.disabled,
    disabledReason: r.disabledReason ?? '',
    sources,
    ...(r.createdAtMs !== undefined ? { createdAt: timestampFromMs(r.createdAtMs) } : {}),
    ...(r.updatedAtMs !== undefined ? { updatedAt: timestampFromMs(r.updatedAtMs) } : {}),
    hashPrefix: r.hash?.slice(0, HASH_PREFIX_LEN) ?? '',
    name: r.name ?? '',
  });

const auditTo = (e: AuditRecord): AuditEntry =>
  create(AuditEntrySchema, {
    at: timestampFromMs(e.atMs),
    actor: e.actor,
    action: e.action,
    target: e.target,
    beforeJson: e.before === undefined ? '' : JSON.stringify(e.before),
    afterJson: e.after === undefined ? '' : JSON.stringify(e.after),
  });

/** Writes need the inference policy: it holds the pepper and the tiers a key may use. */
const policyOf = (deps: Deps): InferencePolicy => {
  const policy = deps.config().inference;
  if (!policy)
    throw new RkError('FAILED_PRECONDITION', 'no inference policy is configured: keys cannot be managed');
  return policy;
};

/**
 * AdminService: keys managed live (contract §1, §2). Every write is one atomic registry write that
 * also records the audit entry; the registry applies it on every instance's key directory, which
 * is what the request path reads (deps.keys).
 */
export const adminBinding = (deps: Deps): ServiceBinding => {
  const registry: KeyRegistry | undefined = deps.registry;
  if (!registry) throw new Error('AdminService needs deps.registry');
  // Without admin credentials every call is refused: AdminService never runs open.
  const auth: Authenticator = deps.auth?.admin ?? bearerAuth([], 'admin');
  const now = (): number => deps.store.now();

  const get = async (id: string): Promise<MergedKey> => {
    const policy = deps.config().inference;
    const base = policy?.keysById.get(id);
    const stored = await registry.get(id);
    if (!base && !stored) throw notFound(id);
    return mergeKey(base, stored, policy);
  };

  /** Applies `change` to the key's stored overlay (created for a policy-file key); NOT_FOUND otherwise. */
  const overlay = async (
    ctx: CallContext,
    id: string,
    action: 'update' | 'disable' | 'enable',
    change: (rec: StoredKey) => StoredKey,
  ): Promise<Key> => {
    const policy = policyOf(deps);
    const base = policy.keysById.get(id);
    const at = now();
    const mutate: Mutation = (before) => {
      if (!before && !base) throw notFound(id);
      return { ...change(before ?? { id }), updatedAtMs: at };
    };
    const { after } = await registry.write(id, mutate, { actor: auth.actor(ctx), action });
    return keyTo(mergeKey(base, after, policy));
  };

  return bind(
    AdminService,
    {
      async createKey(req, ctx) {
        const policy = policyOf(deps);
        const id = req.id === '' ? `key_${randomBytes(10).toString('hex')}` : req.id;
        if (!ID_RE.test(id)) throw invalid('id', 'letters, digits, . _ @ - (1-128)');
        if (req.tier !== '') tierCheck(policy, req.tier, 'tier');
        if (req.account !== '') accountCheck(req.account);
        checkLength(req.name, 'name', MAX_TEXT);
        const caps = capsFrom(req.caps, 'caps');
        if (policy.keysById.has(id))
          throw new RkError('ALREADY_EXISTS', `key "${id}" is defined in the policy file`);
        const rawKey = RAW_KEY_PREFIX + randomBytes(32).toString('base64url');
        const at = now();
        const rec: StoredKey = {
          id,
          hash: hashWithPepper(rawKey, policy.pepper),
          ...(req.account !== '' ? { account: req.account } : {}),
          ...(req.tier !== '' ? { tier: req.tier } : {}),
          caps,
          disabled: false,
          ...(req.name !== '' ? { name: req.name } : {}),
          createdAtMs: at,
          updatedAtMs: at,
        };
        const { after } = await registry.write(
          id,
          (before) => {
            if (before) throw new RkError('ALREADY_EXISTS', `key "${id}" already exists`);
            return rec;
          },
          { actor: auth.actor(ctx), action: 'create' },
        );
        deps.log.info({ keyId: id, hashPrefix: rec.hash!.slice(0, HASH_PREFIX_LEN) }, 'key created');
        return create(CreateKeyResponseSchema, { key: keyTo(mergeKey(undefined, after, policy)), rawKey });
      },

      async getKey(req) {
        return keyTo(await get(requireId(req.id)));
      },

      async listKeys(req) {
        const policy = deps.config().inference;
        const stored = new Map((await registry.all()).map((k) => [k.id, k]));
        const ids = new Set([...(policy?.keysById.keys() ?? []), ...stored.keys()]);
        const merged = [...ids]
          .sort()
          .map((id) => mergeKey(policy?.keysById.get(id), stored.get(id), policy))
          .filter((k) => req.account === '' || k.record.account === req.account);
        const page = pageById(merged, (k) => k.record.id, req);
        return create(ListKeysResponseSchema, {
          keys: page.items.map(keyTo),
          nextPageToken: page.nextPageToken,
        });
      },

      async updateKey(req, ctx) {
        const id = requireId(req.id);
        const policy = policyOf(deps);
        if (req.tier !== undefined) tierCheck(policy, req.tier, 'tier');
        if (req.account !== undefined) accountCheck(req.account);
        if (req.name !== undefined) checkLength(req.name, 'name', MAX_TEXT);
        const set = capsFrom(req.caps, 'caps');
        const clear = req.clearCaps.map((name, i) => {
          const cap = CAPS.find(([wire]) => wire === name);
          if (!cap)
            throw invalid(
              `clear_caps[${i}]`,
              `unknown cap "${name}"; known: ${CAPS.map((c) => c[0]).join(', ')}`,
            );
          if (set[cap[1]] !== undefined) throw invalid(`clear_caps[${i}]`, `"${name}" is also set in caps`);
          return cap[1];
        });
        const nothing =
          req.tier === undefined &&
          req.account === undefined &&
          req.name === undefined &&
          Object.keys(set).length === 0;
        if (nothing && clear.length === 0) {
          throw invalid('caps', 'nothing to update: give tier, account, name, caps or clear_caps');
        }
        return overlay(ctx, id, 'update', (rec) => {
          const caps: KeyCaps = { ...rec.caps, ...set };
          for (const c of clear) delete caps[c];
          const cleared = new Set(rec.clearedCaps ?? []);
          for (const c of Object.keys(set) as (keyof KeyCaps)[]) cleared.delete(c);
          for (const c of clear) cleared.add(c);
          const next: StoredKey = { ...rec, caps };
          if (cleared.size > 0) next.clearedCaps = [...cleared].sort();
          else delete next.clearedCaps;
          if (req.tier !== undefined) next.tier = req.tier;
          if (req.account !== undefined) next.account = req.account;
          if (req.name !== undefined) {
            if (req.name === '') delete next.name;
            else next.name = req.name;
          }
          return next;
        });
      },

      async disableKey(req, ctx) {
        const id = requireId(req.id);
        checkLength(req.reason, 'reason', MAX_TEXT);
        return overlay(ctx, id, 'disable', ({ disabledReason: _, ...rec }) => ({
          ...rec,
          disabled: true,
          ...(req.reason !== '' ? { disabledReason: req.reason } : {}),
        }));
      },

      async enableKey(req, ctx) {
        const id = requireId(req.id);
        return overlay(ctx, id, 'enable', ({ disabledReason: _, ...rec }) => ({ ...rec, disabled: false }));
      },

      async deleteKey(req, ctx) {
        const id = requireId(req.id);
        const policy = deps.config().inference;
        const inPolicy = policy?.keysById.has(id) ?? false;
        // Dropping a policy key's overlay would quietly revive the file's values: refuse instead.
        if (inPolicy) {
          throw new RkError(
            'FAILED_PRECONDITION',
            `key "${id}" is defined in the policy file: remove it there (DisableKey stops it at once)`,
          );
        }
        await registry.write(
          id,
          (before) => {
            if (!before) throw notFound(id);
            return undefined;
          },
          { actor: auth.actor(ctx), action: 'delete' },
        );
        return create(DeleteKeyResponseSchema, {});
      },

      async listAudit(req) {
        const page = await registry.listAudit({
          pageSize: req.pageSize,
          pageToken: req.pageToken,
          ...(req.target !== '' ? { target: req.target } : {}),
        });
        return create(ListAuditResponseSchema, {
          entries: page.items.map(auditTo),
          nextPageToken: page.nextPageToken,
        });
      },

      async reviewFlag(req, ctx) {
        const flags = deps.flags;
        if (!flags) throw new ConnectError('flag reviews need the report service', Code.Unimplemented);
        if (req.flagId === '') throw invalid('flag_id', 'required');
        const state =
          req.state === FlagStateMsg.REVIEWED
            ? 'reviewed'
            : req.state === FlagStateMsg.DISMISSED
              ? 'dismissed'
              : undefined;
        if (!state) throw invalid('state', 'must be FLAG_STATE_REVIEWED or FLAG_STATE_DISMISSED');
        const actor = auth.actor(ctx);
        const before = await flags.getFlag(req.flagId);
        if (!before) throw new RkError('NOT_FOUND', `flag "${req.flagId}" not found`);
        const after = await flags.reviewFlag(req.flagId, state, req.note, actor, now());
        await registry.audit({ actor, action: 'review_flag', target: req.flagId, before, after });
        return flagToProto(after);
      },
    },
    auth.check,
  );
};
