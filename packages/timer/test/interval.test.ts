import { afterEach, describe, expect, it } from 'vitest';
import { CancelledError, spawn } from '@miniss/core';
import { Interval, MISSED_TICK_TOLERANCE_MS, nextTickTime, sleep, spawnPeriodic } from '@miniss/timer';
import { LATE_MS, noRuntimeLeft, now, timerRuntime, timerStats, turn } from './helpers.js';

afterEach(noRuntimeLeft);

/** Blocks the thread (a consumer busy with synchronous work) for `ms`. */
function busy(ms: number): void {
  const end = now() + ms;
  while (now() < end) {
    /* spin */
  }
}

describe('missed-tick policy (pure)', () => {
  it('on time or slightly late (<= tolerance): the next tick stays on the grid', () => {
    for (const b of ['skip', 'delay', 'burst'] as const) {
      expect(nextTickTime(100, 100, 10, b)).toBe(110);
      expect(nextTickTime(100, 100 + MISSED_TICK_TOLERANCE_MS, 10, b)).toBe(110);
    }
  });

  it('skip: next grid point after now; delay: a full period from now; burst: the very next grid point', () => {
    // Due at 100, period 10, delivered at 137 (3.7 periods late).
    expect(nextTickTime(100, 137, 10, 'skip')).toBe(140);
    expect(nextTickTime(100, 137, 10, 'delay')).toBe(147);
    expect(nextTickTime(100, 137, 10, 'burst')).toBe(110);
    // Exactly on a later grid point: skip moves to the following one.
    expect(nextTickTime(100, 130, 10, 'skip')).toBe(140);
  });
});

describe('Interval', () => {
  it('ticks every period on the grid start + k * period, never early', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const start = now();
      const iv = new Interval(25);
      const at: number[] = [];
      for (let k = 1; k <= 4; k++) {
        await iv.tick();
        at.push(now() - start);
      }
      iv.cancel();
      at.forEach((t, i) => {
        expect(t).toBeGreaterThanOrEqual(25 * (i + 1));
        expect(t).toBeLessThan(25 * (i + 1) + LATE_MS);
      });
      expect(iv.ticks).toBe(4);
    });
  });

  it('immediate: true delivers the first tick at once (tokio interval)', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const iv = new Interval(1000, { immediate: true });
      const t0 = now();
      await iv.tick();
      expect(now() - t0).toBeLessThan(500); // not a period later
      iv.cancel();
    });
  });

  it("is in the wheel only while a tick is awaited (an idle interval keeps nothing alive)", async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const iv = new Interval(10);
      expect(timerStats(rt).active).toBe(0);
      const p = iv.tick();
      expect(timerStats(rt).active).toBe(1);
      await p;
      expect(timerStats(rt).active).toBe(0);
      iv.cancel();
    });
  });

  it("skip (default): after a stall the missed ticks are dropped, one tick at once, then back on the grid", async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      // Periods long enough that "at once" (under 60 ms, however loaded the host) and "at the next
      // grid point" (90 ms later) cannot be confused.
      const start = now();
      const iv = new Interval(100);
      busy(310); // ticks due at 100, 200, 300 are missed
      const t1 = now();
      await iv.tick(); // the late tick, at once
      expect(now() - t1).toBeLessThan(60);
      await iv.tick(); // the next grid point after the stall: start + 400
      const t2 = now() - start;
      expect(t2).toBeGreaterThanOrEqual(400);
      expect(t2).toBeLessThan(400 + LATE_MS);
      expect(iv.ticks).toBe(2);
      iv.cancel();
    });
  });

  it('delay: after a stall the schedule restarts a full period after the late tick', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const iv = new Interval(40, { missedTickBehavior: 'delay' });
      busy(130);
      await iv.tick();
      const t1 = now();
      await iv.tick();
      // The late tick was delivered (and the next one scheduled 40 ms later) just before t1 was read;
      // skip would have scheduled it on the grid, 30 ms after t1.
      expect(now() - t1).toBeGreaterThanOrEqual(40 - 5);
      iv.cancel();
    });
  });

  it('burst: after a stall every missed tick is delivered at once', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const iv = new Interval(100, { missedTickBehavior: 'burst' });
      busy(310); // ticks due at 100, 200, 300 are missed; the next one is due at 400
      const t1 = now();
      await iv.tick();
      await iv.tick();
      await iv.tick();
      expect(now() - t1).toBeLessThan(60);
      expect(iv.ticks).toBe(3);
      iv.cancel();
    });
  });

  it('async iteration counts ticks; break cancels; cancel() ends the loop and rejects a pending tick', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const iv = new Interval(5);
      const seen: number[] = [];
      for await (const n of iv) {
        seen.push(n);
        if (n === 3) break;
      }
      expect(seen).toEqual([1, 2, 3]);
      expect(iv.cancelled).toBe(true);
      await expect(iv.tick()).rejects.toBeInstanceOf(CancelledError);

      const iv2 = new Interval(5);
      const pending = iv2.tick();
      expect(iv2.cancel()).toBe(true);
      expect(iv2.cancel()).toBe(false);
      await expect(pending).rejects.toBeInstanceOf(CancelledError);
      let loops = 0;
      for await (const _ of iv2) loops++;
      expect(loops).toBe(0);
      await turn();
      expect(timerStats(rt)).toMatchObject({ active: 0, armed: 0 });
    });
  });

  it('a tick with a signal rejects when it aborts; the interval stays usable', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const iv = new Interval(30);
      const ac = new AbortController();
      const p = iv.tick({ signal: ac.signal });
      ac.abort(new Error('not now'));
      await expect(p).rejects.toThrow('not now');
      expect(timerStats(rt).active).toBe(0);
      await iv.tick();
      expect(iv.ticks).toBe(1);
      iv.cancel();
    });
  });
});

