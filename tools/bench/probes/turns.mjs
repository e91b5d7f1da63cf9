// Timing for the probes beside this one: every variant runs once per turn, in an order that
// rotates by one each turn (so none always goes first), and the first third of the turns is
// warm-up (V8 compiles an awaited path only after some thousands of calls).

/**
 * Runs each function of `variants` once per turn for `turns` turns, calling it with `arg(t)`;
 * returns each variant's times in microseconds per operation (`ops` operations per call).
 */
export async function timeTurns(variants, turns, ops, arg = () => undefined) {
  const times = Object.fromEntries(Object.keys(variants).map((k) => [k, []]));
  for (let t = 0; t < turns; t++) {
    const keys = Object.keys(variants);
    for (let r = 0; r < t % keys.length; r++) keys.push(keys.shift());
    for (const k of keys) {
      const t0 = performance.now();
      await variants[k](arg(t));
      times[k].push(((performance.now() - t0) * 1000) / ops);
    }
  }
  return times;
}

/** How many of `turns` turns {@link warmMedian} counts. */
export const timedTurns = (turns) => turns - Math.floor(turns / 3);

/** The median of `times` after the first third (the warm-up turns). */
export function warmMedian(times) {
  const s = times.slice(Math.floor(times.length / 3)).sort((x, y) => x - y);
  return s[s.length >> 1];
}
