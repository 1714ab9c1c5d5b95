/**
 * deploy/ agrees with the server, without Docker or Envoy: every file parses; Envoy and Istio carry
 * the same descriptors, filters and local-reply mappers; Kubernetes ports, probes, env and the
 * policy ConfigMap match the server's settings and pass its own validation; the Dockerfile runs the
 * README's command.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { imageNodeOptions } from '../../bench/config.js';
import { DEFAULT_PEPPER_ENV } from '../../src/config/inference.js';
import { loadConfig } from '../../src/config/load.js';
import { type DenyCode, httpStatus } from '../../src/policy/inference.js';
import { parseSettings, SETTING_SOURCES, SettingsSchema, settingsFrom } from '../../src/settings.js';
import { CREDENTIAL_SOURCES, parseCredentials } from '../../src/transport/auth.js';
import { parseDockerfile, stagesOf } from './dockerfile.js';
import {
  applyLocalReply,
  at,
  envoyParts,
  get,
  isRecord,
  istioParts,
  list,
  luaSource,
  ROOT,
  yamlDocs,
} from './envoy-model.js';

const walk = (dir: string): string[] =>
  readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });

const DEFAULTS = settingsFrom({ config: 'unused' });

/** Every deny code the server can answer with; the Record makes a new code a compile error here. */
const DENY_CODES = Object.keys({
  KEY_UNKNOWN: true,
  KEY_DISABLED: true,
  MAX_TOKENS_LIMIT_EXCEEDED: true,
  MONTHLY_TOKEN_LIMIT_EXCEEDED: true,
  MONTHLY_SPEND_LIMIT_EXCEEDED: true,
  DAILY_SPEND_LIMIT_EXCEEDED: true,
  CONCURRENT_LIMIT_EXCEEDED: true,
  RATE_LIMIT_EXCEEDED: true,
  TOKEN_RATE_LIMIT_EXCEEDED: true,
} satisfies Record<DenyCode, true>) as DenyCode[];

const k8sDoc = (file: string, kind: string): Record<string, unknown> => {
  const doc = yamlDocs(at('deploy', 'kubernetes', file)).find((d) => isRecord(d) && d['kind'] === kind);
  if (!isRecord(doc)) throw new Error(`${file} has no ${kind}`);
  return doc;
};

describe('every deploy file parses', () => {
  const files = walk(at('deploy'));

  it('YAML, every document of every file', () => {
    const yamls = files.filter((f) => /\.ya?ml$/.test(f));
    expect(yamls.map((f) => relative(ROOT, f)).sort()).toEqual(
      expect.arrayContaining([
        'deploy/compose/docker-compose.yaml',
        'deploy/envoy/envoy.yaml',
        'deploy/istio/envoyfilter.yaml',
        'deploy/kubernetes/deployment.yaml',
      ]),
    );
    for (const f of yamls) {
      const docs = yamlDocs(f);
      expect(docs.length, relative(ROOT, f)).toBeGreaterThan(0);
      for (const d of docs) expect(isRecord(d), relative(ROOT, f)).toBe(true);
    }
  });

  it('the Dockerfile: a build stage and a runtime stage, exec-form ENTRYPOINT and CMD', () => {
    const { stages } = stagesOf(parseDockerfile(readFileSync(at('deploy', 'Dockerfile'), 'utf8')));
    expect(stages.map((s) => s.name)).toEqual(['build', 'runtime']);
    const runtime = stages[1]!.instructions;
    expect(runtime.find((i) => i.op === 'ENTRYPOINT')?.exec).toBeDefined();
    expect(runtime.find((i) => i.op === 'CMD')?.exec).toBeDefined();
  });

  it('the model refuses what it does not know, so config edits it cannot follow fail here', () => {
    expect(() =>
      applyLocalReply({ mappers: [{ filter: { status_code_filter: {} } }] }, 429, {}, ''),
    ).toThrow();
  });
});

