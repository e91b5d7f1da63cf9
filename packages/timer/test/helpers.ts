import { performance } from 'node:perf_hooks';
import { Runtime, probeBackend, tryCurrentRuntime, type BackendName } from '@miniss/core';
import type { TimerStats } from '@miniss/timer';

/**
 * The backends the timer's wake-up is tested on: each one's own `timeout` operation arms the
 * wheel's single wake-up. Unavailable ones are skipped with the reason `probeBackend` gives.
 */
export const backends: Array<{ name: BackendName; ok: boolean; reason: string }> = (['node', 'epoll', 'io_uring'] as BackendName[]).map(
  (name) => {
    const p = probeBackend(name);
    return { name, ok: p.ok, reason: p.reason ?? '' };
  },
);

/** Node's own handles and requests that keep the loop alive, minus the ones vitest's worker always has. */
export function activeResources(): string[] {
  return process
    .getActiveResourcesInfo()
    .filter((r) => r !== 'TTYWrap' && r !== 'PipeWrap' && r !== 'ProcessWrap')
    .sort();
}

export function timerRuntime(backend: BackendName = 'node'): Runtime {
  return new Runtime({ backend, features: ['timer'] });
}

export function timerStats(rt: Runtime): TimerStats {
  return rt.stats().plugins.timer as TimerStats;
}

export const now = (): number => performance.now();

/** One turn of Node's loop (lets the driver's flush microtask and the backend run). */
export const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Fails the test that left a runtime running (it would poison the next one). */
export async function noRuntimeLeft(): Promise<void> {
  const rt = tryCurrentRuntime();
  if (rt) {
    await rt.shutdown();
    throw new Error('a test left its runtime running');
  }
}

/**
 * Generous lateness bound for this noisy 2-core VM shared with other jobs: tests assert that a
 * timer is never early and not absurdly late, never how fast it is (that is the benchmark's job).
 */
export const LATE_MS = 200;

/** A deterministic PRNG (mulberry32) so a failure can be replayed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
