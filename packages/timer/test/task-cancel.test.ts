import { setMaxListeners } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { CancelledError, spawn } from '@miniss/core';
import { Interval, sleep, timeout } from '@miniss/timer';
import { noRuntimeLeft, timerRuntime, timerStats, turn } from './helpers.js';

afterEach(noRuntimeLeft);

describe('task cancellation reaches every timer the task waits on (one hook per task, O(1) per timer)', () => {
  it('cancels thousands of sleeps, a timeout and an interval tick of one task; aborted and fired ones are left alone', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const outcomes: unknown[] = [];
      const ac = new AbortController();
      setMaxListeners(1_000, ac.signal); // 500 sleeps share this one signal on purpose
      const abortReason = new Error('aborted by its own signal');
      const h = spawn(() => {
        const ps: Promise<unknown>[] = [];
        for (let i = 0; i < 5_000; i++) {
          // Every 10th sleep has its own signal (aborted below), every 10th + 1 is short and fires.
          const opts = i % 10 === 0 ? { signal: ac.signal } : undefined;
          ps.push(sleep(i % 10 === 1 ? 1 : 60_000, opts).then(() => 'fired', (e: unknown) => e));
        }
        ps.push(timeout(60_000, new Promise(() => {})).catch((e: unknown) => e));
        const iv = new Interval(60_000);
        void iv.tick(); // the first tick is immediate
        ps.push(iv.tick().catch((e: unknown) => e));
        return Promise.all(ps).then((r) => outcomes.push(...r));
      });
      await turn();
      ac.abort(abortReason);
      for (let i = 0; i < 200 && timerStats(rt).fired < 500; i++) await new Promise((r) => setTimeout(r, 5));
      expect(timerStats(rt).fired).toBe(500);
      expect(timerStats(rt).active).toBe(5_000 - 500 - 500 + 2);
      expect(h.cancel()).toBe(true);
      await expect(h).rejects.toBeInstanceOf(CancelledError);
      // Every timer the task still waited on is gone from the wheel at once.
      expect(timerStats(rt).active).toBe(0);
      await turn();
      expect(timerStats(rt).armed).toBe(0);
    });
  });

  it("a task that sleeps in a loop with its signal stops at cancellation and leaves no timer armed", async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      let rounds = 0;
      const h = spawn(async (signal) => {
        // After the first await only the task's signal reaches the sleep (see sleep's doc).
        for (;;) {
          await sleep(1, { signal });
          rounds++;
        }
      });
      for (let i = 0; i < 200 && rounds < 5; i++) await new Promise((r) => setTimeout(r, 2));
      expect(rounds).toBeGreaterThanOrEqual(5);
      h.cancel();
      await expect(h).rejects.toBeInstanceOf(CancelledError);
      await turn();
      await new Promise((r) => setTimeout(r, 5));
      expect(timerStats(rt)).toMatchObject({ armed: 0 });
    });
  });
});
