#!/usr/bin/env node
/**
 * timer-api-verification: a run through every @miniss/timer API, printing what each call did and
 * checking it. Each line is `ok   <what>` or `FAIL <what>`; the process exits 1 if any check
 * failed, 0 otherwise. Covers sleep (and sleep aborted by a signal), timeout and withTimeout
 * (including work that is a function receiving an AbortSignal, aborted on timeout), TimeoutError
 * with code TIMEOUT, Interval (tick, async iteration, cancel), spawnPeriodic (stops by returning
 * false, handle.cancel(), an exception in fn), INVALID_ARGUMENT for bad durations, NO_RUNTIME
 * outside a runtime and FEATURE_UNAVAILABLE in a runtime without `features: ['timer']`.
 */
import { performance } from 'node:perf_hooks';
import { Runtime, type BackendChoice } from '@miniss/core';
import { Interval, TimeoutError, sleep, spawnPeriodic, timeout, withTimeout } from '@miniss/timer';

const b = process.argv.indexOf('--backend');
const backend = (b >= 0 ? process.argv[b + 1] : undefined) as BackendChoice | undefined;

let failures = 0;
function check(ok: boolean, what: string): void {
  if (!ok) failures++;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
}
function codeOf(err: unknown): string | undefined {
  return (err as { code?: unknown } | null)?.code as string | undefined;
}
async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  return undefined;
}
function thrown(fn: () => unknown): unknown {
  try {
    const r = fn();
    if (r instanceof Promise) r.catch(() => {});
  } catch (err) {
    return err;
  }
  return undefined;
}

// Outside any runtime: NO_RUNTIME.
const outside = thrown(() => sleep(1)) ?? (await rejection(sleep(1)));
check(codeOf(outside) === 'NO_RUNTIME', `sleep outside a runtime fails with ${codeOf(outside)}`);

// In a runtime without the feature: FEATURE_UNAVAILABLE naming the fix.
const plain = new Runtime({ ...(backend ? { backend } : {}) });
const noFeature = await plain.blockOn(async () => thrown(() => sleep(1)) ?? (await rejection(sleep(1))));
check(
  codeOf(noFeature) === 'FEATURE_UNAVAILABLE' && String((noFeature as Error).message).includes("features: ['timer']"),
  `sleep without the feature fails with ${codeOf(noFeature)}: ${(noFeature as Error | undefined)?.message}`,
);

const runtime = new Runtime({ ...(backend ? { backend } : {}), features: ['timer'] });
console.log(`miniss timer-api-verification on the '${runtime.backend.name}' backend`);