describe('the Dockerfile runs the README command with production dependencies only', () => {
  const dockerfile = readFileSync(at('deploy', 'Dockerfile'), 'utf8');
  const { globalArgs, stages } = stagesOf(parseDockerfile(dockerfile));
  const [build, runtime] = stages as [(typeof stages)[0], (typeof stages)[0]];
  const pkg = JSON.parse(readFileSync(at('package.json'), 'utf8')) as {
    version: string;
    scripts: Record<string, string>;
    engines: { node: string };
    bin: Record<string, string>;
  };
  const ops = (s: typeof build, op: string) => s.instructions.filter((i) => i.op === op);

  it('CMD is `npm start`’s server command (README), with the config baked at /etc/ratekeeper', () => {
    const readme = readFileSync(at('README.md'), 'utf8');
    expect(readme).toMatch(/npm start/);
    // `npm start` = build, then the server command; the image has built already.
    const serverCmd = pkg.scripts['start']!.split('&&').at(-1)!.trim().split(/\s+/);
    expect(serverCmd.slice(0, 5)).toEqual(['node', 'dist/src/cli.js', 'serve', '--config', 'config']);
    const argv = [...ops(runtime, 'ENTRYPOINT')[0]!.exec!, ...ops(runtime, 'CMD')[0]!.exec!];
    expect(argv).toEqual([...serverCmd.slice(0, 4), '/etc/ratekeeper', ...serverCmd.slice(5)]);
    expect(Object.values(pkg.bin)).toContain(argv[1]);
    expect(ops(runtime, 'COPY').map((i) => i.text)).toContain('config /etc/ratekeeper');
    // And the CLI accepts exactly those flags.
    expect(parseSettings(argv.slice(3), {}).config).toBe('/etc/ratekeeper');
  });

  it('build stage: npm ci and `npm run build` over every directory tsconfig.build.json compiles', () => {
    expect(build.instructions.some((i) => i.op === 'RUN' && /^npm ci\b/.test(i.text))).toBe(true);
    expect(build.instructions.some((i) => i.op === 'RUN' && i.text === 'npm run build')).toBe(true);
    expect(pkg.scripts['build']).toBeDefined();
    const tsBuild = JSON.parse(readFileSync(at('tsconfig.build.json'), 'utf8')) as { include: string[] };
    const copied = ops(build, 'COPY').flatMap((i) => i.text.split(/\s+/).slice(0, -1));
    for (const dir of tsBuild.include) expect(copied).toContain(dir);
    for (const src of copied) expect(existsSync(at(src)), src).toBe(true);
  });

  it('runtime stage: production dependencies only, non-root numeric user, the three ports exposed', () => {
    const runs = ops(runtime, 'RUN').map((i) => i.text);
    expect(runs.some((r) => /^npm ci --omit=dev\b/.test(r))).toBe(true);
    expect(runs.some((r) => /npm (ci|install)(?!.*--omit=dev)/.test(r))).toBe(false);
    expect(
      ops(runtime, 'COPY')
        .filter((i) => i.text.startsWith('--from='))
        .map((i) => i.text),
    ).toEqual(['--from=build /app/dist ./dist']);
    const user = ops(runtime, 'USER').at(-1)!.text;
    expect(user).toMatch(/^[1-9]\d*(:\d+)?$/);
    const exposed = ops(runtime, 'EXPOSE').flatMap((i) => i.text.split(/\s+/).map(Number));
    expect(exposed.sort()).toEqual([DEFAULTS.httpPort, DEFAULTS.port, DEFAULTS.metricsPort].sort());
  });

  it('every package the server imports is a production dependency (the image has no others)', () => {
    const deps = Object.keys((pkg as unknown as { dependencies: Record<string, string> }).dependencies);
    const imported = new Set<string>();
    for (const f of [...walk(at('src')), ...walk(at('gen'))].filter((f) => f.endsWith('.ts'))) {
      // Type-only imports are erased by the build; they need no runtime package.
      const text = readFileSync(f, 'utf8').replace(/(?:import|export)\s+type\s[^;]*;/g, '');
      // `from` and a space before the specifier: a string 'from' (HPACK's static table) is not an import.
      for (const m of text.matchAll(/(?:\bfrom\s+|\bimport\(\s*)'([^'.][^']*)'/g)) {
        const spec = m[1]!;
        if (spec.startsWith('node:')) continue;
        imported.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!);
      }
    }
    expect(imported.size).toBeGreaterThan(0);
    for (const name of imported) expect(deps, name).toContain(name);
  });

  it('Node base image of the major package.json engines names, in both stages', () => {
    const major = /(\d+)/.exec(pkg.engines.node)![1];
    const nodeArg = globalArgs.find((a) => a.text.startsWith('NODE_VERSION='));
    expect(nodeArg?.text).toBe(`NODE_VERSION=${major}`);
    // biome-ignore lint/suspicious/noTemplateCurlyInString: the Dockerfile's own ARG reference, not JS.
    for (const s of stages) expect(s.from).toBe('node:${NODE_VERSION}-bookworm-slim');
  });

  it('the docker commands of deploy/README.md build this Dockerfile from the root, tagged as everywhere else', () => {
    const readme = readFileSync(at('deploy', 'README.md'), 'utf8');
    const build = /^docker build -f (\S+) -t (\S+) (\S+)$/m.exec(readme);
    expect(build?.slice(1)).toEqual(['deploy/Dockerfile', `ratekeeper:${pkg.version}`, '.']);
    expect(dockerfile).toContain(`#   ${build![0]}`);
    const run = /^docker run .* (\S+)$/m.exec(readme);
    expect(run?.[1]).toBe(build![2]);
    for (const p of [DEFAULTS.port, DEFAULTS.httpPort, DEFAULTS.metricsPort])
      expect(run![0]).toContain(`-p ${p}:${p}`);
    const compose = yamlDocs(at('deploy', 'compose', 'docker-compose.yaml'))[0];
    expect(get(compose, 'services', 'ratekeeper', 'image')).toBe(build![2]);
    const deployment = k8sDoc('deployment.yaml', 'Deployment');
    expect(get(deployment, 'spec', 'template', 'spec', 'containers', 0, 'image')).toBe(build![2]);
  });

  it('any docker command the top README shows is one of deploy/README.md’s', () => {
    const commands = (file: string) =>
      readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => /^\s*docker (build|run|compose) /.test(l))
        .map((l) => l.trim());
    const ours = commands(at('deploy', 'README.md'));
    expect(ours.length).toBeGreaterThan(0);
    for (const c of commands(at('README.md'))) expect(ours).toContain(c);
  });

  it('the build context ignore file lets in exactly what the COPY lines need', () => {
    const ignore = readFileSync(at('deploy', 'Dockerfile.dockerignore'), 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '' && !l.startsWith('#'));
    expect(ignore[0]).toBe('**');
    const allowed = ignore.slice(1).map((l) => l.replace(/^!/, '').replace(/\/\*\*$/, ''));
    const sources = stages
      .flatMap((s) => s.instructions)
      .filter((i) => i.op === 'COPY' && !i.text.startsWith('--from='))
      .flatMap((i) => i.text.split(/\s+/).slice(0, -1));
    expect([...new Set(sources)].sort()).toEqual([...allowed].sort());
  });
});

