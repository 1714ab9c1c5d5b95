/**
 * `ratekeeper flags list|review`, `ratekeeper top`, `ratekeeper watch`: abuse flags, top keys and
 * the alert stream over gRPC against a running server (ReportService; reviews go to AdminService).
 */
import { parseArgs } from 'node:util';
import { create } from '@bufbuild/protobuf';
import { AdminService } from '../../gen/ratekeeper/v1/admin_pb.js';
import {
  type Alert,
  AlertSchema,
  type Flag,
  FlagSchema,
  FlagState,
  ListFlagsResponseSchema,
  ReportService,
  Signal,
  TopKeysResponseSchema,
} from '../../gen/ratekeeper/v1/report_pb.js';
import {
  DEFAULT_TOP_LIMIT,
  DEFAULT_TOP_WINDOW_S,
  FLAG_STATE_TO_MSG,
  MAX_PAGE_SIZE,
  MAX_TOP_LIMIT,
  MAX_TOP_WINDOW_S,
  SIGNAL_TO_MSG,
} from '../services/report-wire.js';
import {
  CONNECTION_HELP,
  CONNECTION_OPTIONS,
  type Connection,
  collectPages,
  type Io,
  isoTime,
  json,
  PAGE_OPTIONS,
  processIo,
  rpcClient,
  runRemote,
  table,
  UsageError,
  usd,
} from './client.js';

const FLAGS_USAGE = `usage: ratekeeper flags <command> [flags]

commands:
  list     [--state open|reviewed|dismissed] [--signal SIGNAL] [--account A]
           [--page-size N] [--page-token T] [--all]
  review   FLAG_ID --state reviewed|dismissed [--note TEXT]

signals: excessive_request_rate, excessive_token_rate, runaway_requests, retry_storm, limit_splitting

${CONNECTION_HELP}`;

const TOP_USAGE = `usage: ratekeeper top [--by requests|tokens|spend] [--window DURATION] [--limit N]

Keys ranked by requests admitted, tokens debited or spend over the last window
(default: requests over 1h; window up to 24h, e.g. 90s, 15m, 1h).

${CONNECTION_HELP}`;

const WATCH_USAGE = `usage: ratekeeper watch [--account A]

Streams new flags and threshold crossings (monthly spend and tokens) until interrupted.
With --json, one JSON object per line.

${CONNECTION_HELP}`;

const OPTIONS = {
  ...CONNECTION_OPTIONS,
  state: { type: 'string' },
  signal: { type: 'string' },
  account: { type: 'string' },
  note: { type: 'string' },
  by: { type: 'string' },
  window: { type: 'string' },
  limit: { type: 'string' },
  ...PAGE_OPTIONS,
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

/** The command line names states and signals as the server does. */
const STATES: Readonly<Record<string, FlagState>> = FLAG_STATE_TO_MSG;
const SIGNALS: Readonly<Record<string, Signal>> = SIGNAL_TO_MSG;
const nameOf = <T>(map: Readonly<Record<string, T>>, v: T): string =>
  Object.entries(map).find(([, x]) => x === v)?.[0] ?? String(v);

const choice = <T>(
  map: Readonly<Record<string, T>>,
  raw: string | undefined,
  flag: string,
): T | undefined => {
  if (raw === undefined) return undefined;
  const v = map[raw.trim().toLowerCase()];
  if (v === undefined) throw new UsageError(`${flag}: one of ${Object.keys(map).join(', ')}`);
  return v;
};

const positiveInt = (raw: string | undefined, flag: string, max: number): number | undefined => {
  if (raw === undefined) return undefined;
  const n = Number(raw.trim());
  if (!Number.isSafeInteger(n) || n <= 0 || n > max) throw new UsageError(`${flag}: an integer 1..${max}`);
  return n;
};

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600 };
/** "90s", "15m", "1h" or bare seconds. */
const parseWindow = (raw: string): number => {
  const m = /^\s*(\d+)\s*([smh]?)\s*$/.exec(raw);
  const s = m ? Number(m[1]) * UNITS[m[2] || 's']! : 0;
  if (s <= 0 || s > MAX_TOP_WINDOW_S)
    throw new UsageError('--window: a duration from 1s to 24h, e.g. 90s, 15m, 1h');
  return s;
};

const figure = (f: Flag): string =>
  f.signal === Signal.EXCESSIVE_REQUEST_RATE || f.signal === Signal.EXCESSIVE_TOKEN_RATE
    ? `${(f.observed * 100).toFixed(1)}% / ${(f.threshold * 100).toFixed(0)}%`
    : `${f.observed} / ${f.threshold}`;

const flagRows = (flags: Flag[]): string =>
  table(
    [
      'ID',
      'STATE',
      'SIGNAL',
      'KEY',
      'ACCOUNT',
      'OBSERVED/THRESHOLD',
      'WINDOW',
      'FIRST_SEEN',
      'LAST_SEEN',
      'NOTE',
    ],
    flags.map((f) => [
      f.id,
      nameOf(STATES, f.state),
      nameOf(SIGNALS, f.signal),
      f.key,
      f.account,
      figure(f),
      `${f.windowSeconds}s`,
      isoTime(f.firstSeen),
      isoTime(f.lastSeen),
      f.reviewedBy ? `${f.reviewedBy}: ${f.note}` : f.note,
    ]),
  );

