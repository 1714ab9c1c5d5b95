import type { DescFile, DescService } from '@bufbuild/protobuf';
import { toBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import type { Server } from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { Health } from '../../gen/grpc/health/v1/health_pb.js';

/** Each file once, dependencies included (google/protobuf well-known types too). */
const collectFiles = (services: DescService[]): DescFile[] => {
  const seen = new Map<string, DescFile>();
  const visit = (file: DescFile): void => {
    if (seen.has(file.name)) return;
    seen.set(file.name, file);
    for (const dep of file.dependencies) visit(dep);
  };
  for (const s of services) visit(s.file);
  return [...seen.values()];
};

/**
 * Mounts grpc.reflection (v1 and v1alpha) describing the mounted services and health, so grpcurl
 * can list and describe them. @grpc/reflection reads only `fileDescriptorProtos` from each entry of a
 * proto-loader package definition, so the protobuf-es descriptors are serialized into that shape.
 * Health is described from its generated file: proto-loader's own descriptor of it names map entries
 * in a way other reflection clients (grpcurl) reject.
 */
export const addReflection = (server: Server, services: DescService[]): void => {
  const described = [...services, Health];
  const files = collectFiles(described).map((f) => Buffer.from(toBinary(FileDescriptorProtoSchema, f.proto)));
  const pkg = { ratekeeper: { fileDescriptorProtos: files } };
  new ReflectionService(pkg as unknown as ConstructorParameters<typeof ReflectionService>[0], {
    services: described.map((s) => s.typeName),
  }).addToServer(server);
};
