/**
 * deploy/README.md's walk, for real: the headers it shows go through the Envoy (and Istio) config's
 * descriptor actions to a server started with the policy ConfigMap, over gRPC, and the decisions,
 * local replies and stream-done debit must be the ones the README prints.
 */
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { service as healthService } from 'grpc-health-check';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RateLimitResponse_Code } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { settingsFrom } from '../../src/settings.js';
import { type RedisProcess, startRedis } from '../harness/redis.js';
import { startTestServer, type TestServer } from '../harness/server.js';
import {
  at,
  buildDescriptors,
  type Descriptor,
  envoyParts,
  get,
  type Headers,
  istioParts,
  list,
  luaSource,
  runLuaOnRequest,
  yamlDocs,
} from './envoy-model.js';
import { EnvoyWalk, headerMap, type Reply } from './walk.js';

/** The blocks deploy/README.md marks with `<!-- walk: NAME -->`. */
const readmeBlocks = (): Record<string, string> => {
  const text = readFileSync(at('deploy', 'README.md'), 'utf8');
  const out: Record<string, string> = {};
  for (const m of text.matchAll(/<!-- walk: (\S+) -->\s*```\w*\n([\s\S]*?)```/g)) out[m[1]!] = m[2]!;
  return out;
};

interface ShownReply {
  status: number;
  headers: Headers;
  body?: unknown;
}

const parseHttp = (block: string): ShownReply => {
  const [head, body] = block.split(/\n\n/, 2) as [string, string | undefined];
  const [statusLine, ...lines] = head.trim().split('\n');
  const status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(statusLine!)![1]);
  const headers: Headers = {};
  for (const l of lines) {
    const i = l.indexOf(':');
    headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { status, headers, ...(body?.trim() ? { body: JSON.parse(body) } : {}) };
};

/** Values that depend on the clock: shown as examples, checked for shape. */
const RESET_HEADERS = new Set(['x-ratelimit-reset']);
const SECONDS_HEADERS = new Set(['retry-after']);

/** The actual reply carries every header the README shows, with its value (clock values: their shape). */
const expectShown = (actual: { status: number; headers: Headers; body?: string }, shown: ShownReply) => {
  expect(actual.status).toBe(shown.status);
  const nowS = Math.floor(Date.now() / 1000);
  for (const [name, value] of Object.entries(shown.headers)) {
    const got = actual.headers[name];
    expect(got, name).toBeDefined();
    if (RESET_HEADERS.has(name)) expect(Number(got)).toBeGreaterThanOrEqual(nowS);
    else if (SECONDS_HEADERS.has(name)) expect(Math.abs(Number(got) - Number(value))).toBeLessThanOrEqual(5);
    else expect(got, name).toBe(value);
  }
  if (shown.body !== undefined) {
    const body = JSON.parse(actual.body!) as { error: { details: Record<string, unknown> } };
    const want = structuredClone(shown.body) as typeof body;
    if (want.error.details['reset'] !== undefined) {
      expect(Number(body.error.details['reset'])).toBeGreaterThanOrEqual(nowS);
      want.error.details['reset'] = body.error.details['reset'];
    }
    expect(body).toEqual(want);
  }
};

/** README descriptors use Envoy's proto field name. */
const shownDescriptors = (block: string): Descriptor[] =>
  (JSON.parse(block) as { entries: Descriptor['entries']; hits_addend?: number }[]).map((d) => ({
    entries: d.entries,
    ...(d.hits_addend === undefined ? {} : { hitsAddend: d.hits_addend }),
  }));

const asReply = (r: Reply | undefined) => {
  expect(r, 'denied with a local reply').toBeDefined();
  return r!;
};

const blocks = readmeBlocks();
const headersA = JSON.parse(blocks['headers']!) as Headers;
const withId = (id: string): Headers => ({ ...headersA, 'x-request-id': id });

