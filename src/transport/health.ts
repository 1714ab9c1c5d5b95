import type { Server, ServerWritableStream, UntypedServiceImplementation } from '@grpc/grpc-js';
import { HealthImplementation, type ServingStatus } from 'grpc-health-check';

/**
 * The server's serving state, shared by grpc.health.v1.Health on the gRPC port and /healthz on the
 * HTTP port. NOT_SERVING from creation until the server is ready, and again once shutdown begins or
 * while the store is down in closed failure mode.
 */
export class Health {
  readonly #impl: HealthImplementation;
  readonly #names: string[];
  readonly #watches = new Set<ServerWritableStream<unknown, unknown>>();
  #serving = false;

  /** `services`: full names reported besides the overall status (the empty name). */
  constructor(services: string[]) {
    this.#names = ['', ...services];
    this.#impl = new HealthImplementation(Object.fromEntries(this.#names.map((n) => [n, 'NOT_SERVING'])));
  }

  get serving(): boolean {
    return this.#serving;
  }

  set(serving: boolean): void {
    if (serving === this.#serving) return;
    this.#serving = serving;
    const status: ServingStatus = serving ? 'SERVING' : 'NOT_SERVING';
    for (const name of this.#names) this.#impl.setStatus(name, status);
  }

  /** Mounts Check and Watch; Watch streams are tracked so shutdown can end them instead of waiting. */
  addToServer(server: Server): void {
    this.#impl.addToServer({
      addService: (def, impl: UntypedServiceImplementation) => {
        const watch = impl.watch as (call: ServerWritableStream<unknown, unknown>) => void;
        server.addService(def, {
          ...impl,
          watch: (call: ServerWritableStream<unknown, unknown>) => {
            this.#watches.add(call);
            call.once('close', () => this.#watches.delete(call));
            call.once('cancelled', () => this.#watches.delete(call));
            watch(call);
          },
        });
      },
    });
  }

  /** Ends open Watch streams with OK, after they have seen the last status. */
  endWatches(): void {
    for (const call of this.#watches) call.end();
    this.#watches.clear();
  }
}
