/**
 * keepStreamTablesYoung on a real node:http2 server and client: the session's stream tables are
 * replaced every REFRESH_EVERY streams with copies holding the same open streams, and calls in flight
 * across a replacement are answered.
 */
import { connect, createServer, type Http2Session, type ServerHttp2Stream } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { keepStreamTablesYoung, REFRESH_EVERY } from '../../src/transport/stream-tables.js';

interface Tables {
  streams: Map<number, unknown>;
  pendingStreams: Set<unknown>;
}
const tables = (s: Http2Session): Tables => {
  const key = Object.getOwnPropertySymbols(s).find((k) => k.description === 'state') as symbol;
  return (s as unknown as Record<symbol, Tables>)[key] as Tables;
};

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanup.splice(0)) f();
});

/** A server that answers each stream after `hold` ms, recording its session's tables as they are. */
const serve = async (hold: number) => {
  const server = createServer();
  let session!: Http2Session;
  const seen: { streams: Map<number, unknown>; open: number }[] = [];
  server.on('session', (s) => {
    session = s;
    keepStreamTablesYoung(s);
  });
  server.on('stream', (stream: ServerHttp2Stream) => {
    const t = tables(stream.session as Http2Session);
    seen.push({ streams: t.streams, open: t.streams.size });
    setTimeout(() => stream.respond({ ':status': 200 }, { endStream: true }), hold);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const client = connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  cleanup.push(
    () => client.close(),
    () => server.close(),
  );
  const call = () =>
    new Promise<number>((resolve, reject) => {
      const req = client.request({ ':path': '/' });
      req.on('response', (h) => resolve(Number(h[':status'])));
      req.on('error', reject);
      req.end();
    });
  return { call, seen, session: () => session };
};

describe('keepStreamTablesYoung', () => {
  it('replaces the tables every REFRESH_EVERY streams, keeping the open streams, and every call is answered', async () => {
    const { call, seen, session } = await serve(2);
    const n = REFRESH_EVERY * 3;
    const statuses: number[] = [];
    // 16 calls in flight at a time, so replacements happen while streams are open.
    for (let i = 0; i < n; i += 16) statuses.push(...(await Promise.all(Array.from({ length: 16 }, call))));
    expect(statuses).toEqual(Array(n).fill(200));
    const distinct = new Set(seen.map((s) => s.streams));
    expect(distinct.size).toBeGreaterThanOrEqual(3);
    expect(seen.some((s) => s.open > 1)).toBe(true);
    const t = tables(session());
    expect(t.streams.size).toBe(0);
    expect(t.pendingStreams.size).toBe(0);
    expect(t.streams).not.toBe(seen[0]!.streams);
  });

  it('leaves a session alone when the tables are not where Node 20 keeps them', () => {
    const listeners: string[] = [];
    const fake = { on: (e: string) => listeners.push(e) } as unknown as Http2Session;
    expect(() => keepStreamTablesYoung(fake)).not.toThrow();
    expect(listeners).toEqual([]);
  });
});
