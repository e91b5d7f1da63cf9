import { describe, expect, it } from 'vitest';
import { RuntimeError } from '@miniss/core';
import { blockCore, delayPortMessages, make, shutDownAfterEach, within } from './helpers.js';

shutDownAfterEach();

/** Collects process warnings of the given names while `fn` runs (and one tick after). */
async function collectWarnings(names: string[], fn: () => Promise<void>): Promise<string[]> {
  const got: string[] = [];
  const on = (w: Error): void => {
    if (names.includes(w.name)) got.push(`${w.name}: ${w.message}`);
  };
  process.on('warning', on);
  try {
    await fn();
    await new Promise((r) => setImmediate(r));
  } finally {
    process.off('warning', on);
  }
  return got;
}

describe('MultiCoreRuntime.shutdown', () => {
  it('rejects a graceMs that setTimeout cannot hold (Infinity, > 2^31-1, NaN, negative) with INVALID_ARGUMENT; the runtime keeps running', async () => {
    const mc = make({ cores: 2, pin: false });
    for (const bad of [Number.POSITIVE_INFINITY, 2 ** 31, 1e12, Number.NaN, -1, '10']) {
      const err = await within(mc.shutdown({ graceMs: bad as number }).then(() => null, (e: unknown) => e), 1000, `shutdown(${String(bad)})`);
      expect(err).toBeInstanceOf(RuntimeError);
      expect(err).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('graceMs') });
    }
    expect(mc.stats().shuttingDown).toBe(false);
    expect(await within(mc.spawnOn(1, (x: number) => x * 2, 21), 2000, 'task after the refused shutdowns')).toBe(42);
    await within(mc.shutdown(), 5000, 'shutdown');
    expect(mc.stats().perCore.map((c) => c.state)).toEqual(['exited', 'exited']);
  });

  it('graceMs = 2^31-1 is honoured: running tasks finish, no timer overflows, nothing crashes', async () => {
    const mc = make({ cores: 2, pin: false });
    const crashes: number[] = [];
    mc.onCoreCrash = (core) => crashes.push(core);
    const started = new SharedArrayBuffer(8);
    const task = (s: SharedArrayBuffer, i: number) =>
      new Promise((r) => {
        Atomics.store(new Int32Array(s), i, 1);
        setTimeout(() => r(`done ${i}`), 80);
      });
    const remote = mc.spawnOn(1, task, started, 1);
    const local = mc.spawnOn(0, task, started, 0);
    const flags = new Int32Array(started);
    const deadline = Date.now() + 2000;
    while ((Atomics.load(flags, 0) === 0 || Atomics.load(flags, 1) === 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
    const warnings = await collectWarnings(['TimeoutOverflowWarning', 'MinissCoreCrash'], async () => {
      await within(mc.shutdown({ graceMs: 2 ** 31 - 1 }), 2500, 'shutdown with the longest grace');
    });
    expect(warnings).toEqual([]);
    expect(crashes).toEqual([]);
    expect(await within(remote, 100, 'remote task')).toBe('done 1');
    expect(await within(local, 100, 'local task')).toBe('done 0');
    expect(mc.stats().perCore.map((c) => c.state)).toEqual(['exited', 'exited']);
  });

  it('a worker terminated because it did not exit in time is not a crash: its tasks reject RUNTIME_SHUTDOWN', async () => {
    const mc = make({ cores: 2, pin: false, workerExitTimeoutMs: 150 });
    const crashes: number[] = [];
    mc.onCoreCrash = (core) => crashes.push(core);
    // Blocks core 1's thread for good: it never even reads the shutdown request.
    const { handle: stuck } = await blockCore(mc, 1);
    const queued = mc.spawnOn(1, () => 'never runs');
    queued.then(undefined, () => {});
    const t0 = performance.now();
    const warnings = await collectWarnings(['MinissCoreCrash'], async () => {
      await within(mc.shutdown({ graceMs: 0 }), 2500, 'shutdown of a blocked core');
    });
    expect(performance.now() - t0).toBeGreaterThanOrEqual(140);
    expect(warnings).toEqual([]);
    expect(crashes).toEqual([]);
    for (const h of [stuck, queued] as PromiseLike<unknown>[]) {
      const e = await within(h.then(() => null, (err: unknown) => err), 100, 'handle on the terminated core');
      expect(e).toMatchObject({ code: 'RUNTIME_SHUTDOWN', message: expect.stringContaining('terminated') });
    }
    const s1 = mc.stats().perCore[1]!;
    expect(s1.state).toBe('exited');
    expect(s1.terminated).toBe(true);
    expect(s1.crash).toBeUndefined();
    expect(mc.stats().perCore[0]!.terminated).toBeUndefined();
  });

  it('a result carrying a SharedArrayBuffer, and the results queued behind it, reach their handles when their SharedArrayBuffers arrive after the last poll', async () => {
    const mc = make({ cores: 2, pin: false });
    // SharedArrayBuffers come over a MessagePort, a turn or more after the ring record that refers
    // to them: stretched to 150 ms here, they are still on the way when core 1 has exited and
    // shutdown reads the rings for the last time.
    delayPortMessages(mc, 1, 150);
    const shared = mc.spawnOn(1, async () => {
      await new Promise((r) => setTimeout(r, 30));
      const a = new Int32Array(new SharedArrayBuffer(8));
      a[1] = 7;
      return a;
    });
    const plain = mc.spawnOn(1, async () => {
      await new Promise((r) => setTimeout(r, 30));
      return [1, 2];
    });
    await new Promise((r) => setTimeout(r, 5));
    await within(mc.shutdown({ graceMs: 1000 }), 3000, 'shutdown');
    const got = await within(shared.then((v) => v, (e: { code?: string; message: string }) => `${e.code}: ${e.message}`), 100, 'SAB result');
    expect(got).toBeInstanceOf(Int32Array);
    expect((got as Int32Array).buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(Array.from(got as Int32Array)).toEqual([0, 7]);
    expect(await within(plain.then((v) => v, (e: { code?: string }) => e.code), 100, 'plain result')).toEqual([1, 2]);
    expect(mc.stats().perCore.map((c) => c.state)).toEqual(['exited', 'exited']);
  });

  it('a blockOn inside its own root task is refused with RUNTIME_EXISTS and shuts nothing down', async () => {
    const mc = make({ cores: 2, pin: false });
    const got = await within(
      mc.blockOn(async () => {
        const inner = await mc.blockOn(() => 'inner').then(
          () => 'resolved',
          (e: { code?: string }) => e.code,
        );
        expect(mc.stats().shuttingDown).toBe(false);
        const remote = await mc.spawnOn(1, () => 'still running');
        return `${inner} ${remote}`;
      }),
      10_000,
      'blockOn',
    );
    expect(got).toBe('RUNTIME_EXISTS still running');
  });

  it('workerExitTimeoutMs and crossCpuChannelCapacity out of range are INVALID_CONFIG before anything is allocated', () => {
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31, '5']) {
      expect(() => make({ cores: 2, workerExitTimeoutMs: bad as number })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringContaining('workerExitTimeoutMs') }));
    }
    for (const bad of [0, -1, 1.5, 1e12, 2 ** 20 + 1, '1000']) {
      let err: unknown;
      try {
        make({ cores: 2, crossCpuChannelCapacity: bad as number });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(RuntimeError);
      expect(err).toMatchObject({ code: 'INVALID_CONFIG', message: expect.stringContaining('crossCpuChannelCapacity must be an integer in 1..1048576') });
    }
  });
});
