import { afterEach, describe, expect, it } from 'vitest';
import { CancelledError, spawn } from '@miniss/core';
import { TimeoutError, currentDriver, sleep, timeout, withTimeout } from '@miniss/timer';
import { LATE_MS, backends, noRuntimeLeft, now, timerRuntime, timerStats, turn } from './helpers.js';

afterEach(noRuntimeLeft);

describe('timeout / withTimeout', () => {
  it('settles like the work when it wins, and removes its timer at once', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      expect(await timeout(1000, sleep(5).then(() => 'fast'))).toBe('fast');
      expect(await withTimeout(Promise.resolve(7), 1000)).toBe(7);
      const boom = new Error('boom');
      await expect(timeout(1000, Promise.reject(boom))).rejects.toBe(boom);
      await turn();
      expect(timerStats(rt)).toMatchObject({ active: 0, armed: 0 });
    });
  });

  it('rejects with TimeoutError (code TIMEOUT) when the time runs out, never early', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const t0 = now();
      const err = await timeout(30, new Promise(() => {})).catch((e: unknown) => e);
      const took = now() - t0;
      expect(err).toBeInstanceOf(TimeoutError);
      expect(err).toBeInstanceOf(Error);
      expect(err).toMatchObject({ code: 'TIMEOUT', ms: 30, name: 'TimeoutError' });
      expect(took).toBeGreaterThanOrEqual(30);
      expect(took).toBeLessThan(30 + LATE_MS);
      await expect(withTimeout(sleep(500), 10)).rejects.toMatchObject({ code: 'TIMEOUT' });
    });
  });

  it('gives a function its AbortSignal and aborts it with the TimeoutError', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      let seen: AbortSignal | undefined;
      const err = await timeout(20, (signal) => {
        seen = signal;
        return sleep(10_000, { signal });
      }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TimeoutError);
      expect(seen!.aborted).toBe(true);
      expect(seen!.reason).toBe(err);
      await turn();
      // The work's own sleep was freed by the abort: nothing is left in the wheel.
      expect(timerStats(rt).active).toBe(0);
    });
  });

  it('does not create a signal for a function that takes none, and passes synchronous values through', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      let args = -1;
      expect(
        await timeout(100, (...a: unknown[]) => {
          args = a.filter((x) => x !== undefined).length;
          return Promise.resolve('ok');
        }),
      ).toBe('ok');
      expect(args).toBe(0);
      const boom = new Error('sync throw');
      await expect(
        timeout(100, () => {
          throw boom;
        }),
      ).rejects.toBe(boom);
    });
  });

  it('ignores a late outcome of the work (no unhandled rejection)', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const late = sleep(30).then(() => {
        throw new Error('late failure');
      });
      await expect(timeout(5, late)).rejects.toBeInstanceOf(TimeoutError);
      await sleep(50);
    });
  });

  it('is cancelled with its task (called synchronously in it): CancelledError, work signal aborted', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      let signal: AbortSignal | undefined;
      let seen: unknown;
      const h = spawn(() =>
        timeout(10_000, (s) => {
          signal = s;
          return new Promise<void>(() => {});
        }).catch((e: unknown) => {
          seen = e;
        }),
      );
      await turn();
      h.cancel();
      await expect(h).rejects.toBeInstanceOf(CancelledError);
      await turn();
      expect(seen).toBeInstanceOf(CancelledError);
      expect(signal!.aborted).toBe(true);
      expect(timerStats(rt).active).toBe(0);
    });
  });

  it('rejects (never throws) when the work is a thenable whose then() throws, and leaves no timer', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      await turn();
      const bad = {
        then(): never {
          throw new Error('bad then');
        },
      };
      let p: Promise<unknown> | undefined;
      expect(() => (p = timeout(1_000, bad as unknown as PromiseLike<unknown>))).not.toThrow();
      await expect(p).rejects.toThrow('bad then');
      expect(timerStats(rt).active).toBe(0);
    });
  });
});

/** Synchronous work: the event loop cannot wake up until it ends. */
function busy(ms: number): void {
  const until = now() + ms;
  while (now() < until);
}

