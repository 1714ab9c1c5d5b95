import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { h2loadAvailable } from '../../bench/h2load.js';

const out = mkdtempSync(join(tmpdir(), 'rk-bench-test-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

/** Runs the harness from source (tsx), as `npm run bench` runs it compiled. */
const bench = (args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    const p = spawn(process.execPath, ['--import', 'tsx', 'bench/run.ts', ...args], {
      env: { ...process.env, BENCH_CONCURRENCY: '', BENCH_DURATION: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (b: Buffer) => {
      stdout += b.toString();
    });
    p.stderr.on('data', (b: Buffer) => {
      stderr += b.toString();
    });
    p.on('exit', (code) => resolve({ code, stdout, stderr }));
  });

/** Scenario (a) for a second after half a second of warm-up. */
const SHORT_A = ['--scenarios', 'a', '--duration', '1', '--warmup', '0.5'];

describe('bench harness', () => {
  it('runs a 1-second scenario against the real server and the empty ceiling, printing and writing the figures', async () => {
    const r = await bench([
      ...SHORT_A,
      '--concurrency',
      '8',
      '--no-h2load',
      '--no-paced',
      // Reaches the server and the empty ceiling: an unknown flag would stop both from starting.
      '--server-node-options=--max-semi-space-size=4 --stack-size=2000',
      '--out',
      out,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/decisions\/s\s+p50 ms\s+p99 ms\s+p99\.9 ms/);
    const row = (scenario: string) =>
      r.stdout.split('\n').find((l) => l.startsWith(`${scenario} `) && l.includes('grpc-js'));
    for (const s of ['empty', 'a']) {
      const rate = Number(row(s)?.split(/\s+/)[3]);
      expect(rate, `${s} row in:\n${r.stdout}`).toBeGreaterThan(0);
    }

    const files = readdirSync(out).filter((f) => f.endsWith('.json'));
    expect(files).toHaveLength(1);
    const json = JSON.parse(readFileSync(join(out, files[0] as string), 'utf8')) as {
      options: { serverNodeOptions: string[] };
      notes: string[];
      passes: {
        driver: string;
        mode: string;
        rate: number;
        vsEmpty?: number;
        scenario: string;
        decisions: number;
        serverCpuMsPer1k: number;
        errors: Record<string, number>;
      }[];
    };
    expect(json.options.serverNodeOptions).toEqual(['--max-semi-space-size=4', '--stack-size=2000']);
    // The empty server is measured before and after the scenarios; the ratio is to their mean.
    const empties = json.passes.filter((p) => p.scenario === 'empty' && p.mode === 'peak');
    expect(empties).toHaveLength(2);
    expect(json.notes.some((n) => n.startsWith('empty server (grpc-js) before / after the scenarios:'))).toBe(
      true,
    );
    const a = json.passes.find((p) => p.scenario === 'a');
    const mean = (empties[0]!.rate + empties[1]!.rate) / 2;
    expect(a?.vsEmpty).toBeCloseTo((a?.rate ?? 0) / mean, 6);
    expect(a?.decisions).toBeGreaterThan(0);
    expect(a?.serverCpuMsPer1k).toBeGreaterThan(0);
    expect(a?.errors).toEqual({});
  }, 90_000);

  it.skipIf(!h2loadAvailable())(
    'with h2load, also rates a scenario against the empty server on our HTTP/2 layer measured before and after',
    async () => {
      const dir = mkdtempSync(join(out, 'h2-'));
      const r = await bench([...SHORT_A, '--no-paced', '--out', dir]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/vs h2/);
      const file = readdirSync(dir).find((f) => f.endsWith('.json')) as string;
      const json = JSON.parse(readFileSync(join(dir, file), 'utf8')) as {
        passes: { scenario: string; driver: string; mode: string; rate: number; vsH2?: number }[];
      };
      const h2 = json.passes.filter((p) => p.scenario === 'empty:h2');
      expect(h2).toHaveLength(2);
      for (const p of h2) expect(p.rate).toBeGreaterThan(0);
      const a = json.passes.find((p) => p.scenario === 'a' && p.driver === 'h2load' && p.mode === 'peak');
      expect(a?.vsH2).toBeCloseTo((a?.rate ?? 0) / ((h2[0]!.rate + h2[1]!.rate) / 2), 6);
    },
    90_000,
  );

  it('refuses an unknown scenario with a message naming the flag', async () => {
    const r = await bench(['--scenarios', 'z', '--out', out]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('--scenarios: unknown scenario "z"');
  });
});
