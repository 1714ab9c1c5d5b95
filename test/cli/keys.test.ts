import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseUsd, usd } from '../../src/cli/client.js';
import { run } from '../../src/cli/keys.js';
import { run as runUsage } from '../../src/cli/usage.js';
import { MemoryKeyRegistry } from '../../src/keys/registry.js';
import { ADMIN_TOKEN, type AdminServer, startAdminServer } from '../services/admin-server.js';

const exec = promisify(execFile);

let server: AdminServer;
let registry: MemoryKeyRegistry;

beforeAll(async () => {
  registry = new MemoryKeyRegistry();
  server = await startAdminServer({ registry });
});
afterAll(() => server.stop());

/** Runs the CLI in-process against the server; address and token from the environment. */
const cli = async (argv: string[], env: NodeJS.ProcessEnv = {}, group = run) => {
  const out: string[] = [];
  const err: string[] = [];
  const code = await group(argv, {
    out: (s) => out.push(s),
    err: (s) => err.push(s),
    env: { RATEKEEPER_ADDR: server.addr, RATEKEEPER_TOKEN: ADMIN_TOKEN, ...env },
  });
  return { code, out: out.join('\n'), err: err.join('\n') };
};

describe('ratekeeper keys (in-process, real server)', () => {
  it('create prints the key and its raw key once; --json gives the same as protobuf JSON', async () => {
    const res = await cli([
      'create',
      '--id',
      'cli-1',
      '--account',
      'acme',
      '--tier',
      'pro',
      '--monthly-spend',
      '12.50',
      '--max-tokens',
      '4096',
    ]);
    expect(res.code).toBe(0);
    expect(res.out).toMatch(/raw key: rk_\S{43}/);
    expect(res.out).toMatch(/monthly_spend\s+\$12\.50\s+\(store\)/);
    expect(res.out).toMatch(/max_tokens_per_request\s+4096/);
    const js = await cli([
      'create',
      '--id',
      'cli-2',
      '--account',
      'beta',
      '--daily-spend',
      '$0.25',
      '--json',
    ]);
    expect(js.code).toBe(0);
    const parsed = JSON.parse(js.out);
    expect(parsed.rawKey).toMatch(/^rk_/);
    expect(parsed.key).toMatchObject({ id: 'cli-2', account: 'beta', caps: { dailySpendMicros: '250000' } });
    expect(registry.byId('cli-2')?.caps?.dailySpendMicros).toBe(250_000);
  });

  it('list shows a table (with policy-file keys) and filters by account; --json and --all page through', async () => {
    const res = await cli(['list']);
    expect(res.code).toBe(0);
    const lines = res.out.split('\n');
    expect(lines[0]).toMatch(/^ID\s+ACCOUNT\s+TIER\s+STATUS\s+MAX_TOKENS/);
    expect(res.out).toMatch(/cli-1\s+acme\s+pro\s+active\s+4096\s+unlimited\s+\$12\.50/);
    expect(res.out).toMatch(/static-1\s+acme\s+free/);
    const acme = await cli(['list', '--account', 'beta', '--json']);
    expect(JSON.parse(acme.out).keys.map((k: { id: string }) => k.id)).toEqual(['cli-2']);
    const paged = await cli(['list', '--page-size', '1']);
    expect(paged.out).toMatch(/more: --page-token \S+/);
    const all = await cli(['list', '--page-size', '1', '--all', '--json']);
    expect(JSON.parse(all.out).keys.length).toBeGreaterThanOrEqual(3);
  });

  it('get shows where each value comes from; update sets and clears caps', async () => {
    const got = await cli(['get', 'static-1']);
    expect(got.code).toBe(0);
    expect(got.out).toMatch(/tier\s+free\s+\(policy\)/);
    const upd = await cli([
      'update',
      'cli-1',
      '--tier',
      'free',
      '--monthly-spend',
      'unlimited',
      '--monthly-tokens',
      '1_000',
    ]);
    expect(upd.code).toBe(0);
    expect(upd.out).toMatch(/tier\s+free\s+\(store\)/);
    expect(upd.out).toMatch(/monthly_spend\s+unlimited\s+\(store\)/);
    expect(upd.out).toMatch(/monthly_tokens\s+1000/);
    const clr = await cli(['update', 'cli-1', '--clear', 'max_tokens_per_request,monthly_tokens', '--json']);
    expect(JSON.parse(clr.out).caps).toEqual({});
  });

  it('disable, enable, delete, audit', async () => {
    expect((await cli(['create', '--id', 'cli-3'])).code).toBe(0);
    const off = await cli(['disable', 'cli-3', '--reason', 'chargeback']);
    expect(off.out).toMatch(/status\s+disabled/);
    expect(off.out).toMatch(/reason\s+chargeback/);
    expect((await cli(['enable', 'cli-3'])).out).toMatch(/status\s+active/);
    expect((await cli(['delete', 'cli-3'])).out).toBe('deleted cli-3');
    const gone = await cli(['get', 'cli-3']);
    expect(gone.code).toBe(1);
    expect(gone.err).toMatch(/^NOT_FOUND: key "cli-3" not found/);
    const audit = await cli(['audit', 'cli-3']);
    expect(audit.out.split('\n')[0]).toMatch(/^AT\s+ACTOR\s+ACTION\s+TARGET\s+CHANGE/);
    expect(audit.out).toMatch(/alice\s+delete\s+cli-3/);
    expect(audit.out).toMatch(
      /alice\s+disable\s+cli-3\s+disabled: false→true, disabledReason: ∅→"chargeback"/,
    );
  });

  it('server refusals exit 1 with the status; bad command lines exit 2 with usage', async () => {
    const bad = await cli(['update', 'cli-1', '--tier', 'gold']);
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/^INVALID_ARGUMENT: tier: unknown tier "gold"/);
    const unauth = await cli(['list'], { RATEKEEPER_TOKEN: 'wrong-token-wrong-token' });
    expect(unauth.code).toBe(1);
    expect(unauth.err).toMatch(/^UNAUTHENTICATED/);
    const flagToken = await cli(['list', '--token', ADMIN_TOKEN], { RATEKEEPER_TOKEN: '' });
    expect(flagToken.code).toBe(0);
    for (const argv of [
      ['update', 'cli-1', '--monthly-tokens', '-5'],
      ['update', 'cli-1', '--monthly-spend', '1.2345678'],
      ['create', '--bogus'],
      ['frobnicate'],
      [],
      ['get'],
      ['create', '--clear', 'monthly_tokens'],
    ]) {
      const r = await cli(argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toContain('usage: ratekeeper keys');
    }
    expect((await cli(['--help'])).out).toContain('usage: ratekeeper keys');
  });

  it('an unreachable server exits 1 saying so', async () => {
    const r = await cli(['list', '--addr', '127.0.0.1:1', '--timeout', '2']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/cannot reach ratekeeper|DEADLINE_EXCEEDED/);
  });

  it('usage KEY explains when the server does not serve GetKeyUsage', async () => {
    const r = await cli(['static-1'], {}, runUsage);
    expect(r.code).toBe(1);
    expect(r.err).toContain('does not serve ReportService.GetKeyUsage');
  });
});

describe('ratekeeper keys (spawned CLI)', () => {
  it('runs through src/cli.ts with address and token from the environment', async () => {
    const { stdout } = await exec('npx', ['tsx', 'src/cli.ts', 'keys', 'get', 'static-1', '--json'], {
      env: { ...process.env, RATEKEEPER_ADDR: server.addr, RATEKEEPER_TOKEN: ADMIN_TOKEN },
    });
    expect(JSON.parse(stdout)).toMatchObject({ id: 'static-1', account: 'acme' });
  });
});

describe('USD amounts', () => {
  it('round-trips micro-dollars exactly', () => {
    expect(parseUsd('12.50', 'x')).toBe(12_500_000n);
    expect(parseUsd('$0.000001', 'x')).toBe(1n);
    expect(parseUsd('7', 'x')).toBe(7_000_000n);
    expect(usd(12_500_000n)).toBe('$12.50');
    expect(usd(1n)).toBe('$0.000001');
    expect(usd(1_234_500)).toBe('$1.2345');
    expect(usd(0)).toBe('$0.00');
    expect(() => parseUsd('-1', 'x')).toThrow(/x: expected a USD amount/);
  });
});