// Once with Redis through REDIS_URL, as deploy/kubernetes and deploy/compose run it, once with the
// embedded store. The steps run in order against one server, as the README's walk does: step 4
// finds step 1's slot.
describe.each([
  ['redis (REDIS_URL, as deployed)', true],
  ['memory', false],
])(
  "deploy/README.md's walk through Envoy, against the server with the ConfigMap's policy: %s",
  (_name, useRedis) => {
    let redis: RedisProcess | undefined;
    let srv: TestServer;
    let walk: EnvoyWalk;

    beforeAll(async () => {
      const cm = yamlDocs(at('deploy', 'kubernetes', 'configmap.yaml'))[0];
      redis = useRedis ? await startRedis() : undefined;
      srv = await startTestServer({
        files: get(cm, 'data') as Record<string, string>,
        ...(redis ? { settings: { redisUrl: redis.url } } : {}),
      });
      walk = new EnvoyWalk(srv.grpcAddress);
    });

    afterAll(async () => {
      walk?.close();
      await srv?.stop();
      await redis?.stop();
    });

    it('README blocks are all there', () => {
      expect(Object.keys(blocks).sort()).toEqual(
        ['400', '402', '429', 'descriptors', 'descriptors-done', 'headers', 'ok', 'usage'].sort(),
      );
    });

    it('1–3: the headers build the descriptors shown, and the request is admitted with the headers shown', async () => {
      const step = await walk.request(headersA);
      expect(step.descriptors).toEqual(shownDescriptors(blocks['descriptors']!));
      expect(step.response.overallCode).toBe(RateLimitResponse_Code.OK);
      expect(step.response.statuses).toHaveLength(step.descriptors.length);
      expectShown({ status: 200, headers: headerMap(step.response) }, parseHttp(blocks['ok']!));
    });

    it('4: a second concurrent request is admitted, the third gets the 429 shown', async () => {
      const second = await walk.request(withId('0b7e1a52-6c1f-4f0e-8d33-8a1f3c2b9e01'));
      expect(second.response.overallCode).toBe(RateLimitResponse_Code.OK);
      const third = await walk.request(withId('c4d2f9a8-3e5b-4a71-b0c6-7d9e1f2a3b44'));
      expect(third.response.overallCode).toBe(RateLimitResponse_Code.OVER_LIMIT);
      expectShown(asReply(third.reply), parseHttp(blocks['429']!));
    });

    it('402 for a disabled key and 400 for max_tokens over the cap, with the bodies shown', async () => {
      const disabled = await walk.request({
        'x-api-key': 'revoked-2024',
        'x-model': 'gpt-4o-mini',
        'x-max-tokens': '100',
        'x-request-id': '9a1b2c3d-0000-4000-8000-000000000402',
      });
      expectShown(asReply(disabled.reply), parseHttp(blocks['402']!));
      const overCap = await walk.request({
        authorization: 'Bearer trial-42',
        'x-model': 'gpt-4o-mini',
        'x-max-tokens': '4096',
        'x-request-id': '9a1b2c3d-0000-4000-8000-000000000400',
      });
      expectShown(asReply(overCap.reply), parseHttp(blocks['400']!));
    });

    it('5: stream done sends the usage descriptors shown; the debit frees the slot for the third request', async () => {
      const done = await walk.streamDone(headersA, JSON.parse(blocks['usage']!) as Headers);
      expect(done.descriptors).toEqual(shownDescriptors(blocks['descriptors-done']!));
      expect(done.response.overallCode).toBe(RateLimitResponse_Code.OK);
      const retry = await walk.request(withId('c4d2f9a8-3e5b-4a71-b0c6-7d9e1f2a3b44'));
      expect(retry.response.overallCode).toBe(RateLimitResponse_Code.OK);
      // The debit settled the first request at 1187 in / 348 out instead of its 1200 / 512 reservation:
      // three reservations of 1200 in, minus the 13 not used.
      expect(headerMap(retry.response)['x-ratelimit-remaining-tokens-in']).toBe(
        String(30000 - 3 * 1200 + 13),
      );
    });

    it('a response without usage headers debits 0: the slot is freed all the same', async () => {
      const h = (id: string): Headers => ({
        'x-api-key': 'sk-no-usage',
        'x-model': 'gpt-4o',
        'x-request-id': id,
      });
      for (const id of ['r1', 'r2'])
        expect((await walk.request(h(id))).response.overallCode).toBe(RateLimitResponse_Code.OK);
      expect((await walk.request(h('r3'))).response.overallCode).toBe(RateLimitResponse_Code.OVER_LIMIT);
      const done = await walk.streamDone(h('r1'), { 'content-type': 'application/json' });
      expect(done.descriptors.map((d) => d.hitsAddend)).toEqual([0, 0]);
      expect(done.response.overallCode).toBe(RateLimitResponse_Code.OK);
      expect((await walk.request(h('r3'))).response.overallCode).toBe(RateLimitResponse_Code.OK);
    });

    it('a request without x-model is admitted, and its stream-done debit frees the key slot', async () => {
      const h = (id: string): Headers => ({ authorization: 'Bearer sk-no-model', 'x-request-id': id });
      const usage = { 'x-usage-tokens-in': '10', 'x-usage-tokens-out': '5' };
      // Free tier: 5 concurrent per key. Each request is done before the next starts, so all 6 get
      // in only if every stream-done call reaches Ratekeeper and frees its slot.
      for (let i = 0; i < 6; i++) {
        const step = await walk.request(h(`nm-${i}`));
        expect(step.descriptors.map((d) => d.entries.map((e) => e.key))).toEqual([['key', 'request_id']]);
        expect(step.response.overallCode, `request ${i}`).toBe(RateLimitResponse_Code.OK);
        const done = await walk.streamDone(h(`nm-${i}`), usage);
        expect(done.descriptors).toEqual(
          ['tokens_in', 'tokens_out'].map((kind, j) => ({
            entries: [
              { key: 'key', value: 'sk-no-model' },
              { key: 'request_id', value: `nm-${i}` },
              { key: 'usage', value: kind },
            ],
            hitsAddend: [10, 5][j],
          })),
        );
        expect(done.response.overallCode).toBe(RateLimitResponse_Code.OK);
      }
      // Envoy retrying a stream-done call counts it once: 6 × 15 tokens in the key's window.
      await walk.streamDone(h('nm-5'), usage);
      // The key's slots are real: 5 requests left running hold them all, the sixth is refused.
      for (let i = 0; i < 5; i++) {
        const held = await walk.request(h(`nm-held-${i}`));
        expect(held.response.overallCode).toBe(RateLimitResponse_Code.OK);
        if (i === 0)
          expect(headerMap(held.response)['x-ratelimit-remaining-tokens']).toBe(String(40_000 - 6 * 15));
      }
      const refused = await walk.request(h('nm-held-5'));
      expect(asReply(refused.reply).headers['x-ratelimit-denied']).toBe('CONCURRENT_LIMIT_EXCEEDED');
    });

    it('the stream-done debit counts once per request id, however often it arrives', async () => {
      const h: Headers = {
        'x-api-key': 'sk-once',
        'x-model': 'gpt-4o',
        'x-max-tokens': '100',
        'x-request-id': 'once-1',
      };
      await walk.request(h);
      const usage = { 'x-usage-tokens-in': '0', 'x-usage-tokens-out': '1000' };
      await walk.streamDone(h, usage);
      await walk.streamDone(h, usage);
      const next = await walk.request({ ...h, 'x-request-id': 'once-2' });
      expect(headerMap(next.response)['x-ratelimit-remaining-tokens-out']).toBe(String(10000 - 1000 - 100));
    });

    it('an unregistered key admitted with tier/account hints is debited under the same account', async () => {
      const h: Headers = {
        'x-api-key': 'sk-hinted',
        'x-model': 'o1',
        'x-max-tokens': '1000',
        'x-request-id': 'hint-1',
      };
      // Set by a trusted auth filter after the Lua filter (which drops client copies).
      const hints: Headers = { 'x-tier': 'pro', 'x-account': 'acct-7' };
      const first = await walk.request(h, hints);
      expect(first.response.overallCode).toBe(RateLimitResponse_Code.OK);
      const done = await walk.streamDone(
        h,
        { 'x-usage-tokens-in': '10', 'x-usage-tokens-out': '900' },
        hints,
      );
      for (const d of done.descriptors) {
        expect(d.entries).toEqual(
          expect.arrayContaining([
            { key: 'tier', value: 'pro' },
            { key: 'account', value: 'acct-7' },
          ]),
        );
      }
      // The debit landed: acct-7's o1 output window (pro: 2,000,000/day) holds the 900 used, not the 1000
      // reserved.
      const second = await walk.request({ ...h, 'x-request-id': 'hint-2', 'x-max-tokens': '1' }, hints);
      expect(headerMap(second.response)['x-ratelimit-remaining-tokens-out']).toBe(
        String(2_000_000 - 900 - 1),
      );
    });

    if (useRedis)
      it('the limits the walk used live in Redis, as with several instances', async () => {
        const client = new Redis(redis!.url, { lazyConnect: true });
        try {
          await client.connect();
          expect(await client.dbsize()).toBeGreaterThan(0);
        } finally {
          client.disconnect();
        }
      });

    it("compose's healthcheck URL and the Prometheus scrape annotations are served", async () => {
      const compose = yamlDocs(at('deploy', 'compose', 'docker-compose.yaml'))[0];
      const script = list(compose, 'services', 'ratekeeper', 'healthcheck', 'test').map(String).at(-1)!;
      const url = new URL(/fetch\('([^']+)'\)/.exec(script)![1]!);
      expect(Number(url.port)).toBe(settingsFrom({ config: 'x' }).httpPort);
      expect((await fetch(`${srv.httpUrl}${url.pathname}`)).status).toBe(200);

      const dep = yamlDocs(at('deploy', 'kubernetes', 'deployment.yaml'))[0];
      const ann = get(dep, 'spec', 'template', 'metadata', 'annotations') as Record<string, string>;
      expect(Number(ann['prometheus.io/port'])).toBe(settingsFrom({ config: 'x' }).metricsPort);
      const metrics = await fetch(`http://127.0.0.1:${srv.ports.metrics}${ann['prometheus.io/path']}`);
      expect(metrics.status).toBe(200);
      expect(await metrics.text()).toMatch(/^# (HELP|TYPE) /m);
    });

    it('the probes’ health service is SERVING on the gRPC port', async () => {
      const dep = yamlDocs(at('deploy', 'kubernetes', 'deployment.yaml'))[0];
      const container = list(dep, 'spec', 'template', 'spec', 'containers')[0];
      const Client = grpc.makeGenericClientConstructor(healthService, 'Health');
      const client = new Client(
        srv.grpcAddress,
        grpc.credentials.createInsecure(),
      ) as unknown as grpc.Client & {
        check(
          req: { service: string },
          cb: (err: grpc.ServiceError | null, res: { status: string }) => void,
        ): void;
      };
      try {
        for (const probe of ['readinessProbe', 'livenessProbe']) {
          const service = String(get(container, probe, 'grpc', 'service'));
          const res = await new Promise<{ status: string }>((resolve, reject) =>
            client.check({ service }, (e, r) => (e ? reject(e) : resolve(r))),
          );
          expect(res.status).toBe('SERVING');
        }
      } finally {
        client.close();
      }
    });
  },
);

describe('what the Lua filter and the descriptors do with other requests', () => {
  const envoy = envoyParts();
  const lua = luaSource(envoy.filter('envoy.filters.http.lua'));
  const keyOf = (ds: Descriptor[]) => [
    ...new Set(ds.flatMap((d) => d.entries.filter((e) => e.key === 'key'))),
  ];

  it('Istio builds the same descriptors as Envoy, at request time and at stream done', async () => {
    const istio = istioParts();
    const { 'x-model': _, ...noModel } = headersA;
    const md = { ratekeeper: { tokens_in: 5, tokens_out: 7 } };
    for (const client of [headersA, noModel]) {
      const h = { ...(await runLuaOnRequest(lua, client)), 'x-tier': 'pro', 'x-account': 'acme' };
      for (const done of [false, true]) {
        const built = buildDescriptors(envoy.rateLimits, h, done, md);
        // Stream done always sends its usage descriptors, with or without x-model.
        if (done) expect(built).toHaveLength(2);
        expect(buildDescriptors(istio.rateLimits, h, done, md)).toEqual(built);
      }
    }
  });

  it('without a key, Envoy sends no descriptor at all (authenticate before rate limiting)', async () => {
    const h = await runLuaOnRequest(lua, { 'x-model': 'gpt-4o', 'x-request-id': 'x' });
    expect(buildDescriptors(envoy.rateLimits, h, false)).toEqual([]);
  });

  it('a Bearer credential (any case) wins over a client-sent x-api-key', async () => {
    for (const scheme of ['Bearer', 'bearer', 'BEARER']) {
      const h = await runLuaOnRequest(lua, { authorization: `${scheme} real`, 'x-api-key': 'spoof' });
      expect(keyOf(buildDescriptors(envoy.rateLimits, h, false))).toEqual([{ key: 'key', value: 'real' }]);
    }
    // Other schemes leave x-api-key alone.
    const basic = await runLuaOnRequest(lua, { authorization: 'Basic abc', 'x-api-key': 'k' });
    expect(basic['x-api-key']).toBe('k');
  });

  it('drops what Ratekeeper would refuse, and the client’s tier and account', async () => {
    const h = await runLuaOnRequest(lua, {
      'x-api-key': 'k'.repeat(513),
      'x-model': '',
      'x-prompt-tokens': '12a',
      'x-max-tokens': '1000000000',
      'x-tier': 'enterprise',
      'x-account': 'someone-else',
      'x-request-id': 'r',
    });
    expect(h).toEqual({ 'x-request-id': 'r' });
    const kept = await runLuaOnRequest(lua, {
      'x-api-key': 'k'.repeat(512),
      'x-model': 'gpt-4o',
      'x-prompt-tokens': '0',
      'x-max-tokens': '999999999',
    });
    expect(Object.keys(kept).sort()).toEqual(['x-api-key', 'x-max-tokens', 'x-model', 'x-prompt-tokens']);
  });
});

describe('whatever a client sends, Ratekeeper answers the call Envoy makes (a refusal would fail open)', () => {
  let srv: TestServer;
  let walk: EnvoyWalk;

  beforeAll(async () => {
    const cm = yamlDocs(at('deploy', 'kubernetes', 'configmap.yaml'))[0];
    srv = await startTestServer({ files: get(cm, 'data') as Record<string, string> });
    walk = new EnvoyWalk(srv.grpcAddress);
  });

  afterAll(async () => {
    walk?.close();
    await srv?.stop();
  });

  it('any printable values in the headers the descriptors read give a decision and a settled debit, never INVALID_ARGUMENT', async () => {
    const text = fc.string({ unit: fc.constantFrom(...'0123456789 -abcXYZ.:/_'.split('')), maxLength: 12 });
    const value = fc.oneof(
      text,
      fc.nat().map(String),
      fc.constantFrom('', '-1', '1e3', ' 5', 'x'.repeat(600), '9'.repeat(10)),
    );
    const headerNames = ['x-api-key', 'x-model', 'x-prompt-tokens', 'x-max-tokens', 'x-tier', 'x-account'];
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.dictionary(fc.constantFrom(...headerNames), value), async (client) => {
        n++;
        const headers = { 'x-api-key': `fuzz-${n}`, ...client, 'x-request-id': `fuzz-${n}` };
        // No descriptor (the key was dropped): Envoy makes no call, so there is nothing to refuse.
        if ((await walk.descriptorsFor(headers)).length === 0) return;
        const step = await walk.request(headers);
        expect([RateLimitResponse_Code.OK, RateLimitResponse_Code.OVER_LIMIT]).toContain(
          step.response.overallCode,
        );
        // The stream-done debit is sent from the same headers (with or without x-model) and settles.
        const done = await walk.streamDone(headers, { 'x-usage-tokens-in': '3', 'x-usage-tokens-out': '4' });
        expect(done.descriptors).toHaveLength(2);
        expect(done.response.overallCode).toBe(RateLimitResponse_Code.OK);
      }),
      { numRuns: 100 },
    );
  });
});
