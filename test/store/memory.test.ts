import { MemoryStore } from '../../src/store/memory.js';
import { conformance } from './conformance.js';

conformance('memory', async (clock) => {
  const store = new MemoryStore({ now: clock });
  return { store, close: () => store.close() };
});
