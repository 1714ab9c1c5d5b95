/** `ratekeeper flags|top|watch` in-process against the real server (gRPC), state raised through the engine. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../src/cli/report.js';
import type { ReportRuntime } from '../../src/report/index.js';
import { MemoryStore } from '../../src/store/memory.js';
import { startTestServer, type TestServer } from '../harness/server.js';

const TOKEN = 'ops-token-0123456789abcdef';
process.env['RATEKEEPER_ADMIN_TOKENS'] = `ops:${TOKEN}`;
const T0 = Date.UTC(2026, 10, 25, 12, 0, 0);

let server: TestServer;
let report: ReportRuntime;

beforeAll(async () => {
  server = await startTestServer({
    files: { 'policy.yaml': 'kind: inference-policy\npepper: p\n' },
    store: new MemoryStore({ now: () => T0, sweepIntervalMs: 0 }),
  });
  report = server.server.deps.report!;
  report.engine.record({ kind: 'expired', atMs: T0, key: 'k-hung', account: 'acme', count: 4 });
  for (let i = 0; i < 40; i++) {
    report.engine.record({
      kind: 'decision',
      atMs: T0,
      key: 'k-busy',
      account: 'beta',
      admitted: true,
      retryMs: 0,
    });
  }
  await report.engine.idle();
});
afterAll(() => server?.stop());

const cli = async (argv: string[], opts: { token?: string; signal?: AbortSignal; out?: string[] } = {}) => {
  const out: string[] = opts.out ?? [];
  const err: string[] = [];
  const code = await run(
    argv,
    {
      out: (s) => out.push(s),
      err: (s) => err.push(s),
      env: { RATEKEEPER_ADDR: server.grpcAddress, RATEKEEPER_TOKEN: opts.token ?? TOKEN },
    },
    opts.signal,
  );
  return { code, out: out.join('\n'), err: err.join('\n') };
};

describe('ratekeeper flags / top / watch', () => {
  it('lists flags as a table and as JSON, and reviews one', async () => {
    const list = await cli(['flags', 'list']);
    expect(list.code).toBe(0);
    expect(list.out).toMatch(/^ID\s+STATE\s+SIGNAL\s+KEY/);
    expect(list.out).toMatch(/f0000000001\s+open\s+runaway_requests\s+k-hung\s+acme\s+4 \/ 3\s+3600s/);

    const js = JSON.parse((await cli(['flags', 'list', '--json', '--state', 'open'])).out);
    expect(js.flags[0]).toMatchObject({
      id: 'f0000000001',
      signal: 'SIGNAL_RUNAWAY_REQUESTS',
      state: 'FLAG_STATE_OPEN',
    });

    const rev = await cli([
      'flags',
      'review',
      'f0000000001',
      '--state',
      'reviewed',
      '--note',
      'client fixed',
    ]);
    expect(rev.code).toBe(0);
    expect(rev.out).toMatch(/reviewed\s+runaway_requests.*ops: client fixed/);
    expect((await cli(['flags', 'list', '--state', 'open'])).out).toBe('no flags');
  });

  it('ranks top keys', async () => {
    const top = await cli(['top', '--by', 'requests', '--window', '15m']);
    expect(top.code).toBe(0);
    expect(top.out).toMatch(/1\s+k-busy\s+beta\s+40/);
    const js = JSON.parse((await cli(['top', '--json'])).out);
    expect(js.entries[0]).toEqual({ key: 'k-busy', account: 'beta', value: '40' });
  });

  it('streams alerts until interrupted', async () => {
    const ac = new AbortController();
    const lines: string[] = [];
    const watching = cli(['watch', '--account', 'gamma'], { signal: ac.signal, out: lines });
    await expect.poll(() => (report.store as unknown as { subscribers: number }).subscribers).toBe(1);
    await report.store.publish({
      atMs: T0,
      crossing: {
        key: 'k9',
        account: 'gamma',
        metric: 'monthly_spend',
        share: 0.8,
        used: 800_000,
        limit: 1_000_000,
        period: '2026-11',
      },
    });
    await report.store.publish({
      atMs: T0,
      crossing: {
        key: 'k8',
        account: 'other',
        metric: 'monthly_tokens',
        share: 1,
        used: 10,
        limit: 10,
        period: '2026-11',
      },
    });
    // Alerts arrive in order: once the third (gamma again) is printed, the second was filtered out.
    await report.store.publish({
      atMs: T0,
      crossing: {
        key: 'k9',
        account: 'gamma',
        metric: 'monthly_spend',
        share: 1,
        used: 1_000_000,
        limit: 1_000_000,
        period: '2026-11',
      },
    });
    await expect.poll(() => lines.length).toBe(2);
    ac.abort();
    const res = await watching;
    expect(res.code).toBe(0);
    expect(res.out).toBe(
      [
        '2026-11-25T12:00:00.000Z  THRESHOLD  monthly_spend 80%  key=k9 account=gamma  $0.80 of $1.00 (2026-11)',
        '2026-11-25T12:00:00.000Z  THRESHOLD  monthly_spend 100%  key=k9 account=gamma  $1.00 of $1.00 (2026-11)',
      ].join('\n'),
    );
  });

  it('exits 2 on bad usage and 1 when the server refuses', async () => {
    expect((await cli(['flags'])).code).toBe(2);
    expect((await cli(['flags', 'list', '--state', 'maybe'])).code).toBe(2);
    expect((await cli(['flags', 'review', 'f1'])).err).toContain('--state reviewed|dismissed is required');
    expect((await cli(['top', '--by', 'karma'])).code).toBe(2);
    expect((await cli(['top', '--window', '2d'])).code).toBe(2);
    expect((await cli(['top', '--bogus'])).code).toBe(2);
    const denied = await cli(['flags', 'list'], { token: 'wrong-token-wrong-token' });
    expect(denied.code).toBe(1);
    expect(denied.err).toContain('UNAUTHENTICATED');
    const missing = await cli(['flags', 'review', 'f0000009999', '--state', 'dismissed']);
    expect(missing.code).toBe(1);
    expect(missing.err).toContain('NOT_FOUND');
    expect((await cli(['top', '--help'])).out).toContain('usage: ratekeeper top');
  });
});
