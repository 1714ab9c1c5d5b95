/**
 * `ratekeeper keys …` and `ratekeeper usage KEY`: key management and usage over gRPC against a
 * running server. Spend is given and shown in USD here and travels as integer micro-dollars.
 */
import { parseArgs } from 'node:util';
import { create } from '@bufbuild/protobuf';
import { status } from '@grpc/grpc-js';
import {
  AdminService,
  type AuditEntry,
  CreateKeyResponseSchema,
  type Key,
  type KeyCaps,
  KeySchema,
  ListAuditResponseSchema,
  ListKeysResponseSchema,
} from '../../gen/ratekeeper/v1/admin_pb.js';
import { KeyUsageSchema, ReportService } from '../../gen/ratekeeper/v1/report_pb.js';
import {
  CONNECTION_HELP,
  CONNECTION_OPTIONS,
  type Connection,
  collectPages,
  fields,
  type Io,
  isoTime,
  json,
  PAGE_OPTIONS,
  parseCount,
  parseUsd,
  processIo,
  rpcClient,
  runRemote,
  table,
  UsageError,
  usd,
} from './client.js';

const KEYS_USAGE = `usage: ratekeeper keys <command> [flags]

commands:
  create   [--id ID] [--account A] [--tier T] [--name N] [caps]   mint a key; prints the raw key once
  list     [--account A] [--page-size N] [--page-token T] [--all]
  get      ID
  update   ID [--tier T] [--account A] [--name N] [caps] [--clear CAP[,CAP]]
  disable  ID [--reason TEXT]
  enable   ID
  delete   ID
  audit    [ID] [--page-size N] [--page-token T]                   who changed what

caps (a value of "unlimited" clears the cap on update):
  --max-tokens N        per-request max_tokens
  --monthly-tokens N
  --monthly-spend USD   e.g. 250 or 12.50
  --daily-spend USD
  --clear CAP[,CAP]     max_tokens_per_request, monthly_tokens, monthly_spend_micros, daily_spend_micros

${CONNECTION_HELP}`;

const USAGE_USAGE = `usage: ratekeeper usage KEY [--model MODEL]

Current usage and limits of a key (its id or the raw key).

${CONNECTION_HELP}`;

