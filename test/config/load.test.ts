import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/errors.js';
import { loadConfig, parseConfigFiles } from '../../src/config/load.js';

const parse = (text: string, file = 'd.yaml') => parseConfigFiles([{ file, text }]);

/** The ConfigError thrown by `fn`, for asserting on its issues. */
const configError = (fn: () => unknown): ConfigError => {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('expected a ConfigError');
};

describe('generic domain schema', () => {
  it('loads nested descriptors, wildcards, key-only defaults and every option', () => {
    const cfg = parse(`
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: SECOND, requests_per_unit: 0}
  - key: path
    value: /v1/*
    share_threshold: true
    detailed_metric: true
    value_to_metric: true
    rate_limit: {unit: Minute, requests_per_unit: 60, name: v1}
  - key: client
    descriptors:
      - key: user
        value: a
        shadow_mode: true
        rate_limit: {unit: hour, requests_per_unit: 5, replaces: [{name: v1}]}
  - key: internal
    rate_limit: {unlimited: true}
`);
    const d = cfg.domains.get('edge')!;
    expect(d.file).toBe('d.yaml');
    expect(d.root.size).toBe(5);
    expect(d.root.byKey.get('remote_address')!.limit).toEqual({
      unlimited: false,
      unit: 'second',
      requestsPerUnit: 10,
      name: '',
      replaces: [],
    });
    expect(d.root.exact.get('remote_address\u000050.0.0.5')!.limit).toMatchObject({ unit: 'second' });
    const wild = d.root.wildcards[0]!;
    expect(wild).toMatchObject({
      value: '/v1/*',
      prefix: '/v1/',
      shareThreshold: true,
      detailedMetric: true,
    });
    expect(wild.limit).toMatchObject({ unit: 'minute', name: 'v1' });
    const user = d.root.byKey.get('client')!.children.exact.get('user\u0000a')!;
    expect(user).toMatchObject({ shadowMode: true, field: 'descriptors[3].descriptors[0]' });
    expect(user.limit).toMatchObject({ replaces: ['v1'] });
    expect(d.root.byKey.get('internal')!.limit).toEqual({ unlimited: true, name: '', replaces: [] });
    expect(Object.isFrozen(d)).toBe(true);
  });

  it('accepts a domain without descriptors, and number-like values as strings', () => {
    const cfg = parse('domain: empty\n---\ndomain: ports\ndescriptors:\n  - key: port\n    value: 8080\n');
    expect(cfg.domains.get('empty')!.root.size).toBe(0);
    expect(cfg.domains.get('ports')!.root.exact.has('port\u00008080')).toBe(true);
  });

  it('names file, line and field for a bad unit', () => {
    const e = configError(() =>
      parse(
        'domain: api\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 1\n',
        'config/domains/api.yaml',
      ),
    );
    expect(e.message).toBe(
      'config/domains/api.yaml:5: descriptors[0].rate_limit.unit: expected one of second, minute, hour, day',
    );
    expect(e.issues[0]).toEqual({
      file: 'config/domains/api.yaml',
      line: 5,
      field: 'descriptors[0].rate_limit.unit',
      message: 'expected one of second, minute, hour, day',
    });
  });

  it.each([
    [
      'unknown field',
      'domain: a\ndescriptors:\n  - key: k\n    ratelimit: {unit: second}\n',
      4,
      'descriptors[0].ratelimit',
      'unknown field',
    ],
    [
      'unit with unlimited',
      'domain: a\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: true\n      unit: second\n',
      6,
      'descriptors[0].rate_limit.unit',
      'must not be set when unlimited is true',
    ],
    [
      'missing requests_per_unit',
      'domain: a\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n',
      4,
      'descriptors[0].rate_limit.requests_per_unit',
      'required',
    ],
    [
      'missing unit',
      'domain: a\ndescriptors:\n  - key: k\n    rate_limit:\n      requests_per_unit: 4\n',
      4,
      'descriptors[0].rate_limit.unit',
      'required (one of second, minute, hour, day)',
    ],
    [
      'negative requests_per_unit',
      'domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: -1}\n',
      4,
      'descriptors[0].rate_limit.requests_per_unit',
      'must be >= 0',
    ],
    [
      'fractional requests_per_unit',
      'domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1.5}\n',
      4,
      'descriptors[0].rate_limit.requests_per_unit',
      'expected an integer',
    ],
    ['empty key', 'domain: a\ndescriptors:\n  - key: ""\n', 3, 'descriptors[0].key', 'must not be empty'],
    ['missing key', 'domain: a\ndescriptors:\n  - value: v\n', 3, 'descriptors[0].key', 'required'],
    ['empty domain', 'domain: ""\ndescriptors: []\n', 1, 'domain', 'must not be empty'],
    [
      'empty replaces name',
      'domain: a\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      replaces:\n        - name: ""\n',
      8,
      'descriptors[0].rate_limit.replaces[0].name',
      'must not be empty',
    ],
    [
      'replaces its own name',
      'domain: a\ndescriptors:\n  - key: k\n    rate_limit:\n      name: n\n      unit: second\n      requests_per_unit: 1\n      replaces: [{name: n}]\n',
      8,
      'descriptors[0].rate_limit.replaces[0].name',
      'must not name its own rate limit',
    ],
    [
      'shadow_mode not a boolean',
      'domain: a\ndescriptors:\n  - key: k\n    shadow_mode: sometimes\n',
      4,
      'descriptors[0].shadow_mode',
      'expected true or false',
    ],
    [
      'descriptors not a list',
      'domain: a\ndescriptors:\n  key: k\n',
      2,
      'descriptors',
      'expected a list of descriptors',
    ],
    [
      'share_threshold without wildcard',
      'domain: a\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n',
      5,
      'descriptors[0].share_threshold',
      "only allowed on a wildcard value (ending in '*')",
    ],
  ])('rejects %s', (_name, text, line, field, message) => {
    const e = configError(() => parse(text));
    expect(e.issues[0]).toEqual({ file: 'd.yaml', line, field, message });
  });

  it('rejects a duplicate key/value at one level, naming the second', () => {
    const e = configError(() =>
      parse(`domain: a
descriptors:
  - key: k
    value: v
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: k
    descriptors:
      - key: x
      - key: x
  - key: k
    value: v
`),
    );
    expect(e.issues).toEqual([
      {
        file: 'd.yaml',
        line: 9,
        field: 'descriptors[1].descriptors[1]',
        message: "duplicate descriptor: key 'x' is already configured at this level",
      },
      {
        file: 'd.yaml',
        line: 10,
        field: 'descriptors[2]',
        message: "duplicate descriptor: key 'k' with value 'v' is already configured at this level",
      },
    ]);
  });

  it('allows the same key/value at different levels', () => {
    const cfg = parse(
      'domain: a\ndescriptors:\n  - key: k\n    descriptors:\n      - key: k\n        rate_limit: {unit: day, requests_per_unit: 1}\n',
    );
    expect(cfg.domains.get('a')!.root.byKey.get('k')!.children.byKey.has('k')).toBe(true);
  });

  it('reports YAML syntax errors with their line, and duplicate YAML keys', () => {
    const e = configError(() => parse('domain: a\ndescriptors:\n  - key: [\n'));
    expect(e.issues[0]!.file).toBe('d.yaml');
    expect(e.issues[0]!.line).toBeGreaterThanOrEqual(3);
    const dup = configError(() => parse('domain: a\ndomain: b\n'));
    expect(dup.issues[0]).toMatchObject({ file: 'd.yaml', line: 2 });
  });

  it('rejects documents that are neither a domain nor the inference policy', () => {
    expect(configError(() => parse('foo: 1\n')).issues[0]).toMatchObject({ line: 1 });
    expect(configError(() => parse('- 1\n- 2\n')).issues[0]!.message).toMatch(/expected a mapping/);
    expect(configError(() => parse('kind: other\n')).issues[0]).toMatchObject({
      field: 'kind',
      message: "unknown kind 'other' (expected inference-policy)",
    });
  });

  it('rejects a duplicate domain across files, naming both places', () => {
    const e = configError(() =>
      parseConfigFiles([
        { file: 'a.yaml', text: 'domain: edge\n' },
        { file: 'b.yaml', text: '# second\ndomain: edge\n' },
      ]),
    );
    expect(e.message).toBe("b.yaml:2: domain: duplicate domain 'edge' (already configured at a.yaml:1)");
  });

  it('collects issues from every file', () => {
    const e = configError(() =>
      parseConfigFiles([
        {
          file: 'a.yaml',
          text: 'domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: week, requests_per_unit: 1}\n',
        },
        { file: 'b.yaml', text: 'domain: b\nextra: 1\n' },
      ]),
    );
    expect(e.issues.map((i) => `${i.file}:${i.line}`)).toEqual(['a.yaml:4', 'b.yaml:2']);
    expect(e.message.split('\n')).toHaveLength(2);
  });

  it('skips empty files and empty documents', () => {
    const cfg = parseConfigFiles([
      { file: 'empty.yaml', text: '' },
      { file: 'comments.yaml', text: '# nothing\n' },
      { file: 'x.yaml', text: '---\n---\ndomain: x\n' },
    ]);
    expect([...cfg.domains.keys()]).toEqual(['x']);
  });
});

