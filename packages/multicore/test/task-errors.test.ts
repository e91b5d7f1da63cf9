import { describe, expect, it } from 'vitest';
import { RuntimeError } from '@miniss/core';
import type { MultiCoreRuntime } from '@miniss/multicore';
import { make, shutDownAfterEach, within } from './helpers.js';

shutDownAfterEach();

/** The rejection reason of `p` (bounded), or a failure if it resolved. */
async function rejection(p: PromiseLike<unknown>, what: string): Promise<{ code?: string; message: string }> {
  return within(
    Promise.resolve(p).then(
      (v) => {
        throw new Error(`${what}: resolved with ${String(v)}`);
      },
      (e: { code?: string; message: string }) => e,
    ),
    2000,
    what,
  );
}

async function closed(mc: MultiCoreRuntime): Promise<void> {
  await within(mc.shutdown(), 5000, 'shutdown');
  for (const c of mc.stats().perCore) expect(['exited', 'crashed']).toContain(c.state);
}

describe('task failures that cannot be described', () => {
  it('a thrown value whose toJSON and toString both throw rejects with a code; the core keeps running', async () => {
    const mc = make({ cores: 2, pin: false });
    const crashes: number[] = [];
    mc.onCoreCrash = (core) => crashes.push(core);
    // A bystander on the same core must survive the failure of its neighbour.
    const bystander = mc.spawnOn(1, async () => {
      await new Promise((r) => setTimeout(r, 100));
      return 'bystander ok';
    });
    const syncThrow = mc.spawnOn(1, () => {
      throw {
        toJSON() {
          throw new Error('no json');
        },
        toString() {
          throw new Error('no string');
        },
      };
    });
    expect(await rejection(syncThrow, 'sync throw on core 1')).toMatchObject({ code: 'NON_ERROR_THROWN', message: expect.stringContaining('non-Error thrown') });
    const asyncThrow = mc.spawnOn(1, async () => {
      await null;
      throw {
        toJSON() {
          throw new Error('no json');
        },
        toString() {
          throw new Error('no string');
        },
      };
    });
    expect(await rejection(asyncThrow, 'async throw on core 1')).toMatchObject({ code: 'NON_ERROR_THROWN' });
    // An Error whose own properties throw when read: a fixed coded error instead.
    const hostileError = mc.spawnOn(1, async () => {
      const e = new Error('x');
      Object.defineProperty(e, 'name', {
        get() {
          throw new Error('no name');
        },
      });
      throw e;
    });
    const he = await rejection(hostileError, 'hostile Error on core 1');
    expect(he).toBeInstanceOf(RuntimeError);
    expect(he).toMatchObject({ code: 'RESULT_NOT_CLONEABLE', message: expect.stringContaining('no name') });
    // A ReferenceError whose message cannot be read: explaining it (TASK_NOT_SHIPPABLE hint)
    // throws inside the reply, which must still settle the handle.
    const unreadable = mc.spawnOn(1, () => {
      const e = new ReferenceError('x is not defined');
      Object.defineProperty(e, 'message', {
        get() {
          throw new Error('no message');
        },
      });
      throw e;
    });
    expect(await rejection(unreadable, 'unreadable ReferenceError on core 1')).toMatchObject({ code: 'RESULT_NOT_CLONEABLE', message: expect.stringContaining('what it threw') });
    // A result whose serialization throws such a value, on a worker and on core 0.
    for (const core of [1, 0]) {
      const badResult = mc.spawnOn(core, () => ({
        get x() {
          throw {
            toString() {
              throw new Error('no string');
            },
          };
        },
      }));
      expect(await rejection(badResult, `unserializable result on core ${core}`)).toMatchObject({ code: 'RESULT_NOT_CLONEABLE' });
    }
    expect(await within(bystander, 2000, 'bystander')).toBe('bystander ok');
    expect(await within(mc.spawnOn(1, (x: number) => x + 1, 1), 2000, 'task after the failures')).toBe(2);
    expect(crashes).toEqual([]);
    expect(mc.stats().perCore[1]!.state).toBe('running');
    await closed(mc);
  });
});

