import { setFlagsFromString } from 'node:v8';

/**
 * V8 settings for a serving process; call before serving (the flag is read at each GC).
 *
 * Allocation-site pretenuring off: V8 moves an allocation site to old space once most of its objects
 * outlive a scavenge at full new-space size. Here that misfires: a call's short-lived arrays (its body
 * chunks, among others) were tenured, and the young objects they pointed at then survived every
 * scavenge until a full GC. Off, an (a) decision at 5 in flight left 4 KB instead of 477 KB per
 * scavenge and the pause fell from 1.67 to 0.62 ms (--trace-gc-nvp; README, Performance).
 */
export const tuneGc = (): void => {
  setFlagsFromString('--no-allocation-site-pretenuring');
};
