import type { ServiceBinding } from '../transport/types.js';
import type { Deps } from './deps.js';
import { rlsBinding } from './rls.js';
import { usageBinding } from './usage.js';

/** Every service, mounted identically on the gRPC and HTTP ports. */
export const bindings = (deps: Deps): ServiceBinding[] => [rlsBinding(deps), usageBinding(deps)];