/**
 * When the loop wakes up late (it was busy), the timer that settles the work and the timeout can
 * be due in the same wake-up. The one due first must win, as with Node's timers (which run the
 * microtask queue after each callback): the timeout is fired only after every promise reaction of
 * the timers due before it has run. The wheel used to fire the whole batch in one loop, so the
 * timeout rejected before the work's reactions ran: TIMEOUT for work done in 2 ms of 20.
 */
describe.each(backends)('timeout when the loop wakes up late, on the $name backend', ({ name, ok, reason }) => {
  describe.runIf(ok)(`(skipped: ${reason || 'available'})`, () => {
    it('work settled by an earlier timer of the same late wake-up wins over the timeout', async () => {
      const rt = timerRuntime(name);
      await rt.blockOn(async () => {
        await sleep(1);
        for (let k = 0; k < 3; k++) {
          const work = sleep(2).then(() => `done ${k}`);
          await null; // the timeout is scheduled in a later microtask than the work's sleep
          const r = timeout(20, work);
          busy(40); // both are due when the loop next wakes up
          expect(await r).toBe(`done ${k}`);
        }
        await turn();
        expect(timerStats(rt)).toMatchObject({ active: 0, armed: 0 });
      });
    });
  });
});

describe('timeout against work due at the same time or in the same wake-up', () => {
  it('a timeout due at the same tick as the sleep it races, made after it, lets the work win', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      await sleep(1);
      const outcomes: string[] = [];
      for (let k = 0; k < 20; k++) {
        outcomes.push(await timeout(10, sleep(10)).then(() => 'ok', (e: { code?: string }) => String(e.code)));
      }
      expect(outcomes).toEqual(Array(20).fill('ok'));
    });
  });

  it('work due after the limit still times out when both fire in the same late wake-up', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      await sleep(1);
      const work = sleep(25).then(() => 'late');
      await null;
      const r = timeout(20, work);
      busy(40);
      const err = await r.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TimeoutError);
      expect(err).toMatchObject({ code: 'TIMEOUT', ms: 20 });
    });
  });

  it('an outer timeout due in the same wake-up as the inner one settles like the inner one (its work)', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      await sleep(1);
      const inner = timeout(20, new Promise<never>(() => {}));
      inner.catch(() => {});
      await null;
      const outer = timeout(30, inner);
      busy(50);
      const innerErr = await inner.catch((e: unknown) => e);
      expect(innerErr).toMatchObject({ code: 'TIMEOUT', ms: 20 });
      await expect(outer).rejects.toBe(innerErr);
    });
  });

  it("the work's signal is not aborted when the work wins in the same late wake-up", async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      await sleep(1);
      let seen: AbortSignal | undefined;
      const r = timeout(20, (signal) => {
        seen = signal;
        return sleep(2).then(() => 'done');
      });
      busy(40);
      expect(await r).toBe('done');
      expect(seen!.aborted).toBe(false);
    });
  });

  it('a burst of timeouts due together with other timers all reject with TIMEOUT, and nothing is left behind', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      await sleep(1);
      const never = new Promise<never>(() => {});
      const ps: Array<Promise<string>> = [];
      for (let i = 0; i < 300; i++) {
        ps.push(sleep(i % 5).then(() => 'slept'));
        ps.push(timeout(3 + (i % 5), never).catch((e: { code?: string }) => String(e.code)));
      }
      busy(20);
      const out = await Promise.all(ps);
      expect(out.filter((x) => x === 'slept').length).toBe(300);
      expect(out.filter((x) => x === 'TIMEOUT').length).toBe(300);
      await turn();
      expect(timerStats(rt)).toMatchObject({ active: 0, armed: 0 });
    });
  });

  it('a due timeout still waiting for its turn is dropped with RUNTIME_SHUTDOWN when the driver closes, and its setImmediate is cleared', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      await sleep(1);
      const d = currentDriver();
      const work = sleep(2);
      const r = timeout(20, new Promise<never>(() => {})).catch((e: unknown) => e);
      busy(40);
      await work; // runs after the chunk that fired the sleep, before the timeout's setImmediate
      expect(d.wheel.barrierDue).toBe(true);
      expect((d as unknown as { _immediate: unknown })._immediate).not.toBeNull();
      d.close(); // what runtime shutdown does
      expect(await r).toMatchObject({ code: 'RUNTIME_SHUTDOWN' });
      expect((d as unknown as { _immediate: unknown })._immediate).toBeNull();
      expect(d.wheel.size).toBe(0);
    });
  });
});
