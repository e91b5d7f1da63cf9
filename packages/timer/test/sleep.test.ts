import { afterEach, describe, expect, it } from 'vitest';
import { CancelledError, Runtime, RuntimeError, spawn } from '@miniss/core';
import { Interval, clearTimer, setTimer, sleep, spawnPeriodic, timeout, withTimeout } from '@miniss/timer';
import { LATE_MS, activeResources, backends, noRuntimeLeft, now, timerRuntime, timerStats, turn } from './helpers.js';

afterEach(noRuntimeLeft);

describe.each(backends)('sleep on the $name backend', ({ name, ok, reason }) => {
  describe.runIf(ok)(`(skipped: ${reason || 'available'})`, () => {
    it('never ends early, and is not absurdly late', async () => {
      const rt = timerRuntime(name);
      const results = await rt.blockOn(() =>
        Promise.all(
          [0, 1, 2, 5, 13, 20, 50, 64, 65, 120, 300].map(async (ms) => {
            const t0 = now();
            await sleep(ms);
            return { ms, took: now() - t0 };
          }),
        ),
      );
      for (const { ms, took } of results) {
        expect(took, `sleep(${ms})`).toBeGreaterThanOrEqual(ms);
        expect(took, `sleep(${ms})`).toBeLessThan(ms + LATE_MS);
      }
      // sleep(0) waits for the next 1 ms tick, like setTimeout(fn, 0).
      expect(results[0]!.took).toBeGreaterThan(0);
    });

    it('a sleep longer than setTimeout allows (2^31 - 1 ms) arms one wake-up and stays asleep', async () => {
      const rt = timerRuntime(name);
      const overflows: string[] = [];
      const onWarning = (w: Error): void => {
        if (w.name === 'TimeoutOverflowWarning') overflows.push(w.message);
      };
      process.on('warning', onWarning);
      try {
        const r = await rt.blockOn(async () => {
          const ac = new AbortController();
          const p = sleep(60 * 24 * 3600 * 1000, { signal: ac.signal }).then(
            () => 'fired',
            () => 'aborted',
          );
          await new Promise((res) => setTimeout(res, 150));
          const s = timerStats(rt);
          ac.abort();
          return { wakeups: s.wakeups, arms: s.arms, result: await p };
        });
        expect(r.result).toBe('aborted');
        expect(r.wakeups).toBe(0);
        expect(r.arms).toBe(1);
        expect(overflows).toEqual([]);
      } finally {
        process.off('warning', onWarning);
      }
    });

    it('resolves sleeps in deadline order, and arms one wake-up per earlier deadline, not one per timer', async () => {
      const rt = timerRuntime(name);
      const order: number[] = [];
      await rt.blockOn(async () => {
        const ds = [40, 10, 30, 20, 10, 50];
        await Promise.all(ds.map((ms, i) => sleep(ms).then(() => order.push(ms * 10 + i))));
      });
      expect(order.map((x) => Math.floor(x / 10))).toEqual([10, 10, 20, 30, 40, 50]);
      const s = timerStats(rt);
      expect(s.fired).toBe(6);
      expect(s.active).toBe(0);
      expect(s.armed).toBe(0);
      // All six were scheduled in one turn: one arm for the earliest, then re-arms as they fire.
      expect(s.arms).toBeLessThanOrEqual(12);
    });

    it('holds 100k sleeps and wakes each one no earlier than its deadline', async () => {
      const rt = timerRuntime(name);
      const n = 100_000;
      const early = await rt.blockOn(async () => {
        let early = 0;
        const ps: Array<Promise<void>> = new Array(n);
        for (let i = 0; i < n; i++) {
          const ms = i % 100;
          const deadline = now() + ms;
          ps[i] = sleep(ms).then(() => {
            if (now() < deadline) early++;
          });
        }
        expect(timerStats(rt).active).toBe(n);
        await Promise.all(ps);
        return early;
      });
      expect(early).toBe(0);
      const s = timerStats(rt);
      expect(s.fired).toBe(n);
      expect(s.active).toBe(0);
      expect(s.wakeups).toBeLessThan(2000); // about one per millisecond of the 100 ms spread, not one per timer
    });

    it('arms the backend for the tick itself: to the microsecond on native backends, whole ms on node', async () => {
      // Rounding every arm up to whole milliseconds made timers fire 0.5 ms late on average; the
      // native backends' timeouts are exact, so the driver asks for the time left to the tick.
      const rt = timerRuntime(name);
      const asked: number[] = [];
      const io = rt.io.bind(rt);
      rt.io = ((op, signal, owner) => {
        if (op.op === 'timeout') asked.push(op.ms);
        return io(op, signal, owner);
      }) as typeof rt.io;
      await rt.blockOn(async () => {
        for (const ms of [3, 7, 11, 5, 9]) {
          const t0 = now();
          await sleep(ms);
          expect(now() - t0).toBeGreaterThanOrEqual(ms);
        }
      });
      expect(asked.length).toBeGreaterThanOrEqual(5);
      for (const ms of asked) expect(Math.abs(ms * 1000 - Math.round(ms * 1000))).toBeLessThan(1e-6);
      const whole = asked.filter((ms) => Number.isInteger(ms)).length;
      if (name === 'node') expect(whole).toBe(asked.length);
      else expect(whole).toBeLessThan(asked.length); // five fractions all .000: odds ~1e-15
    });

    it('leaves nothing open after shutdown', async () => {
      const before = activeResources();
      const rt = timerRuntime(name);
      await rt.blockOn(async () => {
        await sleep(5);
        const ac = new AbortController();
        const p = sleep(10_000, { signal: ac.signal });
        await turn();
        ac.abort();
        await expect(p).rejects.toThrow();
      });
      expect(activeResources()).toEqual(before);
    });
  });
});

