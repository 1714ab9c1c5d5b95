const UNITS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * A duration as the policy file writes one ("250ms", "90s", "10m", "1h", "1d", fractions allowed),
 * in whole ms; undefined when the text is not one. Bounds are the caller's.
 */
export const durationMs = (s: string): number | undefined => {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$/.exec(s);
  return m ? Math.round(Number(m[1]) * UNITS[m[2]!]!) : undefined;
};
