import { invalid, RkError } from '../errors.js';
import type { KeyDirectory, StoredKey } from './types.js';

/** What the audit log records; `review_flag` targets a flag id, the rest a key id. */
export type AuditAction = 'create' | 'update' | 'disable' | 'enable' | 'delete' | 'review_flag';

export interface AuditRecord {
  atMs: number;
  /** The credential's name. */
  actor: string;
  action: AuditAction;
  target: string;
  /** JSON-able state before and after; absent when the record did not exist. */
  before?: unknown;
  after?: unknown;
}

/** Who makes a change and as what; the registry writes the audit entry in the same atomic step. */
export interface Change {
  actor: string;
  action: AuditAction;
}

/**
 * Turns the current record (undefined when absent) into the next one (undefined deletes it).
 * May run more than once when a concurrent write wins the race, so it must be pure; it throws
 * RkError to refuse (NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT…), and nothing is written then.
 */
export type Mutation = (before: StoredKey | undefined) => StoredKey | undefined;

export interface WriteResult {
  before: StoredKey | undefined;
  after: StoredKey | undefined;
  /** The registry version this write produced. */
  version: number;
}

export interface PageQuery {
  /** 0 → DEFAULT_PAGE_SIZE; capped at MAX_PAGE_SIZE. */
  pageSize: number;
  /** Opaque, from a previous page's nextPageToken; '' for the first page. */
  pageToken: string;
}

export interface Page<T> {
  items: T[];
  /** '' on the last page. */
  nextPageToken: string;
}

/**
 * Admin-managed keys (StoredKey records by id, with a hash → id index) and their audit log.
 *
 * Writes are atomic (record, hash index, version and audit entry together) and applied to every
 * instance's in-memory directory, which serves the hot path synchronously (`byId`, `byHash`).
 * Reads (`get`, `list`) go to the backing store, so an operator sees every instance's writes.
 */
export interface KeyRegistry extends KeyDirectory {
  get(id: string): Promise<StoredKey | undefined>;
  /** All records, ordered by id; account filters on the stored account field. */
  list(query: PageQuery & { account?: string }): Promise<Page<StoredKey>>;
  /** Every stored record, ordered by id. */
  all(): Promise<StoredKey[]>;
  /** Applies the mutation atomically; ALREADY_EXISTS when the new hash belongs to another id. */
  write(id: string, mutate: Mutation, change: Change): Promise<WriteResult>;
  /** Records a change made elsewhere (e.g. a flag review). */
  audit(record: Omit<AuditRecord, 'atMs'>): Promise<void>;
  /** Newest first. */
  listAudit(query: PageQuery & { target?: string }): Promise<Page<AuditRecord>>;
  /** Version of this instance's directory; grows by one per applied write. */
  readonly version: number;
  close(): Promise<void>;
}

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 1000;
export const DEFAULT_AUDIT_MAX = 10_000;

export const pageSizeOf = (pageSize: number): number => {
  if (!Number.isInteger(pageSize) || pageSize < 0) throw invalid('page_size', 'must be an integer >= 0');
  return pageSize === 0 ? DEFAULT_PAGE_SIZE : Math.min(pageSize, MAX_PAGE_SIZE);
};

export const encodeToken = (cursor: string): string => Buffer.from(cursor, 'utf8').toString('base64url');

/** A page token that did not come from this server's pages. */
export const badToken = (): RkError => invalid('page_token', 'not a token this server issued');

export const decodeToken = (token: string): string | undefined => {
  if (token === '') return undefined;
  const cursor = Buffer.from(token, 'base64url').toString('utf8');
  if (cursor === '' || encodeToken(cursor) !== token) throw badToken();
  return cursor;
};

/** Pages items already sorted by `idOf`, resuming after the id in the token. */
export const pageById = <T>(sorted: T[], idOf: (item: T) => string, query: PageQuery): Page<T> => {
  const size = pageSizeOf(query.pageSize);
  const after = decodeToken(query.pageToken);
  let start = 0;
  if (after !== undefined) {
    while (start < sorted.length && idOf(sorted[start]!) <= after) start++;
  }
  const items = sorted.slice(start, start + size);
  const more = start + size < sorted.length;
  return {
    items,
    nextPageToken: more && items.length > 0 ? encodeToken(idOf(items[items.length - 1]!)) : '',
  };
};

/**
 * List as every registry serves it: paging is checked before the store is read, then one
 * account's records (all without `account`), by id.
 */
export const listStored = async (
  all: () => Promise<StoredKey[]>,
  query: PageQuery & { account?: string },
): Promise<Page<StoredKey>> => {
  pageSizeOf(query.pageSize);
  decodeToken(query.pageToken);
  const rows = await all();
  return pageById(query.account ? rows.filter((k) => k.account === query.account) : rows, (k) => k.id, query);
};

export const byIdOrder = (a: StoredKey, b: StoredKey): number => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

