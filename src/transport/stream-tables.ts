/**
 * Keeps an HTTP/2 session's stream tables young, so closed streams die in the young generation.
 *
 * Node 20 keeps a session's open streams in a Map and a Set (`session[kState].streams` /
 * `.pendingStreams`), one entry added and deleted per stream. When V8 rehashes such a table it links
 * the old one to the new and leaves the old one's entries in place; once a table has reached the old
 * generation (every mark-compact moves the current one there), the chain from it holds every later
 * table and so every stream that passed through them, until the next mark-compact. Each scavenge then
 * copies all streams closed since the last one (bare node:http2 server at 8 calls in flight: 1.3 MB
 * surviving a scavenge, 2.2–3.5 ms pauses). A fresh table every few hundred streams cuts the chain:
 * the same server then keeps nothing across scavenges (0.2 ms pauses).
 */
import type { Http2Session } from 'node:http2';

/** Streams between replacements: the copy is of the open streams only, so this is cheap either way. */
export const REFRESH_EVERY = 256;

interface Tables {
  streams: Map<number, unknown>;
  pendingStreams: Set<unknown>;
}

/**
 * Whether `v` is a real Map (or Set) whatever its prototype, by the brand check of its `has`: Node's
 * SafeMap and SafeSet have no prototype chain for instanceof to follow.
 */
const branded = (has: (this: unknown, key: unknown) => boolean, v: unknown): boolean => {
  try {
    has.call(v, 0);
    return true;
  } catch {
    return false;
  }
};

const stateKey = (session: Http2Session): symbol | undefined =>
  Object.getOwnPropertySymbols(session).find((s) => s.description === 'state');

/** The session's tables, if this Node keeps them where Node 20 does; otherwise nothing is touched. */
const tablesOf = (session: Http2Session, key: symbol | undefined): Tables | undefined => {
  const state = key && (session as unknown as Record<symbol, unknown>)[key];
  if (typeof state !== 'object' || state === null) return undefined;
  const t = state as Partial<Tables>;
  return branded(Map.prototype.has, t.streams) && branded(Set.prototype.has, t.pendingStreams)
    ? (t as Tables)
    : undefined;
};

/**
 * Replaces the session's stream tables with copies every REFRESH_EVERY streams. The copy runs in its
 * own macrotask, never inside Node's HTTP/2 callbacks, which may hold a table across a call.
 */
export const keepStreamTablesYoung = (session: Http2Session): void => {
  const key = stateKey(session);
  if (!tablesOf(session, key)) return;
  let seen = 0;
  let pending = false;
  const refresh = (): void => {
    pending = false;
    const t = tablesOf(session, key);
    if (!t || session.destroyed) return;
    // Same classes as Node's own (its primordials' SafeMap / SafeSet), same entries.
    t.streams = new (t.streams.constructor as MapConstructor)(t.streams);
    t.pendingStreams = new (t.pendingStreams.constructor as SetConstructor)(t.pendingStreams);
  };
  session.on('stream', () => {
    if (++seen % REFRESH_EVERY !== 0 || pending) return;
    pending = true;
    setImmediate(refresh);
  });
};