describe('cancellation at every stage', () => {
  it('an already-aborted signal rejects at once with its reason and schedules nothing', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const why = Object.assign(new Error('stop'), { code: 'E_STOP' });
      await expect(sleep(1000, { signal: AbortSignal.abort(why) })).rejects.toBe(why);
      // A reason without a string code (here an Error without one) comes wrapped, as its cause.
      const plain = new Error('plain');
      await expect(sleep(1000, { signal: AbortSignal.abort(plain) })).rejects.toMatchObject({ code: 'CANCELLED', cause: plain });
      expect(timerStats(rt)).toMatchObject({ active: 0, arms: 0 });
    });
  });

  it('aborting before the wake-up is armed (same turn) frees the slot and never arms', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const ac = new AbortController();
      const p = sleep(1000, { signal: ac.signal });
      expect(timerStats(rt).active).toBe(1);
      ac.abort();
      await expect(p).rejects.toMatchObject({ code: 'CANCELLED', cause: { name: 'AbortError' } });
      await turn();
      expect(timerStats(rt)).toMatchObject({ active: 0, cancelled: 1, arms: 0, armed: 0 });
    });
  });

  it('aborting while the wake-up is armed frees the slot and releases the wake-up', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const ac = new AbortController();
      const p = sleep(10_000, { signal: ac.signal });
      await turn();
      expect(timerStats(rt)).toMatchObject({ active: 1, armed: 1, arms: 1 });
      const why = new RuntimeError('STOPPED', 'user stop');
      ac.abort(why);
      await expect(p).rejects.toBe(why);
      await turn();
      expect(timerStats(rt)).toMatchObject({ active: 0, armed: 0 });
    });
  });

  it('a non-Error abort reason becomes a CancelledError carrying it as cause', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const ac = new AbortController();
      const p = sleep(10_000, { signal: ac.signal });
      ac.abort('just because');
      await expect(p).rejects.toMatchObject({ code: 'CANCELLED', cause: 'just because' });
    });
  });

  it('aborting after the sleep fired changes nothing', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const ac = new AbortController();
      await sleep(2, { signal: ac.signal });
      ac.abort();
      await turn();
      expect(timerStats(rt)).toMatchObject({ active: 0, fired: 1, cancelled: 0 });
    });
  });

  it('cancelling the task that called sleep() synchronously cancels the timer with CancelledError', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      let seen: unknown;
      const h = spawn(() =>
        sleep(10_000).catch((e: unknown) => {
          seen = e;
          throw e;
        }),
      );
      await turn();
      expect(timerStats(rt).active).toBe(1);
      expect(h.cancel()).toBe(true);
      await expect(h).rejects.toBeInstanceOf(CancelledError);
      await turn();
      expect(seen).toBeInstanceOf(CancelledError);
      expect(timerStats(rt)).toMatchObject({ active: 0, armed: 0 });
    });
  });

  it("after the task's first await, the task's signal carries the cancellation (the documented way)", async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const h = spawn(async (signal) => {
        await turn();
        await sleep(10_000, { signal });
      });
      await turn();
      await turn();
      expect(timerStats(rt).active).toBe(1);
      h.cancel();
      await expect(h).rejects.toBeInstanceOf(CancelledError);
      await turn();
      expect(timerStats(rt)).toMatchObject({ active: 0, armed: 0 });
    });
  });

  it('runtime shutdown rejects pending sleeps with RUNTIME_SHUTDOWN and releases the wake-up', async () => {
    const before = activeResources();
    const rt = timerRuntime();
    let pending: Promise<void> | undefined;
    await rt.blockOn(async () => {
      await turn(); // not synchronously in the task any more: only shutdown can end this sleep
      pending = sleep(60_000);
      pending.catch(() => {});
      await turn();
      expect(timerStats(rt).armed).toBe(1);
    });
    await expect(pending).rejects.toMatchObject({ code: 'RUNTIME_SHUTDOWN' });
    expect(timerStats(rt)).toMatchObject({ active: 0, armed: 0 });
    expect(activeResources()).toEqual(before);
  });
});

