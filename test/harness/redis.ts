/**
 * Throwaway redis-server processes for tests: free ports, temp dirs, no persistence. Never touches the
 * machine's Redis on 6379.
 */
import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface RedisProcess {
  port: number;
  url: string;
  /** Kills the server (SIGKILL when hard) and removes its directory. */
  stop(hard?: boolean): Promise<void>;
  /** SIGSTOP / SIGCONT: a hung server that keeps its connections open. */
  pause(): void;
  resume(): void;
}

export interface RedisClusterProcess {
  /** host:port of every master. */
  nodes: string[];
  stop(): Promise<void>;
}

export const hasRedisServer = (): boolean => spawnSync('redis-server', ['--version']).status === 0;

const isFree = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });

/** A free port whose cluster bus port (port + 10000) is free too; never 6379. */
export async function freePort(): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 20_000 + Math.floor(Math.random() * 35_000);
    if (port === 6379) continue;
    if ((await isFree(port)) && (await isFree(port + 10_000))) return port;
  }
  throw new Error('no free port for redis-server');
}

/** Starts redis-server; give `port` to restart one on the same address. */
export async function startRedis(options: { port?: number; args?: string[] } = {}): Promise<RedisProcess> {
  const port = options.port ?? (await freePort());
  if (port === 6379) throw new Error('tests never use the shared Redis on 6379');
  const dir = mkdtempSync(join(tmpdir(), 'rk-redis-'));
  const args = [
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
    '--daemonize',
    'no',
    '--logfile',
    '',
    ...(options.args ?? []),
  ];
  return launch(args, port, dir, 'Ready to accept connections');
}

/** Starts a Sentinel watching the master on masterPort as `name` (quorum 1). */
export async function startRedisSentinel(masterPort: number, name = 'mymaster'): Promise<RedisProcess> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'rk-sentinel-'));
  const conf = join(dir, 'sentinel.conf');
  writeFileSync(
    conf,
    [
      `port ${port}`,
      'bind 127.0.0.1',
      `dir ${dir}`,
      `sentinel monitor ${name} 127.0.0.1 ${masterPort} 1`,
      `sentinel down-after-milliseconds ${name} 1000`,
      '',
    ].join('\n'),
  );
  return launch([conf, '--sentinel'], port, dir, '+monitor master');
}

async function launch(args: string[], port: number, dir: string, readyText: string): Promise<RedisProcess> {
  const proc = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  // A crashed or timed-out test run must not leave servers behind.
  const onExit = (): void => {
    proc.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', onExit);
  proc.once('exit', () => process.off('exit', onExit));
  await waitReady(proc, port, readyText);
  let stopped = false;
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    pause: () => proc.kill('SIGSTOP'),
    resume: () => proc.kill('SIGCONT'),
    async stop(hard = false) {
      if (stopped) return;
      stopped = true;
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((resolve) => proc.once('exit', resolve));
        proc.kill('SIGCONT');
        proc.kill(hard ? 'SIGKILL' : 'SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function waitReady(proc: ChildProcess, port: number, readyText: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(
      () => fail(new Error(`redis-server on ${port} not ready in 10 s:\n${out}`)),
      10_000,
    );
    const fail = (err: Error): void => {
      clearTimeout(timer);
      proc.kill('SIGKILL');
      reject(err);
    };
    const onData = (chunk: Buffer): void => {
      out += chunk.toString();
      if (out.includes(readyText)) {
        clearTimeout(timer);
        proc.stdout?.off('data', onData);
        proc.stdout?.resume();
        proc.stderr?.resume();
        resolve();
      }
    };
    proc.stdout?.on('data', onData);
    proc.stderr?.on('data', (c: Buffer) => {
      out += c.toString();
    });
    proc.once('error', fail);
    proc.once('exit', (code) => fail(new Error(`redis-server on ${port} exited (${code}):\n${out}`)));
  });
}

/** A cluster of `masters` masters and no replicas, all slots assigned, cluster_state:ok. */
export async function startRedisCluster(masters = 3): Promise<RedisClusterProcess> {
  const procs = await Promise.all(
    Array.from({ length: masters }, () =>
      startRedis({
        args: [
          '--cluster-enabled',
          'yes',
          '--cluster-config-file',
          'nodes.conf',
          '--cluster-node-timeout',
          '2000',
        ],
      }),
    ),
  );
  const nodes = procs.map((p) => `127.0.0.1:${p.port}`);
  const stop = async (): Promise<void> => {
    await Promise.all(procs.map((p) => p.stop()));
  };
  try {
    await run('redis-cli', ['--cluster', 'create', ...nodes, '--cluster-replicas', '0', '--cluster-yes']);
    const deadline = Date.now() + 15_000;
    for (const p of procs) {
      for (;;) {
        const { stdout } = await run('redis-cli', ['-p', String(p.port), 'cluster', 'info']);
        if (stdout.includes('cluster_state:ok')) break;
        if (Date.now() > deadline) throw new Error(`redis cluster not ok:\n${stdout}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { nodes, stop };
}