describe('Envoy and Istio build the same requests to the same service', () => {
  const envoy = envoyParts();
  const istio = istioParts();

  it('the same rate_limits, filters (Lua, header_to_metadata, ratelimit) and local-reply mappers', () => {
    expect(istio.rateLimits).toEqual(envoy.rateLimits);
    expect(istio.localReply).toEqual(envoy.localReply);
    expect(luaSource(istio.filter('envoy.filters.http.lua'))).toBe(
      luaSource(envoy.filter('envoy.filters.http.lua')),
    );
    expect(istio.filter('envoy.filters.http.header_to_metadata')).toEqual(
      envoy.filter('envoy.filters.http.header_to_metadata'),
    );
    const withoutCluster = (f: unknown) => {
      const c = structuredClone(f) as Record<string, Record<string, Record<string, Record<string, unknown>>>>;
      delete c['rate_limit_service']!['grpc_service']!['envoy_grpc']!['cluster_name'];
      return c;
    };
    expect(withoutCluster(istio.filter('envoy.filters.http.ratelimit'))).toEqual(
      withoutCluster(envoy.filter('envoy.filters.http.ratelimit')),
    );
  });

  it('filter order: Lua → header_to_metadata → ratelimit → router', () => {
    const order = [
      'envoy.filters.http.lua',
      'envoy.filters.http.header_to_metadata',
      'envoy.filters.http.ratelimit',
    ];
    expect(envoy.filterNames).toEqual([...order, 'envoy.filters.http.router']);
    // Each Istio patch is INSERT_BEFORE the router, so the patches' order is the chain's.
    expect(istio.filterNames).toEqual(order);
    for (const p of istio.patches.filter((x) => get(x, 'applyTo') === 'HTTP_FILTER')) {
      expect(get(p, 'patch', 'operation')).toBe('INSERT_BEFORE');
      expect(get(p, 'match', 'listener', 'filterChain', 'filter', 'subFilter', 'name')).toBe(
        'envoy.filters.http.router',
      );
    }
  });

  it('the rate-limit filter: only fields Envoy defines, domain of the shipped policy, fail open, a short timeout', async () => {
    const rl = envoy.filter('envoy.filters.http.ratelimit') as Record<string, unknown>;
    // Field names of envoy.extensions.filters.http.ratelimit.v3.RateLimit (Envoy 1.33+).
    const known = [
      '@type',
      'domain',
      'stage',
      'request_type',
      'timeout',
      'failure_mode_deny',
      'rate_limited_as_resource_exhausted',
      'rate_limit_service',
      'enable_x_ratelimit_headers',
      'disable_x_envoy_ratelimited_header',
      'rate_limited_status',
      'response_headers_to_add',
      'status_on_error',
      'stat_prefix',
      'filter_enabled',
      'filter_enforced',
    ];
    for (const k of Object.keys(rl)) expect(known, k).toContain(k);
    expect(rl['failure_mode_deny']).toBe(false);
    const timeoutMs = Number(/^(\d+(?:\.\d+)?)s$/.exec(String(rl['timeout']))![1]) * 1000;
    expect(timeoutMs).toBeGreaterThanOrEqual(20);
    expect(timeoutMs).toBeLessThanOrEqual(50);
    // Ratekeeper sends its own X-RateLimit-* headers; Envoy's would duplicate them.
    expect(rl['enable_x_ratelimit_headers']).toBe('OFF');
    expect(get(rl, 'rate_limit_service', 'transport_api_version')).toBe('V3');

    const env = { [DEFAULT_PEPPER_ENV]: 'test-pepper' };
    const config = await loadConfig(at('config'), { env });
    expect(rl['domain']).toBe(config.inference?.domain);
  });

  it('Envoy is the edge and makes every request id itself, so clients cannot pick or reuse one', () => {
    expect(get(envoy.hcm, 'use_remote_address')).toBe(true);
    expect(get(envoy.hcm, 'generate_request_id')).toBe(true);
    expect(get(envoy.hcm, 'preserve_external_request_id')).toBe(false);
  });

  it('the Ratekeeper cluster: HTTP/2, the gRPC port, the health service the server reports', () => {
    const c = envoy.cluster('ratekeeper');
    expect(
      get(
        c,
        'typed_extension_protocol_options',
        'envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
        'explicit_http_config',
      ),
    ).toHaveProperty('http2_protocol_options');
    const addr = get(
      c,
      'load_assignment',
      'endpoints',
      0,
      'lb_endpoints',
      0,
      'endpoint',
      'address',
      'socket_address',
    );
    expect(get(addr, 'port_value')).toBe(DEFAULTS.port);
    expect(get(c, 'health_checks', 0, 'grpc_health_check', 'service_name')).toBe('');
    expect(
      get(
        envoy.filter('envoy.filters.http.ratelimit'),
        'rate_limit_service',
        'grpc_service',
        'envoy_grpc',
        'cluster_name',
      ),
    ).toBe('ratekeeper');
  });

  it('Istio calls the Kubernetes Service by its Istio cluster name and gRPC port', () => {
    const svc = k8sDoc('service.yaml', 'Service');
    const grpcPort = list(svc, 'spec', 'ports').find((p) => get(p, 'name') === 'grpc');
    const name = `outbound|${String(get(grpcPort, 'port'))}||${String(get(svc, 'metadata', 'name'))}.${String(
      get(svc, 'metadata', 'namespace'),
    )}.svc.cluster.local`;
    expect(
      get(
        istio.filter('envoy.filters.http.ratelimit'),
        'rate_limit_service',
        'grpc_service',
        'envoy_grpc',
        'cluster_name',
      ),
    ).toBe(name);
    for (const p of istio.patches) expect(get(p, 'match', 'context')).toBe('GATEWAY');
  });

  it('the ServiceEntry alternative: the gRPC port as GRPC, and a DestinationRule for the same host', () => {
    const [entry, rule] = yamlDocs(at('deploy', 'istio', 'ratekeeper-serviceentry.yaml'));
    const host = String(get(entry, 'spec', 'hosts', 0));
    expect(get(entry, 'spec', 'ports', 0)).toMatchObject({ number: DEFAULTS.port, protocol: 'GRPC' });
    expect(get(rule, 'spec', 'host')).toBe(host);
    // The cluster name its comment tells you to use.
    expect(readFileSync(at('deploy', 'istio', 'ratekeeper-serviceentry.yaml'), 'utf8')).toContain(
      `outbound|${DEFAULTS.port}||${host}`,
    );
  });

  it('every deny code gets the HTTP status the server documents (httpStatus), with the body as JSON', () => {
    for (const lr of [envoy.localReply, istio.localReply]) {
      for (const code of DENY_CODES) {
        const body = JSON.stringify({ error: { code } });
        const out = applyLocalReply(lr, 429, { 'x-ratelimit-denied': code }, body);
        expect(out.status, code).toBe(httpStatus(code));
        expect(out.body).toBe(body);
        expect(out.contentType).toBe('application/json');
      }
      // Local replies that are not rate-limit denials (503 no upstream, …) are left alone.
      expect(applyLocalReply(lr, 503, {}, 'no healthy upstream')).toEqual({
        status: 503,
        body: 'no healthy upstream',
        contentType: undefined,
      });
    }
  });
});

