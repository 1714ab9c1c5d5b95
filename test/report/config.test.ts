import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/errors.js';
import { parseConfigFiles } from '../../src/config/load.js';
import { defaultSignalSettings } from '../../src/policy/signals.js';
import { signalsSchema } from '../../src/report/config.js';

const M = 60_000;
const policy = (signals: string) => [
  { file: 'policy.yaml', text: `kind: inference-policy\npepper: p\n${signals}` },
];

describe('signals: section of the policy file', () => {
  it('defaults every field', () => {
    expect(signalsSchema.parse({})).toEqual(defaultSignalSettings);
    expect(parseConfigFiles(policy('')).inference?.signals).toEqual(defaultSignalSettings);
  });

  it('reads thresholds, windows (durations or seconds) and alert shares', () => {
    const cfg = parseConfigFiles(
      policy(`signals:
  bucket: 30s
  request_rate: { share: 0.95, window: 15m }
  token_rate: { window: 600 }
  runaway: { count: 5, held_longer_than: 15m }
  retry_storm: { count: 100, window: 1m }
  limit_splitting: { share: 0.7, keys: 4, window: 1h }
  alert_shares: [1.0, 0.5, 0.8, 0.8]
`),
    ).inference!.signals;
    expect(cfg).toEqual({
      bucketMs: 30_000,
      requestRate: { share: 0.95, windowMs: 15 * M },
      tokenRate: { share: 0.9, windowMs: 10 * M },
      runaway: { count: 5, windowMs: 60 * M, heldLongerThanMs: 15 * M },
      retryStorm: { count: 100, windowMs: M },
      limitSplitting: { share: 0.7, keys: 4, windowMs: 60 * M },
      alertShares: [0.5, 0.8, 1],
    });
  });

  it.each([
    ['request_rate: { share: 1.5 }', 'signals.request_rate.share', 7],
    ['runaway: { count: 0 }', 'signals.runaway.count', 7],
    ['runaway: { held_longer_than: 0s }', 'signals.runaway.held_longer_than', 7],
    ['retry_storm: { window: soon }', 'signals.retry_storm.window', 7],
    ['limit_splitting: { keys: 1 }', 'signals.limit_splitting.keys', 7],
    ['alert_shares: []', 'signals.alert_shares', 7],
    ['bucket: 500ms', 'signals.bucket', 7],
    ['request_rte: { share: 0.5 }', 'signals.request_rte', 7],
  ])('names file, line and field of a bad value: %s', (yaml, field, line) => {
    let err: unknown;
    try {
      parseConfigFiles(policy(`\n\n\nsignals:\n  ${yaml}\n`));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const msg = (err as Error).message;
    expect(msg).toContain('policy.yaml');
    expect(msg).toContain(field);
    expect(msg).toMatch(new RegExp(`policy\\.yaml:${line}\\b`));
  });
});
