#!/usr/bin/env node
/**
 * timer-sleep: the seeds' timer example. Creates a runtime with `features: ['timer']` (backend
 * from `--backend`, MINISS_BACKEND, or auto), sleeps a few times on the runtime's timer wheel
 * printing how long each sleep took, sleeps three times concurrently, and prints the wheel's
 * stats. Exits 1 if any sleep ended before its deadline.
 */
import { performance } from 'node:perf_hooks';
import { Runtime, type BackendChoice } from '@miniss/core';
import { sleep, type TimerStats } from '@miniss/timer';

const arg = process.argv.indexOf('--backend');
const backend = (arg >= 0 ? process.argv[arg + 1] : undefined) as BackendChoice | undefined;

const runtime = new Runtime({ ...(backend ? { backend } : {}), features: ['timer'] });
console.log(`miniss timer-sleep on the '${runtime.backend.name}' backend`);

let early = 0;
await runtime.blockOn(async () => {
  for (const ms of [10, 50, 100, 200]) {
    const t0 = performance.now();
    await sleep(ms);
    const took = performance.now() - t0;
    if (took < ms) early++;
    console.log(`sleep(${ms}) took ${took.toFixed(1)} ms`);
  }
  const t0 = performance.now();
  const done = await Promise.all(
    [30, 60, 90].map(async (ms) => {
      await sleep(ms);
      return performance.now() - t0;
    }),
  );
  done.forEach((t, i) => {
    if (t < [30, 60, 90][i]!) early++;
  });
  console.log(`3 concurrent sleeps (30, 60, 90 ms) finished at ${done.map((t) => t.toFixed(1)).join(', ')} ms`);
});

const s = runtime.stats().plugins.timer as TimerStats;
console.log(`timer wheel: ${s.fired} timers fired, ${s.cancelled} cancelled, ${s.active} still pending, ${s.wakeups} wake-ups`);
if (early > 0) {
  console.log(`${early} sleep(s) ended early`);
  process.exitCode = 1;
} else {
  console.log('no sleep ended early');
}