await runtime.blockOn(async () => {
  // sleep
  let t0 = performance.now();
  await sleep(30);
  let took = performance.now() - t0;
  check(took >= 30, `sleep(30) resolved after ${took.toFixed(1)} ms (never early)`);

  // sleep aborted by a signal: rejects with the signal's reason (a typed one: an Error with a
  // string code; any other reason comes wrapped in a CancelledError) and frees its slot.
  const ac = new AbortController();
  const reason = Object.assign(new Error('stop sleeping'), { code: 'E_STOP' });
  t0 = performance.now();
  const aborted = sleep(10_000, { signal: ac.signal });
  setTimeout(() => ac.abort(reason), 20);
  const abortErr = await rejection(aborted);
  took = performance.now() - t0;
  check(abortErr === reason, `sleep(10000, { signal }) rejected with the signal's reason after ${took.toFixed(1)} ms`);

  // Bad durations: INVALID_ARGUMENT.
  for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY]) {
    const e = thrown(() => sleep(bad)) ?? (await rejection(sleep(bad)));
    check(codeOf(e) === 'INVALID_ARGUMENT', `sleep(${bad}) fails with ${codeOf(e)}`);
  }
  const badPeriod = thrown(() => new Interval(0));
  check(codeOf(badPeriod) === 'INVALID_ARGUMENT', `new Interval(0) fails with ${codeOf(badPeriod)}`);

  // timeout: work that finishes in time.
  const fast = await timeout(200, sleep(5).then(() => 'fast'));
  check(fast === 'fast', `timeout(200, work done in 5 ms) resolved with '${fast}'`);

  // timeout: work that does not: TimeoutError, code TIMEOUT.
  t0 = performance.now();
  const slow = await rejection(timeout(20, (signal: AbortSignal) => sleep(5_000, { signal })));
  took = performance.now() - t0;
  check(
    slow instanceof TimeoutError && codeOf(slow) === 'TIMEOUT',
    `timeout(20, work of 5 s) rejected with ${(slow as Error).name} code ${codeOf(slow)} after ${took.toFixed(1)} ms`,
  );

  // withTimeout with a function that gets an AbortSignal: the signal aborts on timeout.
  let seen: AbortSignal | undefined;
  const wt = await rejection(
    withTimeout((signal: AbortSignal) => {
      seen = signal;
      return sleep(5_000, { signal });
    }, 20),
  );
  check(
    wt instanceof TimeoutError && seen?.aborted === true && seen.reason === wt,
    `withTimeout(fn(signal), 20) rejected with ${codeOf(wt)}; the work's signal was aborted: ${seen?.aborted}`,
  );
  const wtOk = await withTimeout(sleep(1).then(() => 42), 500);
  check(wtOk === 42, `withTimeout(work done in 1 ms, 500) resolved with ${wtOk}`);

  // Interval: tick(), async iteration, cancel().
  const iv = new Interval(10);
  t0 = performance.now();
  await iv.tick();
  await iv.tick();
  await iv.tick();
  took = performance.now() - t0;
  check(iv.ticks === 3 && took >= 20, `Interval(10): 3 ticks via tick() in ${took.toFixed(1)} ms`);
  let iterated = 0;
  for await (const _n of iv) {
    if (++iterated === 3) break; // break calls return(), which cancels the interval
  }
  check(iterated === 3 && iv.cancelled, `Interval: 3 more ticks by for-await, then break cancelled it (cancelled=${iv.cancelled})`);
  const iv2 = new Interval(1_000);
  const pendingTick = iv2.tick();
  iv2.cancel();
  const cancelErr = await rejection(pendingTick);
  check(codeOf(cancelErr) === 'CANCELLED', `Interval.cancel() rejects a pending tick with ${codeOf(cancelErr)}`);

  // spawnPeriodic: stops when fn returns false; awaiting gives the run count.
  let n = 0;
  const runs = await spawnPeriodic(10, () => ++n < 4);
  check(runs === 4 && n === 4, `spawnPeriodic(10, fn returning false on run 4) stopped after ${runs} runs`);

  // spawnPeriodic: handle.cancel().
  let m = 0;
  const h = spawnPeriodic(10, () => {
    m++;
  });
  await sleep(45);
  const wasRunning = h.cancel();
  const cancelledRuns = await h;
  check(wasRunning && cancelledRuns === m && m >= 1, `spawnPeriodic cancelled after ${cancelledRuns} runs (cancel() returned ${wasRunning})`);

  // spawnPeriodic: an exception in fn rejects the handle with it.
  const boom = new Error('boom on run 2');
  let k = 0;
  const failing = await rejection(
    Promise.resolve(
      spawnPeriodic(5, () => {
        if (++k === 2) throw boom;
      }),
    ),
  );
  check(failing === boom && k === 2, `spawnPeriodic rejected with fn's error '${(failing as Error).message}' on run ${k}`);

  // Every timer above fired or was cancelled: none is left in the wheel before shutdown.
  const active = (runtime.stats().plugins.timer as { active: number }).active;
  check(active === 0, `timers pending after the run: ${active}`);
});

console.log(failures === 0 ? 'all timer API checks passed' : `${failures} timer API check(s) FAILED`);
if (failures !== 0) process.exitCode = 1;
