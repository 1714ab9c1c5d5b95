import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RateLimitResponse_Code, RateLimitService } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { grpcClient } from '../harness/clients.js';

const DOMAIN =
  'domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 10 }\n';

let root: string;
let good: string;
let bad: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'rk-cli-'));
  good = join(root, 'good');
  await mkdir(good);
  await writeFile(join(good, 'd.yaml'), DOMAIN);
  bad = join(root, 'bad.yaml');
  await writeFile(
    bad,
    'domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: fortnight, requests_per_unit: 1 }\n',
  );
});
afterAll(() => rm(root, { recursive: true, force: true }));

interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exit: Promise<number | null>;
  /** Resolves with the first stdout+stderr text matching re. */
  waitFor(re: RegExp): Promise<RegExpMatchArray>;
}

const run = (script: string, args: string[], env: Record<string, string> = {}): Run => {
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], {
    env: { ...process.env, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  const waiters: { re: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
  const check = () => {
    for (const w of [...waiters]) {
      const m = (out + err).match(w.re);
      if (m) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  };
  child.stdout!.on('data', (b: Buffer) => {
    out += b;
    check();
  });
  child.stderr!.on('data', (b: Buffer) => {
    err += b;
    check();
  });
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exit,
    waitFor: (re) =>
      new Promise((resolve, reject) => {
        waiters.push({ re, resolve });
        check();
        exit.then(() => reject(new Error(`exited before ${re}:\n${out}\n${err}`)));
      }),
  };
};

const PORTS = /"grpcPort":(\d+),"httpPort":(\d+),"metricsPort":(\d+)/;

describe('ratekeeper serve (child process)', () => {
  it('with port 0 picks free ports, logs them, serves, and exits 0 on SIGTERM', async () => {
    const p = run(
      'src/cli.ts',
      ['serve', '--config', good, '--port', '0', '--metrics-port', '0', '--host', '127.0.0.1'],
      {
        RATEKEEPER_HTTP_PORT: '0',
        RATEKEEPER_CONFIG: '/nonexistent-flag-wins',
      },
    );
    const [, grpcPort, httpPort, metricsPort] = await p.waitFor(PORTS).catch(async (e) => {
      p.child.kill('SIGKILL');
      throw e;
    });
    expect(Number(grpcPort)).toBeGreaterThan(0);
    const res = await fetch(
      `http://127.0.0.1:${httpPort}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`,
      {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ domain: 'd', descriptors: [{ entries: [{ key: 'k', value: 'v' }] }] }),
      },
    );
    expect(await res.json()).toMatchObject({
      overallCode: 'OK',
      statuses: [{ code: 'OK', limitRemaining: 9 }],
    });
    expect((await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).status).toBe(200);
    p.child.kill('SIGTERM');
    expect(await p.exit).toBe(0);
    expect(p.stdout()).toContain('"msg":"stopped"');
  });

  it('SIGTERM lets an in-flight call finish, refuses new connections, then exits 0', async () => {
    const p = run('test/cli/fixtures/slow-store-serve.ts', [
      '--config',
      good,
      '--port',
      '0',
      '--http-port',
      '0',
      '--metrics-port',
      '0',
      '--host',
      '127.0.0.1',
    ]);
    const [, grpcPort] = await p.waitFor(PORTS);
    const rls = grpcClient(RateLimitService, `127.0.0.1:${grpcPort}`);
    try {
      const inFlight = rls.shouldRateLimit({
        domain: 'd',
        descriptors: [{ entries: [{ key: 'k', value: 'v' }] }],
      });
      await p.waitFor(/decision held/);
      p.child.kill('SIGTERM');
      await p.waitFor(/shutting down/);
      const late = grpcClient(RateLimitService, `127.0.0.1:${grpcPort}`);
      await expect(
        late.shouldRateLimit(
          { domain: 'd', descriptors: [{ entries: [{ key: 'k', value: 'v' }] }] },
          { deadlineMs: 3000 },
        ),
      ).rejects.toMatchObject({ code: status.UNAVAILABLE });
      late.close();
      const res = await inFlight;
      expect(res.overallCode).toBe(RateLimitResponse_Code.OK);
      expect(res.statuses[0]?.limitRemaining).toBe(9);
      expect(await p.exit).toBe(0);
    } finally {
      rls.close();
      p.child.kill('SIGKILL');
    }
  });

  it('a bad config exits 1 naming file, line and field', async () => {
    const p = run('src/cli.ts', [
      'serve',
      '--config',
      bad,
      '--port',
      '0',
      '--http-port',
      '0',
      '--metrics-port',
      '0',
    ]);
    expect(await p.exit).toBe(1);
    expect(p.stderr()).toMatch(/bad\.yaml:4: descriptors\[0\]\.rate_limit\.unit: /);
  });

  it('a bad setting exits 2 naming the flag and its env var; an unknown command exits 2 with usage', async () => {
    const p = run('src/cli.ts', ['serve', '--config', good], { RATEKEEPER_PORT: 'http' });
    const q = run('src/cli.ts', ['frobnicate']);
    expect(await p.exit).toBe(2);
    expect(p.stderr()).toContain('--port (RATEKEEPER_PORT)');
    expect(await q.exit).toBe(2);
    expect(q.stderr()).toContain('unknown command frobnicate');
    expect(q.stderr()).toContain('Usage: ratekeeper <command>');
  });
});