describe('failed tasks nobody awaited', () => {
  it('are reported at shutdown as MinissUnobservedTaskError warnings, like core tasks', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error): void => {
      if (w.name === 'MinissUnobservedTaskError') warnings.push(w.message);
    };
    process.on('warning', onWarning);
    try {
      const mc = make({ cores: 2, pin: false });
      const lost = [
        mc.spawnOn(1, () => {
          throw new Error('lost-remote');
        }),
        mc.spawnOn(0, () => {
          throw new Error('lost-core0');
        }),
      ];
      const later = mc.spawnOn(1, () => {
        throw new Error('awaited-later');
      });
      const cancelled = mc.spawnOn(1, (signal: AbortSignal) => new Promise((_, rej) => signal.addEventListener('abort', () => rej(signal.reason))));
      cancelled.cancel();
      const deadline = Date.now() + 2000;
      while ([...lost, later].some((h) => !h.done) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
      expect([...lost, later].every((h) => h.done)).toBe(true);
      // Awaited after it failed, before the shutdown: not reported.
      await expect(later).rejects.toThrow('awaited-later');
      await closed(mc);
      await new Promise((r) => setImmediate(r)); // emitWarning emits on the next tick
      expect(warnings).toHaveLength(2);
      expect(warnings.some((m) => m.includes('lost-remote') && m.includes('on core 1'))).toBe(true);
      expect(warnings.some((m) => m.includes('lost-core0') && m.includes('on core 0'))).toBe(true);
    } finally {
      process.off('warning', onWarning);
    }
  });
});

describe('how misuse is reported', () => {
  it('spawnOn throws for a bad core or a non-function (as Runtime.spawn does); broadcast, a promise, rejects', async () => {
    const mc = make({ cores: 2, pin: false });
    for (const bad of [-1, 2, 1.5, Number.NaN, '1']) {
      expect(() => mc.spawnOn(bad as number, () => 1)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
    expect(() => mc.spawnOn(1, 42 as unknown as () => number)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => mc.spawn(null as unknown as () => number)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    // What concerns shipping the task rejects its handle.
    await expect(mc.spawnOn(1, (f: unknown) => typeof f, () => 1)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(mc.spawnOn(1, Math.max)).rejects.toMatchObject({ code: 'TASK_NOT_SHIPPABLE' });
    let bad: Promise<unknown> | undefined;
    expect(() => (bad = mc.broadcast(5 as unknown as () => number))).not.toThrow();
    await expect(bad).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await closed(mc);
    let after: Promise<unknown> | undefined;
    expect(() => (after = mc.broadcast(() => 1))).not.toThrow();
    await expect(after).rejects.toMatchObject({ code: 'RUNTIME_SHUTDOWN' });
    expect(() => mc.spawnOn(1, () => 1)).toThrow(expect.objectContaining({ code: 'RUNTIME_SHUTDOWN' }));
  });
});

describe('miniss resources sent to another core', () => {
  it('are refused with a message that names them (a listener as a result, the runtime as an argument)', async () => {
    const mc = make({ cores: 2, pin: false, backend: 'node' });
    // Built with `new Function` so that the test runner does not rewrite its `import()`.
    const bindOne = new Function(
      "return async () => { const { TcpListener } = await import('@miniss/core'); return TcpListener.bind({ host: '127.0.0.1', port: 0 }); }",
    )() as () => Promise<unknown>;
    const result = await rejection(mc.spawnOn(1, bindOne), 'a listener as a result');
    expect(result.code).toBe('RESULT_NOT_CLONEABLE');
    expect(result.message).toContain('a TcpListener cannot be sent to another core');
    const arg = await rejection(mc.spawnOn(1, (_rt: unknown) => 1, mc.runtime), 'the runtime as an argument');
    expect(arg.code).toBe('INVALID_ARGUMENT');
    expect(arg.message).toContain('a Runtime cannot be sent to another core');
  });
});
