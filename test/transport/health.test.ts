import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { create, createFileRegistry, fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { RateLimitService } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import {
  HealthCheckResponse_ServingStatus,
  Health as HealthService,
} from '../../gen/grpc/health/v1/health_pb.js';
import { createLogger } from '../../src/log.js';
import { startGrpc } from '../../src/transport/grpc.js';
import { Health } from '../../src/transport/health.js';
import { grpcClient } from '../harness/clients.js';
import { startTestServer, type TestServer } from '../harness/server.js';
import { gatedStore, switchableStore } from '../harness/stores.js';

const RLS = 'envoy.service.ratelimit.v3.RateLimitService';
const STATUS = HealthCheckResponse_ServingStatus;

/** grpc.health.v1 through the generated types, as any gRPC client (or a Kubernetes probe) calls it. */
const healthClient = (address: string) => {
  const c = grpcClient(HealthService, address);
  return {
    check: async (service = '') => (await c.check({ service })).status,
    watch: (service = '') => c.watch({ service }),
    close: () => c.close(),
  };
};

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

const started = async (opts: Parameters<typeof startTestServer>[0] = {}): Promise<TestServer> => {
  const srv = await startTestServer({
    files: {
      'd.yaml':
        'domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 5 }\n',
    },
    ...opts,
  });
  cleanup.push(() => srv.stop());
  return srv;
};

describe('grpc.health.v1.Health', () => {
  it('is NOT_SERVING on a bound port before the server declares itself ready', async () => {
    const health = new Health([RLS]);
    const grpcT = await startGrpc({
      bindings: [],
      health,
      log: createLogger('silent'),
      host: '127.0.0.1',
      port: 0,
    });
    cleanup.push(() => grpcT.shutdown(1000));
    const hc = healthClient(`127.0.0.1:${grpcT.port}`);
    cleanup.push(() => hc.close());
    expect(await hc.check()).toBe(STATUS.NOT_SERVING);
    health.set(true);
    expect(await hc.check()).toBe(STATUS.SERVING);
    expect(await hc.check(RLS)).toBe(STATUS.SERVING);
  });

  it('answers SERVING once started, per service too, and NOT_FOUND for an unknown service', async () => {
    const srv = await started();
    const hc = healthClient(srv.grpcAddress);
    cleanup.push(() => hc.close());
    expect(await hc.check()).toBe(STATUS.SERVING);
    expect(await hc.check(RLS)).toBe(STATUS.SERVING);
    await expect(hc.check('no.such.Service')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    const res = await fetch(`${srv.httpUrl}/healthz`);
    expect(res.status).toBe(200);
  });

  it('Watch sees NOT_SERVING when shutdown starts, while an in-flight call still drains, then ends OK', async () => {
    const gated = gatedStore();
    const srv = await started({ store: gated.store });
    const hc = healthClient(srv.grpcAddress);
    const rls = grpcClient(RateLimitService, srv.grpcAddress);
    cleanup.push(
      () => hc.close(),
      () => rls.close(),
    );

    const seen: HealthCheckResponse_ServingStatus[] = [];
    // Ends without error when the server ends the stream with OK.
    const watching = (async () => {
      for await (const r of hc.watch()) seen.push(r.status);
    })();
    await vi.waitFor(() => expect(seen).toEqual([STATUS.SERVING]));

    const inFlight = rls.shouldRateLimit({
      domain: 'd',
      descriptors: [{ entries: [{ key: 'k', value: 'v' }] }],
    });
    await gated.waiting();
    const stopping = srv.server.stop();
    await vi.waitFor(() => expect(seen).toEqual([STATUS.SERVING, STATUS.NOT_SERVING]));
    await watching;
    expect(srv.server.health.serving).toBe(false);

    gated.open();
    const res = await inFlight;
    expect(res.statuses[0]?.currentLimit?.requestsPerUnit).toBe(5);
    await stopping;
  });

  it('closed failure mode: NOT_SERVING (and /healthz 503) while the store is down, SERVING when it returns', async () => {
    const sw = switchableStore();
    const srv = await started({ store: sw.store, settings: { failureMode: 'closed' } });
    const hc = healthClient(srv.grpcAddress);
    cleanup.push(() => hc.close());
    expect(await hc.check()).toBe(STATUS.SERVING);
    sw.setHealthy(false);
    await vi.waitFor(async () => expect(await hc.check()).toBe(STATUS.NOT_SERVING), { timeout: 5000 });
    expect((await fetch(`${srv.httpUrl}/healthz`)).status).toBe(503);
    sw.setHealthy(true);
    await vi.waitFor(async () => expect(await hc.check()).toBe(STATUS.SERVING), { timeout: 5000 });
    expect((await fetch(`${srv.httpUrl}/healthz`)).status).toBe(200);
  });

  it('open failure mode keeps SERVING while the store is down (calls are admitted)', async () => {
    const sw = switchableStore();
    const srv = await started({ store: sw.store });
    sw.setHealthy(false);
    // One poll period and a margin: the state must not flip.
    await new Promise((r) => setTimeout(r, 1_300));
    expect(srv.server.health.serving).toBe(true);
  });
});

describe('server reflection', () => {
  const require = createRequire(import.meta.url);
  const protoDir = join(dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto');
  const pkg = grpc.loadPackageDefinition(
    loadSync('grpc/reflection/v1/reflection.proto', {
      includeDirs: [protoDir],
      keepCase: true,
      oneofs: true,
    }),
  ) as unknown as { grpc: { reflection: { v1: { ServerReflection: grpc.ServiceClientConstructor } } } };

  type ReflectionReply = {
    list_services_response?: { service: { name: string }[] };
    file_descriptor_response?: { file_descriptor_proto: Buffer[] };
    error_response?: { error_code: number; error_message: string };
  };

  const ask = async (address: string, request: Record<string, unknown>): Promise<ReflectionReply> => {
    const client = new pkg.grpc.reflection.v1.ServerReflection(
      address,
      grpc.credentials.createInsecure(),
    ) as unknown as grpc.Client & {
      ServerReflectionInfo(): grpc.ClientDuplexStream<Record<string, unknown>, ReflectionReply>;
    };
    try {
      const call = client.ServerReflectionInfo();
      const reply = new Promise<ReflectionReply>((resolve, reject) => {
        call.once('data', resolve);
        call.once('error', reject);
      });
      call.write(request);
      call.end();
      return await reply;
    } finally {
      client.close();
    }
  };

  it('lists the mounted services and health, as grpcurl list does', async () => {
    const srv = await started();
    const reply = await ask(srv.grpcAddress, { list_services: '*' });
    const names = reply.list_services_response?.service.map((s) => s.name) ?? [];
    expect(names).toContain(RLS);
    expect(names).toContain('grpc.health.v1.Health');
  });

  it('describes RateLimitService with its file and dependencies, as grpcurl describe does', async () => {
    const srv = await started();
    const reply = await ask(srv.grpcAddress, { file_containing_symbol: RLS });
    const files = (reply.file_descriptor_response?.file_descriptor_proto ?? []).map((b) =>
      fromBinary(FileDescriptorProtoSchema, b),
    );
    const rls = files.find((f) => f.name === 'envoy/service/ratelimit/v3/rls.proto');
    expect(rls?.service[0]?.method.map((m) => m.name)).toEqual(['ShouldRateLimit']);
    const names = files.map((f) => f.name);
    expect(names).toContain('envoy/extensions/common/ratelimit/v3/ratelimit.proto');
    expect(names).toContain('google/protobuf/duration.proto');
  });

  it('describes Health with descriptors strict clients accept (map entries named as protoc does)', async () => {
    const srv = await started();
    const reply = await ask(srv.grpcAddress, { file_containing_symbol: 'grpc.health.v1.Health' });
    const set = create(FileDescriptorSetSchema, {
      file: (reply.file_descriptor_response?.file_descriptor_proto ?? []).map((b) =>
        fromBinary(FileDescriptorProtoSchema, b),
      ),
    });
    const registry = createFileRegistry(set);
    expect(registry.getService('grpc.health.v1.Health')?.methods.map((m) => m.name)).toEqual([
      'Check',
      'Watch',
      'List',
    ]);
    const list = registry.getMessage('grpc.health.v1.HealthListResponse');
    expect(list?.fields[0]?.fieldKind).toBe('map');
    expect(set.file[0]?.messageType[1]?.nestedType[0]?.name).toBe('StatusesEntry');
  });
});