describe('spawnPeriodic', () => {
  it('runs fn every period until it returns false; awaiting gives the run count', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const start = now();
      const at: number[] = [];
      const runs = await spawnPeriodic(10, () => {
        at.push(now() - start);
        return at.length < 5;
      });
      expect(runs).toBe(5);
      at.forEach((t, i) => expect(t).toBeGreaterThanOrEqual(10 * (i + 1)));
      expect(timerStats(rt).active).toBe(0);
    });
  });

  it('stops when fn resolves false', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      let n = 0;
      expect(
        await spawnPeriodic(5, async () => {
          await sleep(1);
          return ++n < 3;
        }),
      ).toBe(3);
    });
  });

  it('cancel() stops it: the handle resolves with the runs so far, and no run follows', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      let n = 0;
      const h = spawnPeriodic(5, () => {
        n++;
      });
      await sleep(28);
      expect(h.cancel()).toBe(true);
      const runs = await h;
      expect(runs).toBe(n);
      expect(runs).toBeGreaterThanOrEqual(1);
      await sleep(30);
      expect(n).toBe(runs);
      expect(h.cancel()).toBe(false);
      expect(h.done).toBe(true);
    });
  });

  it('an exception in fn rejects the handle with it, and no run follows', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      let n = 0;
      const boom = new TypeError('periodic boom');
      const h = spawnPeriodic(5, () => {
        if (++n === 2) throw boom;
      });
      await expect(h).rejects.toBe(boom);
      await sleep(30);
      expect(n).toBe(2);
      const rejected = new Error('async boom');
      await expect(spawnPeriodic(5, () => Promise.reject(rejected))).rejects.toBe(rejected);
    });
  });

  it('a slow fn never overlaps itself (ticks missed meanwhile are skipped)', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      let running = 0;
      let maxRunning = 0;
      const starts: number[] = [];
      const runs = await spawnPeriodic(5, async () => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        starts.push(now());
        await sleep(18); // more than three periods
        running--;
        return starts.length < 4;
      });
      expect(runs).toBe(4);
      expect(maxRunning).toBe(1);
      for (let i = 1; i < starts.length; i++) expect(starts[i]! - starts[i - 1]!).toBeGreaterThanOrEqual(18);
    });
  });

  it('cancel() while fn runs lets that run finish, counts it, and starts no other', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      let finished = 0;
      let started = 0;
      const h = spawnPeriodic(5, async () => {
        started++;
        await sleep(30);
        finished++;
      });
      while (started === 0) await sleep(2);
      h.cancel();
      expect(await h).toBe(1);
      expect(finished).toBe(1);
      expect(started).toBe(1);
    });
  });

  it('runtime shutdown cancels a running periodic task (CancelledError) and frees its timer', async () => {
    const rt = timerRuntime();
    let h: ReturnType<typeof spawnPeriodic> | undefined;
    let outcome: unknown;
    await rt.blockOn(async () => {
      h = spawnPeriodic(10_000, () => {});
      h.then(
        () => (outcome = 'resolved'),
        (e: unknown) => (outcome = e),
      );
      await turn();
      expect(timerStats(rt).active).toBe(1);
    });
    await turn();
    expect(outcome).toBeInstanceOf(CancelledError);
    expect(timerStats(rt)).toMatchObject({ active: 0, armed: 0 });
  });

  it('is a task of the runtime (shows in its stats)', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const before = rt.stats().tasksSpawned;
      await spawnPeriodic(2, () => false);
      expect(rt.stats().tasksSpawned).toBe(before + 1);
      await spawn(() => 1);
    });
  });
});