describe('inference policy documents', () => {
  it('go to the inference parser; its errors keep file, line and field', () => {
    const cfg = parse('kind: inference-policy\npepper: test-pepper\n');
    expect(cfg.inference?.domain).toBe('inference');
    const e = configError(() =>
      parse('kind: inference-policy\npepper: p\ntimezone: Mars/Base\n', 'policy.yaml'),
    );
    expect(e.issues[0]).toMatchObject({ file: 'policy.yaml', line: 3, field: 'timezone' });
  });

  it('a generic domain may not take the inference domain, nor may two policies exist', () => {
    const e = configError(() =>
      parseConfigFiles([
        { file: 'p.yaml', text: 'kind: inference-policy\npepper: p\n' },
        { file: 'g.yaml', text: 'domain: inference\n' },
      ]),
    );
    expect(e.issues[0]).toMatchObject({ file: 'g.yaml', line: 1, field: 'domain' });
    const two = configError(() =>
      parseConfigFiles([
        { file: 'p.yaml', text: 'kind: inference-policy\npepper: p\n' },
        { file: 'q.yaml', text: 'kind: inference-policy\npepper: p\n' },
      ]),
    );
    expect(two.issues[0]!.message).toMatch(/a second inference policy \(the first is at p\.yaml:1\)/);
  });
});

