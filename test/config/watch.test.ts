import { mkdir, mkdtemp, rename, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/errors.js';
import { readConfigFiles } from '../../src/config/load.js';
import { watchConfig } from '../../src/config/watch.js';
import type { RuntimeConfig } from '../../src/services/deps.js';

const domain = (name: string, perMinute: number) =>
  `domain: ${name}\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: ${perMinute}}\n`;

const limitOf = (cfg: RuntimeConfig, name: string) => {
  const l = cfg.domains.get(name)?.root.byKey.get('k')?.limit;
  return l && !l.unlimited ? l.requestsPerUnit : undefined;
};

/** Collects callbacks and lets a test await the next one (events arrive from fs watchers). */
class Events {
  changes: RuntimeConfig[] = [];
  errors: Error[] = [];
  private waiters: (() => void)[] = [];
  onChange = (c: RuntimeConfig) => {
    this.changes.push(c);
    this.wake();
  };
  onError = (e: Error) => {
    this.errors.push(e);
    this.wake();
  };
  private wake() {
    for (const w of this.waiters.splice(0)) w();
  }
  /** Resolves once `pred` holds, re-checked after every callback; fails after 5 s. */
  until(pred: () => boolean): Promise<void> {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('timed out waiting for a config event')), 5_000);
      const check = () => {
        if (pred()) {
          clearTimeout(t);
          resolve();
        } else this.waiters.push(check);
      };
      this.waiters.push(check);
    });
  }
}

describe('watchConfig', () => {
  let dir: string;
  let stop: (() => void) | undefined;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rk-watch-'));
  });
  afterEach(async () => {
    stop?.();
    stop = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  // The first check records the files as they are; give it a moment before changing them.
  const settle = () => new Promise((r) => setTimeout(r, 100));

  it('reloads a directory on change; a bad reload reports the error and a fix reloads again', async () => {
    await writeFile(join(dir, 'a.yaml'), domain('a', 10));
    const ev = new Events();
    stop = watchConfig(dir, ev.onChange, ev.onError, { debounceMs: 20, pollMs: 0 });
    await settle();

    await writeFile(join(dir, 'a.yaml'), domain('a', 20));
    await ev.until(() => ev.changes.length === 1);
    expect(limitOf(ev.changes[0]!, 'a')).toBe(20);

    await writeFile(
      join(dir, 'a.yaml'),
      'domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: eon}\n',
    );
    await ev.until(() => ev.errors.length === 1);
    expect(ev.errors[0]).toBeInstanceOf(ConfigError);
    expect(ev.errors[0]!.message).toMatch(/a\.yaml:4: descriptors\[0\]\.rate_limit\.unit/);
    expect(ev.changes).toHaveLength(1);

    await mkdir(join(dir, 'more'));
    await writeFile(join(dir, 'more', 'b.yaml'), domain('b', 5));
    await writeFile(join(dir, 'a.yaml'), domain('a', 30));
    await ev.until(() => ev.changes.length === 2 && limitOf(ev.changes[1]!, 'b') === 5);
    expect(limitOf(ev.changes[1]!, 'a')).toBe(30);
  });

  it('reports a change made between the caller loading the files and the watch starting', async () => {
    await writeFile(join(dir, 'a.yaml'), domain('a', 10));
    const loaded = await readConfigFiles(dir);
    await writeFile(join(dir, 'a.yaml'), domain('a', 30));
    const ev = new Events();
    stop = watchConfig(dir, ev.onChange, ev.onError, { debounceMs: 20, pollMs: 0, baseline: loaded });
    await ev.until(() => ev.changes.length === 1);
    expect(limitOf(ev.changes[0]!, 'a')).toBe(30);
  });

  it('sees an editor replacing the file (write elsewhere, rename over)', async () => {
    const file = join(dir, 'rules.yaml');
    await writeFile(file, domain('r', 1));
    const ev = new Events();
    stop = watchConfig(file, ev.onChange, ev.onError, { debounceMs: 20, pollMs: 0 });
    await settle();
    await writeFile(join(dir, '.rules.yaml.swp'), domain('r', 2));
    await rename(join(dir, '.rules.yaml.swp'), file);
    await ev.until(() => ev.changes.length === 1);
    expect(limitOf(ev.changes[0]!, 'r')).toBe(2);
    // Unrelated files in the same directory do not reload.
    await writeFile(join(dir, 'other.txt'), 'x');
    await settle();
    expect(ev.changes).toHaveLength(1);
  });

  it('sees a Kubernetes ConfigMap symlink swap', async () => {
    await mkdir(join(dir, '..v1'));
    await writeFile(join(dir, '..v1', 'edge.yaml'), domain('edge', 1));
    await symlink('..v1', join(dir, '..data'));
    await symlink(join('..data', 'edge.yaml'), join(dir, 'edge.yaml'));
    const ev = new Events();
    stop = watchConfig(dir, ev.onChange, ev.onError, { debounceMs: 20, pollMs: 0 });
    await settle();

    // What the kubelet does: write a new timestamped dir, point a temp link at it, rename over ..data.
    await mkdir(join(dir, '..v2'));
    await writeFile(join(dir, '..v2', 'edge.yaml'), domain('edge', 2));
    await symlink('..v2', join(dir, '..data_tmp'));
    await rename(join(dir, '..data_tmp'), join(dir, '..data'));
    await rm(join(dir, '..v1'), { recursive: true });
    await ev.until(() => ev.changes.length >= 1 && limitOf(ev.changes.at(-1)!, 'edge') === 2);
    expect(ev.errors).toEqual([]);
  });

  it('falls back to polling, and reports a vanished file once', async () => {
    const file = join(dir, 'p.yaml');
    await writeFile(file, domain('p', 1));
    const ev = new Events();
    stop = watchConfig(file, ev.onChange, ev.onError, { debounceMs: 10, pollMs: 30 });
    await settle();
    await unlink(file);
    await ev.until(() => ev.errors.length === 1);
    expect(ev.errors[0]!.message).toMatch(/p\.yaml: cannot read/);
    await settle();
    expect(ev.errors).toHaveLength(1);
    await writeFile(file, domain('p', 7));
    await ev.until(() => ev.changes.length === 1);
    expect(limitOf(ev.changes[0]!, 'p')).toBe(7);
  });

  it('calls nothing after stop', async () => {
    await writeFile(join(dir, 'a.yaml'), domain('a', 1));
    const ev = new Events();
    const s = watchConfig(dir, ev.onChange, ev.onError, { debounceMs: 10, pollMs: 20 });
    await settle();
    s();
    await writeFile(join(dir, 'a.yaml'), domain('a', 2));
    await settle();
    expect(ev.changes).toEqual([]);
    expect(ev.errors).toEqual([]);
  });
});
