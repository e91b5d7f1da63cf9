import { afterEach, describe, expect, it } from 'vitest';
import { CancelledError, spawn } from '@miniss/core';
import { TimeoutError, sleep, timeout, withTimeout } from '@miniss/timer';
import { LATE_MS, noRuntimeLeft, now, timerRuntime, timerStats, turn } from './helpers.js';

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