describe('loadConfig', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rk-config-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('loads every *.yaml / *.yml below a directory, sorted, skipping dot entries and other files', async () => {
    await mkdir(join(dir, 'sub'));
    await mkdir(join(dir, '..data'));
    await writeFile(join(dir, 'b.yml'), 'domain: b\n');
    await writeFile(join(dir, 'a.yaml'), 'domain: a\n');
    await writeFile(join(dir, 'sub', 'c.yaml'), 'domain: c\n');
    await writeFile(join(dir, 'notes.txt'), 'not: yaml config\n');
    await writeFile(join(dir, '.hidden.yaml'), 'domain: hidden\n');
    await writeFile(join(dir, '..data', 'd.yaml'), 'domain: a\n');
    const cfg = await loadConfig(dir);
    expect([...cfg.domains.keys()]).toEqual(['a', 'b', 'c']);
    expect(cfg.domains.get('c')!.file).toBe(join(dir, 'sub', 'c.yaml'));
  });

  it('loads a single file whatever its name, and follows symlinks like a ConfigMap volume', async () => {
    await mkdir(join(dir, '..2026_01_01'));
    await writeFile(join(dir, '..2026_01_01', 'edge.yaml'), 'domain: edge\n');
    await symlink('..2026_01_01', join(dir, '..data'));
    await symlink(join('..data', 'edge.yaml'), join(dir, 'edge.yaml'));
    expect([...(await loadConfig(dir)).domains.keys()]).toEqual(['edge']);
    await writeFile(join(dir, '..2026_01_01', 'rules.conf'), 'domain: single\n');
    expect([...(await loadConfig(join(dir, '..2026_01_01', 'rules.conf'))).domains.keys()]).toEqual([
      'single',
    ]);
  });

  it('reports a missing path, and errors with the path as found', async () => {
    await expect(loadConfig(join(dir, 'nope'))).rejects.toThrow(/nope: cannot read/);
    await writeFile(join(dir, 'x.yaml'), 'domain: x\ndescriptors:\n  - key: k\n    rate_limit: {unit: x}\n');
    await expect(loadConfig(dir)).rejects.toThrow(`${join(dir, 'x.yaml')}:4: descriptors[0].rate_limit.unit`);
  });

  it('loads the shipped config directory: the example domain and the inference policy', async () => {
    const cfg = await loadConfig('config');
    expect(cfg.domains.get('edge')?.root.size).toBeGreaterThan(0);
    expect(cfg.inference?.domain).toBe('inference');
  });
});