describe('setTimer / clearTimer', () => {
  it('calls back once after the delay; clearTimer cancels; stale ids are harmless', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const t0 = now();
      let at = 0;
      let calls = 0;
      const fired = new Promise<void>((resolve) => {
        setTimer(15, () => {
          at = now() - t0;
          calls++;
          resolve();
        });
      });
      const cancelled = setTimer(5, () => calls++);
      expect(clearTimer(cancelled)).toBe(true);
      expect(clearTimer(cancelled)).toBe(false);
      await fired;
      await sleep(20);
      expect(calls).toBe(1);
      expect(at).toBeGreaterThanOrEqual(15);
      expect(clearTimer(12345678)).toBe(false);
    });
  });

  it('a burst of due sleeps is resolved in chunks: early continuations run before the whole burst is resolved', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      await turn();
      const seen: number[] = [];
      const ps: Promise<void>[] = [];
      const firedBefore = timerStats(rt).fired;
      for (let i = 0; i < 5_000; i++) ps.push(sleep(5).then(() => void seen.push(timerStats(rt).fired - firedBefore)));
      await Promise.all(ps);
      expect(seen.length).toBe(5_000);
      // The first continuations ran after one chunk, not after all 5,000 sleeps were resolved.
      expect(seen[0]).toBeLessThan(1_000);
      expect(seen[seen.length - 1]).toBe(5_000);
    });
  });

  it('a timer that falls due while others are firing fires in the same wake-up, not a tick later', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const t0 = now();
      let wakeupsAtFirst = -1;
      let firstAt = 0;
      let secondAt = 0;
      const done = new Promise<void>((resolve) => {
        setTimer(5, () => {
          firstAt = now() - t0;
          wakeupsAtFirst = timerStats(rt).wakeups;
          const until = now() + 15;
          while (now() < until); // a burst of callbacks that takes longer than a tick
        });
        setTimer(10, () => {
          secondAt = now() - t0;
          resolve();
        });
      });
      await done;
      expect(firstAt).toBeGreaterThanOrEqual(5);
      expect(secondAt).toBeGreaterThanOrEqual(10);
      // Either both were due at the first wake-up or the second fell due during the first's
      // callback: one wake-up fired both.
      expect(timerStats(rt).wakeups).toBe(wakeupsAtFirst);
    });
  });
});

describe('errors', () => {
  it('NO_RUNTIME outside a runtime', async () => {
    await expect(sleep(1)).rejects.toMatchObject({ code: 'NO_RUNTIME' });
    await expect(timeout(1, Promise.resolve(1))).rejects.toMatchObject({ code: 'NO_RUNTIME' });
    await expect(withTimeout(Promise.resolve(1), 1)).rejects.toMatchObject({ code: 'NO_RUNTIME' });
    expect(() => new Interval(10)).toThrow(expect.objectContaining({ code: 'NO_RUNTIME' }));
    expect(() => spawnPeriodic(10, () => false)).toThrow(expect.objectContaining({ code: 'NO_RUNTIME' }));
    expect(() => setTimer(1, () => {})).toThrow(expect.objectContaining({ code: 'NO_RUNTIME' }));
  });

  it("FEATURE_UNAVAILABLE naming the fix in a runtime without features: ['timer']", async () => {
    const rt = new Runtime({ backend: 'node' });
    await rt.blockOn(async () => {
      const err = await sleep(1).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RuntimeError);
      expect(err).toMatchObject({ code: 'FEATURE_UNAVAILABLE' });
      expect((err as Error).message).toContain("features: ['timer']");
      expect(() => new Interval(10)).toThrow(expect.objectContaining({ code: 'FEATURE_UNAVAILABLE' }));
      expect(() => spawnPeriodic(10, () => false)).toThrow(expect.objectContaining({ code: 'FEATURE_UNAVAILABLE' }));
      await expect(timeout(5, Promise.resolve(1))).rejects.toMatchObject({ code: 'FEATURE_UNAVAILABLE' });
    });
  });

  it('INVALID_ARGUMENT for negative, NaN, non-finite or non-number durations and a period of 0 (never a busy loop)', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      for (const bad of [-1, -0.5, NaN, Infinity, -Infinity, '10' as unknown as number, undefined as unknown as number, 2 ** 60]) {
        await expect(sleep(bad), `sleep(${String(bad)})`).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
        await expect(timeout(bad, Promise.resolve(1))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
        expect(() => setTimer(bad, () => {})).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
      }
      for (const bad of [0, -5, NaN, Infinity]) {
        expect(() => new Interval(bad), `Interval(${bad})`).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
        expect(() => spawnPeriodic(bad, () => false)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
      }
      expect(() => spawnPeriodic(10, 'nope' as unknown as () => boolean)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
      expect(() => setTimer(10, null as unknown as () => void)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
      expect(() => new Interval(10, { missedTickBehavior: 'catch-up' as 'skip' })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
      await expect(sleep(1, { signal: {} as AbortSignal })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      await expect(timeout(10, 42 as unknown as Promise<number>)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      expect(timerStats(rt).active).toBe(0);
    });
  });
});
