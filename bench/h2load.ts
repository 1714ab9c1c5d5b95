import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cpuMs } from './proc.js';
import { type LatencySummary, summarize } from './stats.js';

/** Paced connections at up to this many requests/s each are started staggered (see rpsPerConnection). */
export const STAGGER_MAX_RPS = 100;

export const h2loadAvailable = (): boolean => spawnSync('h2load', ['--version']).status === 0;

export interface H2Spec {
  url: string;
  body: Uint8Array;
  headers: string[];
  connections: number;
  /** Streams in flight per connection. */
  streams: number;
  warmupS: number;
  durationS: number;
  /**
   * Paced: requests/s per connection (h2load --rps). h2load sends a connection's requests on a timer of
   * at least 10 ms, all of a tick at once; at most 100/s per connection is one request per tick, and
   * connections started 1 ms apart (h2load -r 1 --rate-period 1ms) spread the ticks, so arrivals come
   * about evenly, as from many independent proxies, instead of in bursts.
   */
  rpsPerConnection?: number;
  dir: string;
  /** Called when the measured window opens and closes (by the clock: h2load does not say). */
  onWindow?: (phase: 'measuring' | 'measured') => void;
}

export interface H2Result {
  decisions: number;
  failed: number;
  rate: number;
  latency: LatencySummary;
  clientCpuMs: number;
  clientCpuShare: number;
  elapsedS: number;
}

/** One request of h2load's --log-file: start (µs since the epoch), HTTP status, duration (µs). */
export type H2LogRow = [startUs: number, status: number, durationUs: number];

/**
 * h2load's per-request log; with a window, only the requests started in the measured part of it
 * (after warmupS from the first start, for durationS).
 */
export const parseH2Log = (text: string, window?: { warmupS: number; durationS: number }): H2LogRow[] => {
  const rows = text
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => l.split('\t').map(Number) as H2LogRow);
  if (!window) return rows;
  let first = Number.POSITIVE_INFINITY;
  for (const r of rows) first = Math.min(first, r[0]);
  const from = first + window.warmupS * 1e6;
  return rows.filter((r) => r[0] >= from && r[0] < from + window.durationS * 1e6);
};

/** h2load (nghttp2, C) posting one fixed body over HTTP/2 prior knowledge; latencies from its per-request log. */
export const runH2load = async (spec: H2Spec): Promise<H2Result> => {
  const bodyFile = join(spec.dir, 'h2load.body');
  const logFile = join(spec.dir, 'h2load.log');
  writeFileSync(bodyFile, spec.body);
  writeFileSync(logFile, '');
  const rps = spec.rpsPerConnection;
  // Staggered starts (-r) exclude -D: a request count instead, the warm-up cut from the log by time.
  const staggered = rps !== undefined && rps <= STAGGER_MAX_RPS;
  const args = [
    '-c',
    String(spec.connections),
    '-m',
    String(spec.streams),
    '-t',
    '1',
    '-d',
    bodyFile,
    ...(staggered
      ? [
          '-r',
          '1',
          '--rate-period=1ms',
          '-n',
          String(spec.connections * rps * (spec.warmupS + spec.durationS)),
        ]
      : // In ms: h2load reads a bare number as whole seconds and refuses "0.5".
        [
          '-D',
          `${Math.round(spec.durationS * 1000)}ms`,
          '--warm-up-time',
          `${Math.round(spec.warmupS * 1000)}ms`,
        ]),
    `--log-file=${logFile}`,
    ...spec.headers.flatMap((h) => ['-H', h]),
    ...(rps !== undefined ? [`--rps=${rps}`] : []),
    spec.url,
  ];
  const p = spawn('h2load', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (b: Buffer) => {
    out += b.toString();
  });
  p.stderr.on('data', (b: Buffer) => {
    out += b.toString();
  });
  let cpuStart = 0;
  let cpuEnd = 0;
  const pid = p.pid ?? 0;
  // h2load connects first, then warms up; the window is timed from the spawn.
  const t1 = setTimeout(
    () => {
      cpuStart = cpuMs(pid);
      spec.onWindow?.('measuring');
    },
    spec.warmupS * 1000 + 50,
  );
  const t2 = setTimeout(
    () => {
      cpuEnd = cpuMs(pid);
      spec.onWindow?.('measured');
    },
    (spec.warmupS + spec.durationS) * 1000,
  );
  const code = await new Promise<number | null>((r) => p.on('exit', r));
  clearTimeout(t1);
  clearTimeout(t2);
  if (cpuEnd === 0) cpuEnd = cpuStart;
  const done =
    /requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(out);
  const finished = /finished in ([\d.]+)(m?s), ([\d.]+) req\/s/.exec(out);
  if (code !== 0 || !done || !finished) throw new Error(`h2load failed (exit ${code}):\n${out.slice(-2000)}`);
  const elapsedS = Number(finished[1]) / (finished[2] === 'ms' ? 1000 : 1);
  const rows = parseH2Log(readFileSync(logFile, 'utf8'), staggered ? spec : undefined);
  const sorted = Float64Array.from(rows, (r) => r[2]).sort();
  const clientCpuMs = cpuEnd - cpuStart;
  return {
    decisions: staggered ? rows.filter((r) => r[1] === 200).length : Number(done[2]),
    failed: Number(done[3]) + Number(done[4]),
    rate: staggered ? rows.length / spec.durationS : Number(finished[3]),
    latency: summarize(sorted),
    clientCpuMs,
    clientCpuShare: clientCpuMs / (spec.durationS * 1000),
    elapsedS,
  };
};
