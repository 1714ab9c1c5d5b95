/**
 * Real Redis processes for the key-registry tests, on free ports in a temp dir: one standalone
 * server and a three-master cluster. Stopped (and their files removed) by `stop()`.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });

const waitPing = async (port: number): Promise<void> => {
  for (let i = 0; i < 100; i++) {
    try {
      const { stdout } = await run('redis-cli', ['-p', String(port), 'ping']);
      if (stdout.trim() === 'PONG') return;
    } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`redis on ${port} did not start`);
};

export interface RedisFixture {
  url: string;
  clusterNodes: { host: string; port: number }[];
  stop(): Promise<void>;
}

export async function startRedis(opts: { cluster?: boolean } = {}): Promise<RedisFixture> {
  const dir = mkdtempSync(join(tmpdir(), 'rk-keys-redis-'));
  const procs: ChildProcess[] = [];
  const start = async (port: number, extra: string[]): Promise<void> => {
    const p = spawn(
      'redis-server',
      [
        '--port',
        String(port),
        '--bind',
        '127.0.0.1',
        '--save',
        '',
        '--appendonly',
        'no',
        '--dir',
        dir,
        ...extra,
      ],
      { stdio: 'ignore' },
    );
    procs.push(p);
    await waitPing(port);
  };
  const port = await freePort();
  await start(port, []);
  const clusterNodes: { host: string; port: number }[] = [];
  if (opts.cluster) {
    const ports = [await freePort(), await freePort(), await freePort()];
    for (const p of ports) {
      await start(p, ['--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${p}.conf`]);
      clusterNodes.push({ host: '127.0.0.1', port: p });
    }
    await run('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-yes']);
    for (let i = 0; i < 100; i++) {
      const { stdout } = await run('redis-cli', ['-p', String(ports[0]), 'cluster', 'info']);
      if (stdout.includes('cluster_state:ok')) break;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    clusterNodes,
    async stop() {
      await Promise.all(
        procs.map(
          (p) =>
            new Promise<void>((resolve) => {
              if (p.exitCode !== null) return resolve();
              p.once('exit', () => resolve());
              p.kill('SIGTERM');
            }),
        ),
      );
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
