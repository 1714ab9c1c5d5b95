import type { DescMessage, DescService, MessageShape } from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import type { Logger } from '../log.js';
import type { Health } from './health.js';

/** What a handler sees of a call, the same on gRPC and Connect. */
export interface CallContext {
  /** Request headers / metadata, lower-case names. */
  headers: Headers;
  signal: AbortSignal;
  /** Transport and remote address, for logs. */
  peer: string;
}

type Handler<M> = M extends { methodKind: 'unary'; input: infer I; output: infer O }
  ? I extends DescMessage
    ? O extends DescMessage
      ? (req: MessageShape<I>, ctx: CallContext) => Promise<MessageShape<O>>
      : never
    : never
  : M extends { methodKind: 'server_streaming'; input: infer I; output: infer O }
    ? I extends DescMessage
      ? O extends DescMessage
        ? (req: MessageShape<I>, ctx: CallContext) => AsyncIterable<MessageShape<O>>
        : never
      : never
    : never;

/** One handler object per service, written once and mounted on both transports. */
export type ServiceImpl<S> =
  S extends GenService<infer T extends GenServiceMethods> ? { [K in keyof T]: Handler<T[K]> } : never;

export interface ServiceBinding {
  service: DescService;
  /** Runs before every method of the service; throws RkError('UNAUTHENTICATED') to refuse the call. */
  auth?: (ctx: CallContext) => void;
  // biome-ignore lint/suspicious/noExplicitAny: the transports look methods up by localName at runtime.
  impl: Record<string, (req: any, ctx: CallContext) => any>;
}

/** Ties a generated service to its handlers with full type checking. */
export const bind = <S extends GenService<GenServiceMethods>>(
  service: S,
  impl: ServiceImpl<S>,
  auth?: (ctx: CallContext) => void,
): ServiceBinding => ({ service, impl: impl as ServiceBinding['impl'], ...(auth ? { auth } : {}) });

/** What both transport adapters are started with: the same services on either port. */
export interface ListenerOptions {
  bindings: ServiceBinding[];
  health: Health;
  log: Logger;
  host: string;
  port: number;
}

/** A started transport adapter. */
export interface Listener {
  port: number;
  /** Stops accepting, ends streams, waits for in-flight calls up to drainMs, then cuts the rest. */
  shutdown(drainMs: number): Promise<void>;
}