const OPTIONS = {
  ...CONNECTION_OPTIONS,
  id: { type: 'string' },
  account: { type: 'string' },
  tier: { type: 'string' },
  name: { type: 'string' },
  reason: { type: 'string' },
  model: { type: 'string' },
  'max-tokens': { type: 'string' },
  'monthly-tokens': { type: 'string' },
  'monthly-spend': { type: 'string' },
  'daily-spend': { type: 'string' },
  clear: { type: 'string', multiple: true },
  ...PAGE_OPTIONS,
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

const CAP_FLAGS = [
  ['max-tokens', 'max_tokens_per_request', 'maxTokensPerRequest', parseCount],
  ['monthly-tokens', 'monthly_tokens', 'monthlyTokens', parseCount],
  ['monthly-spend', 'monthly_spend_micros', 'monthlySpendMicros', parseUsd],
  ['daily-spend', 'daily_spend_micros', 'dailySpendMicros', parseUsd],
] as const;

const UNLIMITED = new Set(['unlimited', 'none']);

type CapName = (typeof CAP_FLAGS)[number][2];

/** Caps to set and cap names to clear, from the cap flags. */
const capsOf = (
  v: Values,
  allowClear: boolean,
): { caps: Partial<Record<CapName, bigint>>; clear: string[] } => {
  const caps: Partial<Record<CapName, bigint>> = {};
  const clear: string[] = [];
  for (const [flag, wire, local, parse] of CAP_FLAGS) {
    const raw = v[flag];
    if (raw === undefined) continue;
    if (UNLIMITED.has(raw.toLowerCase())) {
      if (!allowClear) continue;
      clear.push(wire);
    } else caps[local] = parse(raw, `--${flag}`);
  }
  for (const item of (v.clear ?? []).flatMap((s) => s.split(','))) {
    const name = item.trim();
    const cap = CAP_FLAGS.find(([flag, wire]) => name === wire || name === flag || `${name}_micros` === wire);
    if (!cap) throw new UsageError(`--clear: unknown cap "${name}"`);
    if (!allowClear) throw new UsageError('--clear: only with update');
    if (!clear.includes(cap[1])) clear.push(cap[1]);
  }
  return { caps, clear };
};

const capText = (caps: KeyCaps | undefined, local: CapName, money: boolean): string => {
  const v = caps?.[local];
  if (v === undefined) return 'unlimited';
  return money ? usd(v) : v.toString();
};

const keyRows = (keys: Key[]): string =>
  table(
    [
      'ID',
      'ACCOUNT',
      'TIER',
      'STATUS',
      'MAX_TOKENS',
      'MONTHLY_TOKENS',
      'MONTHLY_SPEND',
      'DAILY_SPEND',
      'NAME',
    ],
    keys.map((k) => [
      k.id,
      k.account,
      k.tier,
      k.disabled ? 'disabled' : 'active',
      capText(k.caps, 'maxTokensPerRequest', false),
      capText(k.caps, 'monthlyTokens', false),
      capText(k.caps, 'monthlySpendMicros', true),
      capText(k.caps, 'dailySpendMicros', true),
      k.name,
    ]),
  );

const keyDetail = (k: Key): string => {
  const src = (field: string) => (k.sources[field] ? `  (${k.sources[field]})` : '');
  const pairs: [string, string][] = [
    ['id', k.id],
    ['name', (k.name || '-') + src('name')],
    ['account', k.account + src('account')],
    ['tier', k.tier + src('tier')],
    ['status', (k.disabled ? 'disabled' : 'active') + src('disabled')],
  ];
  if (k.disabled) pairs.push(['reason', (k.disabledReason || '-') + src('disabled_reason')]);
  for (const [, wire, local] of CAP_FLAGS) {
    pairs.push([
      wire.replace(/_micros$/, ''),
      capText(k.caps, local, wire.endsWith('_micros')) + src(`caps.${wire}`),
    ]);
  }
  pairs.push(['hash', k.hashPrefix ? `${k.hashPrefix}…` : '-']);
  pairs.push(['created', isoTime(k.createdAt)], ['updated', isoTime(k.updatedAt)]);
  return fields(pairs);
};

const auditRows = (entries: AuditEntry[]): string =>
  table(
    ['AT', 'ACTOR', 'ACTION', 'TARGET', 'CHANGE'],
    entries.map((e) => [isoTime(e.at), e.actor, e.action, e.target, diff(e.beforeJson, e.afterJson)]),
  );

/** The fields an audit entry changed, e.g. `tier: free→pro`. */
const diff = (beforeJson: string, afterJson: string): string => {
  const flat = (s: string): Record<string, string> => {
    if (s === '') return {};
    const out: Record<string, string> = {};
    const walk = (v: unknown, path: string) => {
      if (v && typeof v === 'object' && !Array.isArray(v)) {
        for (const [k, x] of Object.entries(v)) walk(x, path ? `${path}.${k}` : k);
      } else out[path] = JSON.stringify(v);
    };
    walk(JSON.parse(s), '');
    return out;
  };
  const a = flat(beforeJson);
  const b = flat(afterJson);
  const skip = new Set(['updatedAtMs', 'createdAtMs', 'hash', 'id', 'lastSeenMs', 'reviewedAtMs']);
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].filter(
    (k) => !skip.has(k) && a[k] !== b[k],
  );
  return keys.map((k) => `${k}: ${a[k] ?? '∅'}→${b[k] ?? '∅'}`).join(', ');
};

const one = (positionals: string[], what: string): string => {
  if (positionals.length !== 1 || positionals[0] === '') throw new UsageError(`expected exactly one ${what}`);
  return positionals[0]!;
};

const pageSize = (v: Values): number => {
  if (v['page-size'] === undefined) return 0;
  const n = Number(v['page-size']);
  if (!Number.isInteger(n) || n < 1) throw new UsageError('--page-size: integer >= 1');
  return n;
};

