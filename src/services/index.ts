import type { ServiceBinding } from '../transport/types.js';
import { adminBinding } from './admin.js';
import type { Deps } from './deps.js';
import { reportBinding } from './report.js';
import { rlsBinding } from './rls.js';
import { usageBinding } from './usage.js';

/** RLS and Usage take their own credential when RATEKEEPER_RLS_TOKENS is set; else they are open. */
const rlsAuth = (deps: Deps, b: ServiceBinding): ServiceBinding =>
  deps.auth?.rls ? { ...b, auth: deps.auth.rls.check } : b;

/** Every service, mounted identically on the gRPC and HTTP ports. */
export const bindings = (deps: Deps): ServiceBinding[] => [
  rlsAuth(deps, rlsBinding(deps)),
  rlsAuth(deps, usageBinding(deps)),
  reportBinding(deps),
  adminBinding(deps),
];
