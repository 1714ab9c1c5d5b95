import type { CallContext } from '../../src/transport/types.js';

/** The call context a transport would hand a handler, for tests that call handlers directly. */
export const callContext = (headers: Record<string, string> = {}): CallContext => ({
  headers: new Headers(headers),
  signal: new AbortController().signal,
  peer: 'test',
});
