/**
 * The whole server (startServer: config files, store, registry, report, both transports) with
 * credentials for Admin/Report and for RLS/Usage: the CLI spawned against it, AdminService over
 * Connect JSON (curl-style), and the RLS credential.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RateLimitResponse_Code, RateLimitService } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { run } from '../../src/cli/keys.js';
import { serviceAuthFromEnv } from '../../src/transport/auth.js';
import { type GrpcError, grpcClient } from '../harness/clients.js';
import { startTestServer, type TestServer } from '../harness/server.js';
import { ADMIN_TOKEN, POLICY } from './admin-server.js';

const exec = promisify(execFile);
const RLS_TOKEN = 'envoy-token-0123456789';

let srv: TestServer;

beforeAll(async () => {
  srv = await startTestServer({
    files: { 'policy.yaml': POLICY },
    auth: serviceAuthFromEnv({
      RATEKEEPER_ADMIN_TOKENS: `alice:${ADMIN_TOKEN}`,
      RATEKEEPER_RLS_TOKENS: `envoy:${RLS_TOKEN}`,
    }),
  });
});
afterAll(() => srv?.stop());

const ratekeeper = (args: string[], token = ADMIN_TOKEN) =>
  exec('npx', ['tsx', 'src/cli.ts', ...args], {
    env: { ...process.env, RATEKEEPER_ADDR: srv.grpcAddress, RATEKEEPER_TOKEN: token },
  });

describe('the full server', () => {
  it('serves the CLI: keys create and list in-process, then `ratekeeper usage` spawned', async () => {
    const out: string[] = [];
    const io = {
      out: (t: string) => out.push(t),
      err: (t: string) => out.push(t),
      env: { RATEKEEPER_ADDR: srv.grpcAddress, RATEKEEPER_TOKEN: ADMIN_TOKEN },
    };
    expect(await run(['create', '--account', 'acme', '--monthly-spend', '5', '--json'], io)).toBe(0);
    const created = JSON.parse(out.pop()!);
    expect(created.rawKey).toMatch(/^rk_/);
    expect(await run(['list'], io)).toBe(0);
    expect(out.pop()).toContain(created.key.id);
    const usage = await ratekeeper(['usage', created.key.id]);
    expect(usage.stdout).toMatch(/account\s+acme/);
    expect(usage.stdout).toMatch(/month spend\s+\$0\.00/);
  });

  it('answers AdminService over Connect JSON with the bearer token, 401 without', async () => {
    const call = (token?: string) =>
      fetch(`${srv.httpUrl}/ratekeeper.v1.AdminService/GetKey`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          ...(token ? { authorization: `Bearer ${token}` } : {}),
        },
        body: JSON.stringify({ id: 'static-1' }),
      });
    const ok = await call(ADMIN_TOKEN);
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ id: 'static-1', account: 'acme', sources: { tier: 'policy' } });
    const refused = await call();
    expect(refused.status).toBe(401);
    expect(await refused.json()).toMatchObject({ code: 'unauthenticated' });
    expect((await call('nope-nope-nope-nope')).status).toBe(401);
  });

  it('guards RLS with its own credential when one is configured', async () => {
    const rls = grpcClient(RateLimitService, srv.grpcAddress);
    const req = { domain: 'inference', descriptors: [{ entries: [{ key: 'key', value: 'static-1' }] }] };
    const err = await rls.shouldRateLimit(req).then(
      () => undefined,
      (e: GrpcError) => e,
    );
    expect(err?.code).toBe(status.UNAUTHENTICATED);
    const adminTokenOnRls = await rls
      .shouldRateLimit(req, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
      .then(
        () => undefined,
        (e: GrpcError) => e,
      );
    expect(adminTokenOnRls?.code).toBe(status.UNAUTHENTICATED);
    const res = await rls.shouldRateLimit(req, { headers: { authorization: `Bearer ${RLS_TOKEN}` } });
    expect(res.overallCode).toBe(RateLimitResponse_Code.OK);
    rls.close();
  });
});