/** Checks a mutation's output against the record it replaces; throws on a broken invariant. */
export const checkMutation = (id: string, after: StoredKey | undefined): void => {
  if (after !== undefined && after.id !== id) throw new RkError('INTERNAL', `mutation changed key id ${id}`);
};

/** The synchronous in-memory directory every registry keeps for the hot path. */
export class KeyView implements KeyDirectory {
  private ids = new Map<string, StoredKey>();
  private hashes = new Map<string, string>();
  version = 0;

  byId(id: string): StoredKey | undefined {
    return this.ids.get(id);
  }

  byHash(hash: string): StoredKey | undefined {
    const id = this.hashes.get(hash);
    return id === undefined ? undefined : this.ids.get(id);
  }

  /** Applies one change: the record `id` becomes `rec` (undefined: deleted). */
  apply(id: string, rec: StoredKey | undefined, version: number): void {
    const old = this.ids.get(id);
    if (old?.hash !== undefined) this.hashes.delete(old.hash);
    if (rec === undefined) this.ids.delete(id);
    else {
      this.ids.set(id, rec);
      if (rec.hash !== undefined) this.hashes.set(rec.hash, id);
    }
    this.version = version;
  }

  /** Every record, ordered by id. */
  records(): StoredKey[] {
    return [...this.ids.values()].sort(byIdOrder);
  }

  replace(records: StoredKey[], version: number): void {
    this.ids = new Map(records.map((r) => [r.id, r]));
    this.hashes = new Map();
    for (const r of records) if (r.hash !== undefined) this.hashes.set(r.hash, r.id);
    this.version = version;
  }
}

export interface MemoryRegistryOptions {
  now?: () => number;
  /** Audit entries kept; older ones are dropped. */
  auditMax?: number;
}

/** A single-process registry (no Redis configured): the directory is the store. */
export class MemoryKeyRegistry implements KeyRegistry {
  private readonly view = new KeyView();
  private readonly auditLog: (AuditRecord & { seq: number })[] = [];
  private seq = 0;
  private readonly now: () => number;
  private readonly auditMax: number;

  constructor(opts: MemoryRegistryOptions = {}) {
    this.now = opts.now ?? Date.now;
    this.auditMax = opts.auditMax ?? DEFAULT_AUDIT_MAX;
  }

  get version(): number {
    return this.view.version;
  }

  byId(id: string): StoredKey | undefined {
    return this.view.byId(id);
  }

  byHash(hash: string): StoredKey | undefined {
    return this.view.byHash(hash);
  }

  async get(id: string): Promise<StoredKey | undefined> {
    return this.view.byId(id);
  }

  async all(): Promise<StoredKey[]> {
    return this.view.records();
  }

  list(query: PageQuery & { account?: string }): Promise<Page<StoredKey>> {
    return listStored(() => this.all(), query);
  }

  async write(id: string, mutate: Mutation, change: Change): Promise<WriteResult> {
    const before = this.view.byId(id);
    const after = clone(mutate(before));
    checkMutation(id, after);
    if (after?.hash !== undefined) {
      const owner = this.view.byHash(after.hash);
      if (owner !== undefined && owner.id !== id)
        throw new RkError('ALREADY_EXISTS', 'key hash already registered');
    }
    this.view.apply(id, after, this.view.version + 1);
    this.push({ ...change, target: id, atMs: this.now(), before, after });
    return { before, after, version: this.view.version };
  }

  async audit(record: Omit<AuditRecord, 'atMs'>): Promise<void> {
    this.push({ ...record, atMs: this.now() });
  }

  async listAudit(query: PageQuery & { target?: string }): Promise<Page<AuditRecord>> {
    const size = pageSizeOf(query.pageSize);
    const cursor = decodeToken(query.pageToken);
    const below = cursor === undefined ? Number.POSITIVE_INFINITY : Number(cursor);
    if (Number.isNaN(below)) throw badToken();
    const items: AuditRecord[] = [];
    let last = -1;
    let more = false;
    for (let i = this.auditLog.length - 1; i >= 0; i--) {
      const e = this.auditLog[i]!;
      if (e.seq >= below || (query.target && e.target !== query.target)) continue;
      if (items.length === size) {
        more = true;
        break;
      }
      const { seq, ...rec } = e;
      items.push(rec);
      last = seq;
    }
    return { items, nextPageToken: more ? encodeToken(String(last)) : '' };
  }

  async close(): Promise<void> {}

  private push(rec: AuditRecord): void {
    this.auditLog.push({ ...clone(rec), seq: ++this.seq });
    if (this.auditLog.length > this.auditMax) this.auditLog.splice(0, this.auditLog.length - this.auditMax);
  }
}

/** Audit entries hold snapshots, never live references to records. */
const clone = <T>(v: T): T => (v === undefined ? v : structuredClone(v));