describe('Kubernetes agrees with the server', () => {
  const deployment = k8sDoc('deployment.yaml', 'Deployment');
  const pod = get(deployment, 'spec', 'template', 'spec') as Record<string, unknown>;
  const container = list(pod, 'containers')[0] as Record<string, unknown>;
  const args = list(container, 'args').map(String);
  const env = list(container, 'env') as Record<string, unknown>[];
  const plainEnv = Object.fromEntries(
    env.filter((e) => typeof e['value'] === 'string').map((e) => [String(e['name']), String(e['value'])]),
  );
  const settings = parseSettings(args.slice(1), plainEnv);
  const containerPort = (name: string) =>
    get(
      list(container, 'ports').find((p) => get(p, 'name') === name),
      'containerPort',
    );
  const secret = k8sDoc('secret.example.yaml', 'Secret');

  it('runs `serve` with the server defaults spelled out', () => {
    expect(args[0]).toBe('serve');
    expect({ port: settings.port, http: settings.httpPort, metrics: settings.metricsPort }).toEqual({
      port: DEFAULTS.port,
      http: DEFAULTS.httpPort,
      metrics: DEFAULTS.metricsPort,
    });
    expect(containerPort('grpc')).toBe(settings.port);
    expect(containerPort('http')).toBe(settings.httpPort);
    expect(containerPort('metrics')).toBe(settings.metricsPort);
  });

  it('the Service exposes grpc / http / metrics on the container ports, selecting the pods', () => {
    const svc = k8sDoc('service.yaml', 'Service');
    const ports = list(svc, 'spec', 'ports').map((p) => [
      get(p, 'name'),
      get(p, 'port'),
      get(p, 'targetPort'),
    ]);
    expect(ports).toEqual([
      ['grpc', settings.port, 'grpc'],
      ['http', settings.httpPort, 'http'],
      ['metrics', settings.metricsPort, 'metrics'],
    ]);
    const labels = get(deployment, 'spec', 'template', 'metadata', 'labels');
    expect(labels).toMatchObject(get(svc, 'spec', 'selector') as object);
    expect(labels).toMatchObject(
      get(k8sDoc('pdb.yaml', 'PodDisruptionBudget'), 'spec', 'selector', 'matchLabels') as object,
    );
    expect(labels).toMatchObject(get(deployment, 'spec', 'selector', 'matchLabels') as object);
  });

  it('gRPC probes on the gRPC port; grace period longer than preStop plus the drain', () => {
    for (const probe of ['readinessProbe', 'livenessProbe']) {
      expect(get(container, probe, 'grpc', 'port')).toBe(settings.port);
      // The overall service name, which the server always reports (live check in envoy-walk.test.ts).
      expect(get(container, probe, 'grpc', 'service')).toBe('');
    }
    const preStop = Number(get(container, 'lifecycle', 'preStop', 'sleep', 'seconds'));
    expect(Number(pod['terminationGracePeriodSeconds'])).toBeGreaterThan(preStop + settings.drainTimeout);
  });

  it("NODE_OPTIONS keeps the image's flags (it replaces the image's value), which the bench measures", () => {
    const image = imageNodeOptions(at('deploy', 'Dockerfile'));
    expect(image.length).toBeGreaterThan(0);
    const value = String(
      get(
        env.find((e) => e['name'] === 'NODE_OPTIONS'),
        'value',
      ),
    ).split(/\s+/);
    for (const flag of image) expect(value).toContain(flag);
  });

  it('every environment variable is one the server reads; secrets come from the Secret', () => {
    const known = new Set<string>([
      ...Object.values(SETTING_SOURCES).map((s) => s.env),
      ...Object.values(CREDENTIAL_SOURCES).flatMap((s) => [s.env, s.fileEnv]),
      DEFAULT_PEPPER_ENV,
      'NODE_OPTIONS',
    ]);
    for (const e of env) expect(known, String(e['name'])).toContain(e['name']);
    const fromSecret = Object.fromEntries(
      env
        .filter((e) => e['valueFrom'] !== undefined)
        .map((e) => [e['name'], get(e, 'valueFrom', 'secretKeyRef')]),
    );
    expect(Object.keys(fromSecret).sort()).toEqual(['REDIS_URL', DEFAULT_PEPPER_ENV].sort());
    const data = get(secret, 'stringData') as Record<string, string>;
    for (const ref of Object.values(fromSecret)) {
      expect(get(ref, 'name')).toBe(get(secret, 'metadata', 'name'));
      expect(data).toHaveProperty(String(get(ref, 'key')));
    }
    // The example values pass the server's own validation.
    expect(settingsFrom({ config: 'x', redisUrl: data['redis-url']! }).redisUrl).toBeDefined();
    expect(parseCredentials(data['admin-tokens']!, 'admin-tokens').length).toBeGreaterThan(0);
  });

  it('the admin tokens file is where the Secret volume puts it', () => {
    const file = plainEnv[CREDENTIAL_SOURCES.admin.fileEnv]!;
    const mount = list(container, 'volumeMounts').find((m) => get(m, 'name') === 'secrets');
    const volume = list(pod, 'volumes').find((v) => get(v, 'name') === 'secrets');
    expect(get(volume, 'secret', 'secretName')).toBe(get(secret, 'metadata', 'name'));
    const item = list(volume, 'secret', 'items').find((i) => get(i, 'key') === 'admin-tokens');
    expect(file).toBe(`${String(get(mount, 'mountPath'))}/${String(get(item, 'path'))}`);
  });

  it('non-root as the Dockerfile user, read-only root filesystem, no privilege escalation', () => {
    const dockerUser = /^USER (\d+)/m.exec(readFileSync(at('deploy', 'Dockerfile'), 'utf8'))![1];
    expect(get(pod, 'securityContext', 'runAsNonRoot')).toBe(true);
    expect(String(get(pod, 'securityContext', 'runAsUser'))).toBe(dockerUser);
    expect(get(container, 'securityContext', 'readOnlyRootFilesystem')).toBe(true);
    expect(get(container, 'securityContext', 'allowPrivilegeEscalation')).toBe(false);
    expect(get(container, 'resources', 'requests')).toHaveProperty('cpu');
    expect(get(container, 'resources', 'requests')).toHaveProperty('memory');
  });

  it('the policy ConfigMap is the shipped config, mounted at --config, and passes the server’s validation', async () => {
    const cm = k8sDoc('configmap.yaml', 'ConfigMap');
    const volume = list(pod, 'volumes').find((v) => get(v, 'name') === 'config');
    expect(get(volume, 'configMap', 'name')).toBe(get(cm, 'metadata', 'name'));
    const mount = list(container, 'volumeMounts').find((m) => get(m, 'name') === 'config');
    expect(get(mount, 'mountPath')).toBe(settings.config);

    const data = get(cm, 'data') as Record<string, string>;
    const shipped = walk(at('config')).filter((f) => /\.ya?ml$/.test(f));
    const hint = 'out of date: node deploy/kubernetes/sync-configmap.mjs';
    expect(Object.keys(data).sort(), hint).toEqual(shipped.map((f) => basename(f)).sort());
    for (const f of shipped)
      expect(data[basename(f)], `${relative(ROOT, f)} ${hint}`).toBe(readFileSync(f, 'utf8'));

    const dir = await mkdtemp(join(tmpdir(), 'rk-configmap-'));
    try {
      for (const [name, text] of Object.entries(data)) await writeFile(join(dir, name), text);
      const config = await loadConfig(dir, { env: { [DEFAULT_PEPPER_ENV]: 'test-pepper' } });
      expect(config.inference?.domain).toBe('inference');
      expect(config.domains.size).toBeGreaterThan(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('the autoscaler owns this Deployment’s replica count, never below what the PDB needs', () => {
    const hpa = k8sDoc('hpa.yaml', 'HorizontalPodAutoscaler');
    expect(get(hpa, 'spec', 'scaleTargetRef')).toMatchObject({
      kind: 'Deployment',
      name: get(deployment, 'metadata', 'name'),
    });
    const min = Number(get(hpa, 'spec', 'minReplicas'));
    // The autoscaler owns the count: a Deployment replicas field would reset it on every apply.
    expect(get(deployment, 'spec')).not.toHaveProperty('replicas');
    const maxUnavailable = Number(get(k8sDoc('pdb.yaml', 'PodDisruptionBudget'), 'spec', 'maxUnavailable'));
    expect(min - maxUnavailable).toBeGreaterThanOrEqual(2);
    // CPU utilisation is relative to the request, which must be set.
    expect(get(container, 'resources', 'requests', 'cpu')).toBeDefined();
  });

  it('kustomization applies every manifest except the example Secret', () => {
    const k = yamlDocs(at('deploy', 'kubernetes', 'kustomization.yaml'))[0];
    const files = readdirSync(at('deploy', 'kubernetes')).filter(
      (f) => /\.yaml$/.test(f) && f !== 'kustomization.yaml' && f !== 'secret.example.yaml',
    );
    expect(list(k, 'resources').map(String).sort()).toEqual(files.sort());
  });
});

describe('docker-compose wires the same names and ports as envoy.yaml', () => {
  const compose = yamlDocs(at('deploy', 'compose', 'docker-compose.yaml'))[0];
  const services = get(compose, 'services') as Record<string, Record<string, unknown>>;
  const envoy = envoyParts();
  const address = (cluster: string) =>
    get(
      envoy.cluster(cluster),
      'load_assignment',
      'endpoints',
      0,
      'lb_endpoints',
      0,
      'endpoint',
      'address',
      'socket_address',
    );

  it('Envoy reaches ratekeeper and the stub upstream by their service names', () => {
    expect(services).toHaveProperty(String(get(address('ratekeeper'), 'address')));
    expect(services).toHaveProperty(String(get(address('inference_upstream'), 'address')));
    const stub = readFileSync(at('deploy', 'compose', 'stub-upstream.mjs'), 'utf8');
    expect(stub).toMatch(
      new RegExp(`PORT \\?\\? ${String(get(address('inference_upstream'), 'port_value'))}\\)`),
    );
    // The stub reports usage in the headers header_to_metadata reads.
    for (const r of list(envoy.filter('envoy.filters.http.header_to_metadata'), 'response_rules')) {
      expect(stub).toContain(`'${String(get(r, 'header'))}'`);
    }
  });

  it('mounts files that exist, builds with deploy/Dockerfile, runs an Envoy new enough', () => {
    const dir = at('deploy', 'compose');
    for (const svc of Object.values(services)) {
      for (const v of (svc['volumes'] as string[] | undefined) ?? []) {
        expect(existsSync(join(dir, v.split(':')[0]!)), v).toBe(true);
      }
    }
    const build = get(services, 'ratekeeper', 'build');
    expect(existsSync(join(dir, String(get(build, 'context')), String(get(build, 'dockerfile'))))).toBe(true);
    // A release with the CVE-2026-26330 fix: a `-latest` line from 1.34 on, or a fixed patch.
    const FIXED: Record<number, number> = { 34: 13, 35: 8, 36: 5, 37: 1 };
    const tag = /^envoyproxy\/envoy:v1\.(\d+)(?:-latest|\.(\d+))$/.exec(
      String(get(services, 'envoy', 'image')),
    );
    const minor = Number(tag?.[1]);
    expect(minor).toBeGreaterThanOrEqual(34);
    if (tag?.[2] !== undefined && minor <= 37) expect(Number(tag[2])).toBeGreaterThanOrEqual(FIXED[minor]!);
    expect(get(services, 'envoy', 'volumes')).toContain('../envoy/envoy.yaml:/etc/envoy/envoy.yaml:ro');
    expect(get(services, 'ratekeeper', 'ports')).toEqual(
      [DEFAULTS.port, DEFAULTS.httpPort, DEFAULTS.metricsPort].map((p) => `${p}:${p}`),
    );
  });

  it('SettingsSchema still has the defaults these files spell out', () => {
    expect(SettingsSchema.safeParse({ config: 'x' }).success).toBe(true);
    expect([DEFAULTS.port, DEFAULTS.httpPort, DEFAULTS.metricsPort]).toEqual([8081, 8080, 9102]);
  });
});