const keysCommand = async (
  cmd: string,
  rest: string[],
  v: Values,
  conn: Connection,
  io: Io,
): Promise<number> => {
  const admin = rpcClient(AdminService, conn);
  const showKey = (key: Key): number => {
    io.out(v.json ? json(KeySchema, key) : keyDetail(key));
    return 0;
  };
  try {
    switch (cmd) {
      case 'create': {
        if (rest.length > 0) throw new UsageError('create takes no positional arguments (use --id)');
        const { caps } = capsOf(v, false);
        const res = await admin.createKey({
          id: v.id ?? '',
          account: v.account ?? '',
          tier: v.tier ?? '',
          name: v.name ?? '',
          caps,
        });
        if (v.json) io.out(json(CreateKeyResponseSchema, res));
        else {
          io.out(keyDetail(res.key!));
          io.out(
            `\nraw key: ${res.rawKey}\nStore it now: it is shown once and the server keeps only its hash.`,
          );
        }
        return 0;
      }
      case 'list': {
        if (rest.length > 0) throw new UsageError('list takes no positional arguments');
        const size = pageSize(v);
        const { items: keys, nextPageToken: next } = await collectPages(
          v['page-token'] ?? '',
          v.all,
          async (pageToken) => {
            const page = await admin.listKeys({ pageSize: size, pageToken, account: v.account ?? '' });
            return { items: page.keys, nextPageToken: page.nextPageToken };
          },
        );
        if (v.json)
          io.out(json(ListKeysResponseSchema, create(ListKeysResponseSchema, { keys, nextPageToken: next })));
        else {
          io.out(keyRows(keys));
          if (next) io.out(`\nmore: --page-token ${next} (or --all)`);
        }
        return 0;
      }
      case 'get':
        return showKey(await admin.getKey({ id: one(rest, 'key id') }));
      case 'update': {
        const id = one(rest, 'key id');
        const { caps, clear } = capsOf(v, true);
        return showKey(
          await admin.updateKey({
            id,
            caps,
            clearCaps: clear,
            ...(v.tier !== undefined ? { tier: v.tier } : {}),
            ...(v.account !== undefined ? { account: v.account } : {}),
            ...(v.name !== undefined ? { name: v.name } : {}),
          }),
        );
      }
      case 'disable':
        return showKey(await admin.disableKey({ id: one(rest, 'key id'), reason: v.reason ?? '' }));
      case 'enable':
        return showKey(await admin.enableKey({ id: one(rest, 'key id') }));
      case 'delete': {
        const id = one(rest, 'key id');
        await admin.deleteKey({ id });
        io.out(v.json ? JSON.stringify({ deleted: id }) : `deleted ${id}`);
        return 0;
      }
      case 'audit': {
        if (rest.length > 1) throw new UsageError('audit takes at most one key or flag id');
        const res = await admin.listAudit({
          pageSize: pageSize(v),
          pageToken: v['page-token'] ?? '',
          target: rest[0] ?? '',
        });
        if (v.json) io.out(json(ListAuditResponseSchema, res));
        else {
          io.out(auditRows(res.entries));
          if (res.nextPageToken) io.out(`\nmore: --page-token ${res.nextPageToken}`);
        }
        return 0;
      }
      default:
        throw new UsageError(cmd === '' ? 'missing command' : `unknown command "${cmd}"`);
    }
  } finally {
    admin.close();
  }
};

const usageCommand = async (rest: string[], v: Values, conn: Connection, io: Io): Promise<number> => {
  const report = rpcClient(ReportService, conn);
  try {
    const u = await report.getKeyUsage({ key: one(rest, 'key (id or raw key)'), model: v.model ?? '' });
    if (v.json) {
      io.out(json(KeyUsageSchema, u));
      return 0;
    }
    io.out(
      fields([
        ['key', u.key],
        ['account', u.account],
        ['tier', u.tier],
        ['month tokens', u.monthTokens.toString()],
        ['month spend', usd(u.monthSpendMicros)],
        ['day spend', usd(u.daySpendMicros)],
      ]),
    );
    if (u.limits.length > 0) {
      const money = (m: string) => m.endsWith('_spend');
      const amount = (m: string, n: bigint) => (money(m) ? usd(n) : n.toString());
      io.out(
        `\n${table(
          ['METRIC', 'SCOPE', 'LIMIT', 'USED', 'REMAINING', 'WINDOW', 'RESET'],
          u.limits.map((l) => [
            l.metric,
            l.scope,
            amount(l.metric, l.limit),
            amount(l.metric, l.used),
            amount(l.metric, l.remaining),
            l.windowSeconds > 0n ? `${l.windowSeconds}s` : '-',
            l.reset > 0n ? new Date(Number(l.reset) * 1000).toISOString() : '-',
          ]),
        )}`,
      );
    }
    return 0;
  } finally {
    report.close();
  }
};

/** `ratekeeper keys …`: argv is what follows `keys`. Exit codes as `runRemote`. */
export const run = (argv: string[], io: Io = processIo()): Promise<number> => runGroup('keys', argv, io);

/** `keys` and `usage` share flags; exit codes as `runRemote`. */
export const runGroup = (group: 'keys' | 'usage', args: string[], io: Io): Promise<number> =>
  runRemote(
    io,
    group === 'usage' ? USAGE_USAGE : KEYS_USAGE,
    () => parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true }),
    (values, positionals, conn) => {
      if (group === 'usage') return usageCommand(positionals, values, conn, io);
      const [cmd = '', ...rest] = positionals;
      return keysCommand(cmd, rest, values, conn, io);
    },
    (err) =>
      err.code === status.UNIMPLEMENTED && group === 'usage'
        ? 'usage: this server does not serve ReportService.GetKeyUsage yet'
        : undefined,
  );
