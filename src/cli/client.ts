/**
 * Shared plumbing for CLI commands that talk to a running server over gRPC: address and token from
 * flags or environment, a typed client for any generated service, and table / JSON output.
 */
import {
  create,
  type DescMessage,
  type DescService,
  type MessageInitShape,
  type MessageShape,
  toJson,
} from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import { type Timestamp, timestampMs } from '@bufbuild/protobuf/wkt';
import { type Client, credentials, Metadata, makeGenericClientConstructor, status } from '@grpc/grpc-js';
import { grpcServiceDefinition } from '../transport/grpc.js';

export const DEFAULT_ADDR = 'localhost:8081';
export const ADDR_ENV = 'RATEKEEPER_ADDR';
export const TOKEN_ENV = 'RATEKEEPER_TOKEN';

/** Where the CLI writes; tests pass their own. */
export interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
  env: NodeJS.ProcessEnv;
}

export const processIo = (): Io => ({
  out: (s) => process.stdout.write(s.endsWith('\n') ? s : `${s}\n`),
  err: (s) => process.stderr.write(s.endsWith('\n') ? s : `${s}\n`),
  env: process.env,
});

/** Flags every remote command takes. */
export const CONNECTION_OPTIONS = {
  addr: { type: 'string' },
  token: { type: 'string' },
  tls: { type: 'boolean' },
  json: { type: 'boolean' },
  timeout: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** Flags of every list command: the page to start at, its size, and whether to read on to the end. */
export const PAGE_OPTIONS = {
  'page-size': { type: 'string' },
  'page-token': { type: 'string' },
  all: { type: 'boolean' },
} as const;

export const CONNECTION_HELP = `connection:
  --addr HOST:PORT   server gRPC address (env ${ADDR_ENV}, default ${DEFAULT_ADDR})
  --token TOKEN      bearer token (env ${TOKEN_ENV})
  --tls              use TLS (system roots)
  --timeout SECONDS  per call (default 10)
  --json             print JSON (protobuf JSON mapping) instead of a table`;

export interface Connection {
  addr: string;
  token?: string;
  tls: boolean;
  timeoutMs: number;
}

/** A bad command line: printed with the command's usage, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The connection flags as parseArgs returns them. */
export interface ConnectionValues {
  addr?: string;
  token?: string;
  tls?: boolean;
  timeout?: string;
  help?: boolean;
}

const connectionFrom = (values: ConnectionValues, env: NodeJS.ProcessEnv): Connection => {
  const timeout = values.timeout === undefined ? 10 : Number(values.timeout);
  if (!Number.isFinite(timeout) || timeout <= 0) throw new UsageError('--timeout: seconds > 0');
  const token = values.token ?? env[TOKEN_ENV];
  return {
    addr: values.addr ?? env[ADDR_ENV] ?? DEFAULT_ADDR,
    ...(token ? { token } : {}),
    tls: values.tls ?? false,
    timeoutMs: timeout * 1000,
  };
};

/** A failed call: the gRPC status code (name and number) and the server's message. */
export class RpcError extends Error {
  override name = 'RpcError';
  constructor(
    readonly code: status,
    message: string,
  ) {
    super(message);
  }
  get codeName(): string {
    return status[this.code] ?? String(this.code);
  }
}

type Unary<M> = M extends { methodKind: 'unary'; input: infer I; output: infer O }
  ? I extends DescMessage
    ? O extends DescMessage
      ? (req: MessageInitShape<I>) => Promise<MessageShape<O>>
      : never
    : never
  : M extends { methodKind: 'server_streaming'; input: infer I; output: infer O }
    ? I extends DescMessage
      ? O extends DescMessage
        ? (req: MessageInitShape<I>, signal?: AbortSignal) => AsyncIterable<MessageShape<O>>
        : never
      : never
    : never;

/** A generated service's methods as promises (unary) and async iterables (server streams). */
export type RpcClient<S> =
  S extends GenService<infer T extends GenServiceMethods>
    ? { [K in keyof T]: Unary<T[K]> } & { close(): void }
    : never;

interface RawCall {
  on(event: 'data', cb: (msg: unknown) => void): void;
  on(event: 'end', cb: () => void): void;
  on(event: 'error', cb: (err: Error & { code?: number; details?: string }) => void): void;
  cancel(): void;
}

const toRpcError = (err: Error & { code?: number; details?: string }): RpcError =>
  new RpcError((err.code ?? status.UNKNOWN) as status, err.details || err.message);

/** Connects lazily; every call carries the bearer token (when given) and a deadline. */
export const rpcClient = <S extends GenService<GenServiceMethods>>(
  service: S,
  conn: Connection,
): RpcClient<S> => {
  const desc = service as unknown as DescService;
  const Ctor = makeGenericClientConstructor(grpcServiceDefinition(desc), desc.typeName);
  const raw = new Ctor(
    conn.addr,
    conn.tls ? credentials.createSsl() : credentials.createInsecure(),
  ) as Client & Record<string, (...args: unknown[]) => unknown>;
  const metadata = (): Metadata => {
    const md = new Metadata();
    if (conn.token) md.set('authorization', `Bearer ${conn.token}`);
    return md;
  };
  const out: Record<string, unknown> = { close: () => raw.close() };
  for (const m of desc.methods) {
    const fn = raw[m.localName]!.bind(raw);
    if (m.methodKind === 'unary') {
      out[m.localName] = (init: MessageInitShape<DescMessage>) =>
        new Promise((resolve, reject) => {
          fn(
            create(m.input, init),
            metadata(),
            { deadline: Date.now() + conn.timeoutMs },
            (err: Error, res: unknown) => (err ? reject(toRpcError(err)) : resolve(res)),
          );
        });
    } else {
      out[m.localName] = (init: MessageInitShape<DescMessage>, signal?: AbortSignal) => ({
        async *[Symbol.asyncIterator]() {
          // No deadline: a stream runs until the caller stops it.
          const call = fn(create(m.input, init), metadata(), {}) as RawCall;
          signal?.addEventListener('abort', () => call.cancel(), { once: true });
          const queue: unknown[] = [];
          let done = false;
          let failure: RpcError | undefined;
          let wake: (() => void) | undefined;
          const notify = () => {
            wake?.();
            wake = undefined;
          };
          call.on('data', (msg) => {
            queue.push(msg);
            notify();
          });
          call.on('end', () => {
            done = true;
            notify();
          });
          call.on('error', (err) => {
            if (err.code !== status.CANCELLED) failure = toRpcError(err);
            done = true;
            notify();
          });
          try {
            for (;;) {
              if (queue.length > 0) yield queue.shift();
              else if (failure) throw failure;
              else if (done) return;
              else await new Promise<void>((r) => (wake = r));
            }
          } finally {
            if (!done) call.cancel();
          }
        },
      });
    }
  }
  return out as RpcClient<S>;
};

/**
 * Runs one remote command with the exit codes every command shares: 0 ok (and --help), 1 the
 * server refused or could not be reached, 2 bad usage (printed with `help`). `parse` is the
 * command's parseArgs call; `explain` may word a status for this command instead of the default.
 */
export const runRemote = async <V extends ConnectionValues>(
  io: Io,
  help: string,
  parse: () => { values: V; positionals: string[] },
  body: (values: V, positionals: string[], conn: Connection) => Promise<number>,
  explain: (err: RpcError) => string | undefined = () => undefined,
): Promise<number> => {
  let parsed: { values: V; positionals: string[] };
  try {
    parsed = parse();
  } catch (err) {
    io.err(`${(err as Error).message}\n\n${help}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    io.out(help);
    return 0;
  }
  try {
    return await body(values, positionals, connectionFrom(values, io.env));
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`${err.message}\n\n${help}`);
      return 2;
    }
    if (err instanceof RpcError) {
      io.err(
        explain(err) ??
          (err.code === status.UNAVAILABLE
            ? `cannot reach ratekeeper: ${err.message}`
            : `${err.codeName}: ${err.message}`),
      );
      return 1;
    }
    throw err;
  }
};

/**
 * Reads the page at `token`, and with `all` every page after it. Returns the items and the
 * token of the page after the last one read ('' when there is none).
 */
export const collectPages = async <T>(
  token: string,
  all: boolean | undefined,
  fetch: (token: string) => Promise<{ items: T[]; nextPageToken: string }>,
): Promise<{ items: T[]; nextPageToken: string }> => {
  const items: T[] = [];
  let next = token;
  do {
    const page = await fetch(next);
    items.push(...page.items);
    next = page.nextPageToken;
  } while (all && next !== '');
  return { items, nextPageToken: next };
};

/** A timestamp as ISO 8601 UTC; '-' when the server sent none. */
export const isoTime = (ts: Timestamp | undefined): string =>
  ts ? new Date(timestampMs(ts)).toISOString() : '-';

/** Fixed-width columns, a header row, two spaces between. */
export const table = (headers: string[], rows: string[][]): string => {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
};

/** `field  value` lines for one record. */
export const fields = (pairs: [string, string][]): string => {
  const w = Math.max(...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n');
};

export const json = <D extends DescMessage>(schema: D, msg: MessageShape<D>): string =>
  JSON.stringify(toJson(schema, msg, { alwaysEmitImplicit: true }), null, 2);

/** Integer micro-dollars as USD, e.g. 1500000 → "$1.50" (no float rounding on the way). */
export const usd = (micros: bigint | number): string => {
  const m = BigInt(micros);
  const neg = m < 0n;
  const abs = neg ? -m : m;
  const dollars = abs / 1_000_000n;
  const frac = (abs % 1_000_000n)
    .toString()
    .padStart(6, '0')
    .replace(/0{1,4}$/, '');
  return `${neg ? '-' : ''}$${dollars}.${frac.padEnd(2, '0')}`;
};

/** A USD amount from the command line ("12.5", "$12.50", "0.000001") as integer micro-dollars. */
export const parseUsd = (s: string, flag: string): bigint => {
  const m = /^\$?(\d+)(?:\.(\d{1,6}))?$/.exec(s.trim());
  if (!m)
    throw new UsageError(`${flag}: expected a USD amount >= 0 with at most 6 decimals, e.g. 25 or 12.50`);
  return BigInt(m[1]!) * 1_000_000n + BigInt((m[2] ?? '').padEnd(6, '0') || '0');
};

/** A non-negative integer flag (token counts). */
export const parseCount = (s: string, flag: string): bigint => {
  const t = s.trim().replaceAll('_', '');
  if (!/^\d+$/.test(t)) throw new UsageError(`${flag}: expected an integer >= 0`);
  return BigInt(t);
};