const alertLine = (a: Alert): string => {
  const at = isoTime(a.at);
  if (a.kind.case === 'flag') {
    const f = a.kind.value;
    return `${at}  FLAG  ${nameOf(SIGNALS, f.signal)}  key=${f.key} account=${f.account} id=${f.id}  ${f.detail}`;
  }
  if (a.kind.case === 'threshold') {
    const t = a.kind.value;
    const money = t.metric === 'monthly_spend';
    const fmt = (v: bigint) => (money ? usd(v) : v.toString());
    return `${at}  THRESHOLD  ${t.metric} ${Math.round(t.share * 100)}%  key=${t.key} account=${t.account}  ${fmt(t.used)} of ${fmt(t.limit)} (${t.period})`;
  }
  return `${at}  (unknown alert)`;
};

async function flagsCommand(positionals: string[], v: Values, conn: Connection, io: Io): Promise<number> {
  const [cmd = '', ...rest] = positionals;
  if (cmd === 'list') {
    if (rest.length > 0) throw new UsageError(`flags list: unexpected ${rest[0]}`);
    const state = choice(STATES, v.state, '--state');
    const signal = choice(SIGNALS, v.signal, '--signal');
    const pageSize = positiveInt(v['page-size'], '--page-size', MAX_PAGE_SIZE);
    const client = rpcClient(ReportService, conn);
    try {
      const { items: flags, nextPageToken: token } = await collectPages(
        v['page-token'] ?? '',
        v.all,
        async (pageToken) => {
          const page = await client.listFlags({
            ...(state !== undefined ? { state } : {}),
            ...(signal !== undefined ? { signal } : {}),
            account: v.account ?? '',
            pageSize: pageSize ?? 0,
            pageToken,
          });
          return { items: page.flags, nextPageToken: page.nextPageToken };
        },
      );
      if (v.json) {
        io.out(
          json(ListFlagsResponseSchema, create(ListFlagsResponseSchema, { flags, nextPageToken: token })),
        );
      } else {
        io.out(flags.length === 0 ? 'no flags' : flagRows(flags));
        if (token) io.out(`more: --page-token ${token}`);
      }
      return 0;
    } finally {
      client.close();
    }
  }
  if (cmd === 'review') {
    const [id, ...extra] = rest;
    if (!id) throw new UsageError('flags review: FLAG_ID is required');
    if (extra.length > 0) throw new UsageError(`flags review: unexpected ${extra[0]}`);
    const state = choice(
      { reviewed: FlagState.REVIEWED, dismissed: FlagState.DISMISSED },
      v.state,
      '--state',
    );
    if (state === undefined) throw new UsageError('flags review: --state reviewed|dismissed is required');
    const client = rpcClient(AdminService, conn);
    try {
      const flag = await client.reviewFlag({ flagId: id, state, note: v.note ?? '' });
      io.out(v.json ? json(FlagSchema, flag) : flagRows([flag]));
      return 0;
    } finally {
      client.close();
    }
  }
  throw new UsageError(cmd === '' ? 'flags: a command is required' : `flags: unknown command ${cmd}`);
}

async function topCommand(positionals: string[], v: Values, conn: Connection, io: Io): Promise<number> {
  if (positionals.length > 0) throw new UsageError(`top: unexpected ${positionals[0]}`);
  const by = v.by ?? 'requests';
  if (!['requests', 'tokens', 'spend'].includes(by)) throw new UsageError('--by: requests, tokens or spend');
  const windowSeconds = v.window === undefined ? DEFAULT_TOP_WINDOW_S : parseWindow(v.window);
  const limit = positiveInt(v.limit, '--limit', MAX_TOP_LIMIT) ?? DEFAULT_TOP_LIMIT;
  const client = rpcClient(ReportService, conn);
  try {
    const res = await client.topKeys({ by, windowSeconds: BigInt(windowSeconds), limit });
    if (v.json) io.out(json(TopKeysResponseSchema, res));
    else if (res.entries.length === 0) io.out(`no usage in the last ${windowSeconds}s`);
    else {
      io.out(
        table(
          ['#', 'KEY', 'ACCOUNT', by.toUpperCase()],
          res.entries.map((e, i) => [
            String(i + 1),
            e.key,
            e.account,
            by === 'spend' ? usd(e.value) : e.value.toString(),
          ]),
        ),
      );
    }
    return 0;
  } finally {
    client.close();
  }
}

async function watchCommand(
  positionals: string[],
  v: Values,
  conn: Connection,
  io: Io,
  signal: AbortSignal,
): Promise<number> {
  if (positionals.length > 0) throw new UsageError(`watch: unexpected ${positionals[0]}`);
  const client = rpcClient(ReportService, conn);
  try {
    for await (const alert of client.watchAlerts({ account: v.account ?? '' }, signal)) {
      io.out(v.json ? JSON.stringify(JSON.parse(json(AlertSchema, alert))) : alertLine(alert));
    }
    return 0;
  } finally {
    client.close();
  }
}

const HELP = { flags: FLAGS_USAGE, top: TOP_USAGE, watch: WATCH_USAGE } as const;

/**
 * argv starts with the command name (flags, top or watch). Exit codes: 0 ok, 1 the server refused
 * or could not be reached, 2 bad usage. `watch` runs until `signal` aborts (Ctrl-C by default).
 */
export async function run(argv: string[], io: Io = processIo(), signal?: AbortSignal): Promise<number> {
  const [name = '', ...args] = argv;
  if (!(name in HELP)) {
    io.err(`unknown report command ${name}`);
    return 2;
  }
  const group = name as keyof typeof HELP;
  return runRemote(
    io,
    HELP[group],
    () => parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true }),
    (values, positionals, conn) => {
      if (group === 'flags') return flagsCommand(positionals, values, conn, io);
      if (group === 'top') return topCommand(positionals, values, conn, io);
      let stop = signal;
      if (!stop) {
        const ac = new AbortController();
        process.once('SIGINT', () => ac.abort());
        stop = ac.signal;
      }
      return watchCommand(positionals, values, conn, io, stop);
    },
  );
}
