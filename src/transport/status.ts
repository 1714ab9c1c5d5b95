import { Code, ConnectError } from '@connectrpc/connect';
import { status as GrpcStatus, Metadata, type ServiceError } from '@grpc/grpc-js';
import type { ErrorCode } from '../errors.js';
import { RkError } from '../errors.js';
import type { Logger } from '../log.js';
import { fieldLabel, invalidRequests, rpcErrors } from '../metrics.js';

/** The one mapping from domain error codes to wire status codes (gRPC and Connect share numbers). */
const CODES: Record<ErrorCode, Code> = {
  INVALID_ARGUMENT: Code.InvalidArgument,
  NOT_FOUND: Code.NotFound,
  ALREADY_EXISTS: Code.AlreadyExists,
  UNAUTHENTICATED: Code.Unauthenticated,
  PERMISSION_DENIED: Code.PermissionDenied,
  FAILED_PRECONDITION: Code.FailedPrecondition,
  UNAVAILABLE: Code.Unavailable,
  INTERNAL: Code.Internal,
};

/** How a call ends when it does not end with an answer. */
export interface WireStatus {
  code: Code;
  message: string;
}

/** What a failed call answers: known errors keep their message, anything else is INTERNAL without detail. */
export interface WireError extends WireStatus {
  /** false for unexpected errors, which the transport logs with their stack. */
  expected: boolean;
}

export const toWireError = (err: unknown): WireError => {
  if (err instanceof RkError) return { code: CODES[err.code], message: err.message, expected: true };
  if (err instanceof ConnectError) return { code: err.code, message: err.rawMessage, expected: true };
  return { code: Code.Internal, message: 'internal error', expected: false };
};

/** Code.X and grpc status.X are the same numbers by specification; this keeps the types honest. */
export const grpcCode = (code: Code): GrpcStatus => code as number as GrpcStatus;

export const toGrpcError = (w: WireError): Partial<ServiceError> => ({
  code: grpcCode(w.code),
  details: w.message,
  metadata: new Metadata(),
});

export const toConnectError = (w: WireError): ConnectError => new ConnectError(w.message, w.code);

/** Upper-case name of a wire code for metrics labels, e.g. INVALID_ARGUMENT. */
export const codeName = (code: Code): string => GrpcStatus[grpcCode(code)] ?? String(code);

/**
 * Maps a handler failure to its wire error and accounts for it once, for both transports:
 * INVALID_ARGUMENT by field, other codes by method, unexpected errors logged with their stack.
 */
export const failure = (method: string, err: unknown, log: Logger): WireError => {
  const w = toWireError(err);
  if (w.code === Code.InvalidArgument) {
    invalidRequests.inc({ method, field: fieldLabel(err instanceof RkError ? (err.field ?? '') : '') });
  } else {
    rpcErrors.inc({ method, code: codeName(w.code) });
    if (!w.expected) log.error({ err, method }, 'unexpected error in handler');
  }
  return w;
};
