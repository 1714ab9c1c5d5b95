/** Domain errors, mapped to gRPC / Connect status codes in one place (src/transport/status.ts). */
export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  | 'FAILED_PRECONDITION'
  | 'UNAVAILABLE'
  | 'INTERNAL';

export class RkError extends Error {
  override name = 'RkError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** The request field at fault, e.g. `descriptors[2].entries[0].key`. */
    readonly field?: string,
  ) {
    super(message);
  }
}

export const invalid = (field: string, message: string): RkError =>
  new RkError('INVALID_ARGUMENT', `${field}: ${message}`, field);

/** INVALID_ARGUMENT naming the field when a string is longer than `max` characters. */
export const checkLength = (value: string, field: string, max: number): void => {
  if (value.length > max) throw invalid(field, `at most ${max} characters`);
};
