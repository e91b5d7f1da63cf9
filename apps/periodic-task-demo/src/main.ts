#!/usr/bin/env node
/**
 * periodic-task-demo: the seeds' periodic task. `spawnPeriodic` runs a task every `--period` ms
 * (default 50) on the runtime's timer wheel; the task returns false on its `--runs`-th run
 * (default 5), which stops it, and awaiting the handle gives the number of runs. Then a second
 * periodic task is stopped from outside with `handle.cancel()`. Prints each run and the totals.
 */
import { performance } from 'node:perf_hooks';
import { Runtime, type BackendChoice } from '@miniss/core';
import { sleep, spawnPeriodic } from '@miniss/timer';

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  if (i < 0) return fallback;
  const v = Number(process.argv[i + 1]);
  if (!Number.isInteger(v) || v <= 0) {
    console.error(`${name} must be a positive integer, got ${process.argv[i + 1]}`);
    process.exit(2);
  }
  return v;
}
const runs = option('--runs', 5);
const period = option('--period', 50);
const b = process.argv.indexOf('--backend');
const backend = (b >= 0 ? process.argv[b + 1] : undefined) as BackendChoice | undefined;

const runtime = new Runtime({ ...(backend ? { backend } : {}), features: ['timer'] });
console.log(`miniss periodic-task-demo on the '${runtime.backend.name}' backend: every ${period} ms, ${runs} runs`);

const ok = await runtime.blockOn(async () => {
  const t0 = performance.now();
  let n = 0;
  const total = await spawnPeriodic(period, () => {
    n++;
    console.log(`run ${n} at ${(performance.now() - t0).toFixed(1)} ms`);
    return n < runs; // false on the last run stops the task
  });
  console.log(`periodic task stopped itself after ${total} runs in ${(performance.now() - t0).toFixed(1)} ms`);

  let ticks = 0;
  const handle = spawnPeriodic(10, () => {
    ticks++;
  });
  await sleep(55);
  handle.cancel();
  const cancelledAfter = await handle;
  console.log(`second periodic task cancelled from outside after ${cancelledAfter} runs`);
  return total === runs && cancelledAfter === ticks && ticks >= 1;
});

const s = runtime.stats();
console.log(`tasks: ${s.tasksSpawned} spawned, ${s.tasksCompleted} completed; timers pending: ${(s.plugins.timer as { active: number }).active}`);
if (!ok) process.exitCode = 1;
