/** Store wrappers for server-level tests: hold decisions in flight, or report the backend down. */
import { MemoryStore } from '../../src/store/memory.js';
import type { LimiterStore } from '../../src/store/store.js';

export interface GatedStore {
  store: LimiterStore;
  /** Resolves once a decide() call is waiting at the gate. */
  waiting(): Promise<void>;
  /** Lets every held and later decide() through. */
  open(): void;
}

/** A store that passes every call on to `inner`, but for the ones `over` replaces. */
export const wrapStore = (inner: LimiterStore, over: Partial<LimiterStore>): LimiterStore => ({
  now: () => inner.now(),
  decide: (d) => inner.decide(d),
  settle: (s) => inner.settle(s),
  release: (k) => inner.release(k),
  healthy: () => inner.healthy(),
  close: () => inner.close(),
  ...over,
});

/** decide() waits at a closed gate until open(): a call held in flight, with no timer involved. */
export const gatedStore = (inner: LimiterStore = new MemoryStore({ sweepIntervalMs: 0 })): GatedStore => {
  let release!: () => void;
  const gate = new Promise<void>((r) => {
    release = r;
  });
  let arrived!: () => void;
  const first = new Promise<void>((r) => {
    arrived = r;
  });
  const store = wrapStore(inner, {
    decide: async (d) => {
      arrived();
      await gate;
      return inner.decide(d);
    },
  });
  return { store, waiting: () => first, open: release };
};

/** healthy() answers what the test sets, as a store whose backend comes and goes. */
export const switchableStore = (
  inner: LimiterStore = new MemoryStore({ sweepIntervalMs: 0 }),
): { store: LimiterStore; setHealthy(h: boolean): void } => {
  let healthy = true;
  return {
    store: wrapStore(inner, { healthy: () => healthy }),
    setHealthy: (h) => {
      healthy = h;
    },
  };
};
