import { afterEach, describe, expect, it } from 'vitest';
import {
  CancelledError,
  JoinHandle,
  Runtime,
  RuntimeError,
  blockOn,
  createRuntime,
  currentRuntime,
  probeBackend,
  resolveConfig,
  spawn,
  tryCurrentRuntime,
} from '@miniss/core';

/** Node's own handles that keep the loop alive, minus the ones vitest's worker always has. */
function activeResources(): string[] {
  return process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap' && r !== 'PipeWrap' && r !== 'ProcessWrap');
}

const tick = () => new Promise<void>((r) => setImmediate(r));

/** The MinissUnobservedTaskError warnings emitted while `fn` runs (and one turn after). */
async function unobservedWarnings(fn: () => Promise<void>): Promise<string[]> {
  const warnings: string[] = [];
  const onWarning = (w: Error): void => {
    if (w.name === 'MinissUnobservedTaskError') warnings.push(w.message);
  };
  process.on('warning', onWarning);
  try {
    await fn();
    await tick();
  } finally {
    process.off('warning', onWarning);
  }
  return warnings;
}

afterEach(async () => {
  // Every test closes its runtime; a leftover one would poison the next test.
  const rt = tryCurrentRuntime();
  if (rt) {
    await rt.shutdown();
    throw new Error('a test left its runtime running');
  }
});

describe('spawn and await', () => {
  it('returns values of sync and async tasks', async () => {
    const before = activeResources();
    const out = await blockOn(async () => {
      const a = spawn(() => 1);
      const b = spawn(async () => {
        await tick();
        return 'two';
      });
      return [await a, await b] as const;
    });
    expect(out).toEqual([1, 'two']);
    expect(activeResources()).toEqual(before);
  });

  it('awaiting spawned handles in order (or newest first) does not leave them piling up in the run queue', async () => {
    const rt = new Runtime({ backend: 'node' });
    const lengths = await rt.blockOn(async () => {
      const seen: number[] = [];
      // All of this runs in microtasks: the run queue's own drain (a macrotask) never gets a turn.
      for (let round = 0; round < 20; round++) {
        const hs = Array.from({ length: 500 }, (_, i) => spawn(async () => i));
        for (let i = 0; i < hs.length; i++) expect(await hs[i]).toBe(i);
        seen.push(rt.stats().runQueueLength);
        const one = spawn(() => round);
        expect(await one).toBe(round);
        seen.push(rt.stats().runQueueLength);
      }
      return seen;
    });
    expect(Math.max(...lengths)).toBe(0);
  });

  it('propagates the original error with its stack', async () => {
    const boom = new TypeError('boom');
    const rt = new Runtime({ backend: 'node' });
    await expect(
      rt.blockOn(async () => {
        await spawn(async () => {
          await tick();
          throw boom;
        });
      }),
    ).rejects.toBe(boom);
    expect(boom.stack).toContain('runtime.test.ts');
    expect(rt.stats().tasksFailed).toBe(2);
  });

  it('never calls then callbacks synchronously', async () => {
    await blockOn(async () => {
      const order: string[] = [];
      const h = spawn(() => 5);
      await h;
      h.then(() => order.push('callback'));
      order.push('after then');
      await h;
      await tick();
      expect(order).toEqual(['after then', 'callback']);
    });
  });

  it('supports chaining, catch and finally like a promise', async () => {
    await blockOn(async () => {
      const v = await spawn(() => 2)
        .then((x) => x * 10)
        .then((x) => Promise.resolve(x + 1));
      expect(v).toBe(21);
      const caught = await spawn(() => {
        throw new Error('no');
      }).catch((e: Error) => e.message);
      expect(caught).toBe('no');
      let fin = false;
      await spawn(() => 3).finally(() => {
        fin = true;
      });
      expect(fin).toBe(true);
    });
  });

  it('runs tasks in FIFO order and completes many of them', async () => {
    const rt = new Runtime({ backend: 'node' });
    await rt.blockOn(async () => {
      const order: number[] = [];
      const hs = [];
      for (let i = 0; i < 100_000; i++) hs.push(spawn(() => order.push(i)));
      await Promise.all(hs);
      expect(order.length).toBe(100_000);
      expect(order.every((v, i) => v === i)).toBe(true);
    });
    const s = rt.stats();
    expect(s.tasksSpawned).toBe(100_001);
    expect(s.tasksCompleted).toBe(100_001);
    expect(s.tasksActive).toBe(0);
  });

  it('does not starve the event loop when tasks keep spawning', async () => {
    await blockOn(async () => {
      let stop = false;
      let spins = 0;
      const loop = (): void => {
        spins++;
        if (!stop) spawn(loop);
      };
      spawn(loop);
      await new Promise<void>((r) => setTimeout(r, 5));
      stop = true;
      expect(spins).toBeGreaterThan(1000);
    });
  });

  it('gives the task its AbortSignal when it declares a parameter', async () => {
    await blockOn(async () => {
      let seen: AbortSignal | undefined;
      const h = spawn((signal) => {
        seen = signal;
        return 1;
      });
      await h;
      expect(seen).toBeInstanceOf(AbortSignal);
      expect(seen).toBe(h.signal);
    });
  });

  it('decides per function whether to pass the signal, however spawns of different functions interleave', async () => {
    await blockOn(async () => {
      const got: string[] = [];
      function none(...rest: unknown[]): number {
        // A rest parameter does not count in `length`: this function asked for no signal.
        got.push(`none:${rest.length}`);
        return 0;
      }
      const takes = (signal: AbortSignal): number => {
        got.push(`takes:${signal instanceof AbortSignal}`);
        return 1;
      };
      // Same function twice in a row (the remembered answer), then switching back and forth.
      for (const fn of [none, none, takes, takes, none, takes, none]) await spawn(fn as (s: AbortSignal) => number);
      const hs = [spawn(takes), spawn(none), spawn(takes)];
      await Promise.all(hs);
      expect(got).toEqual([
        'none:0', 'none:0', 'takes:true', 'takes:true', 'none:0', 'takes:true', 'none:0',
        'takes:true', 'none:0', 'takes:true',
      ]);
    });
  });

  it('exposes id and done', async () => {
    await blockOn(async () => {
      const h = spawn(() => 1);
      const h2 = spawn(() => 2);
      expect(h).toBeInstanceOf(JoinHandle);
      expect(h2.id).toBeGreaterThan(h.id);
      expect(h.done).toBe(false);
      await h;
      expect(h.done).toBe(true);
    });
  });
});

describe('cancellation', () => {
  it('a queued task never runs and its handle rejects with CancelledError', async () => {
    await blockOn(async () => {
      let ran = false;
      const h = spawn(() => {
        ran = true;
      });
      expect(h.cancel()).toBe(true);
      await expect(h).rejects.toBeInstanceOf(CancelledError);
      await expect(h).rejects.toMatchObject({ code: 'CANCELLED' });
      await tick();
      expect(ran).toBe(false);
      expect(h.cancel()).toBe(false);
    });
  });

  it('aborts the signal of a running task so awaited operations end promptly', async () => {
    const rt = new Runtime({ backend: 'node' });
    await rt.blockOn(async () => {
      let reason: unknown;
      const h = spawn(
        (signal) =>
          new Promise((_, reject) => {
            signal.addEventListener('abort', () => {
              reason = signal.reason;
              reject(signal.reason);
            });
          }),
      );
      await tick();
      const t0 = Date.now();
      expect(h.cancel()).toBe(true);
      await expect(h).rejects.toBeInstanceOf(CancelledError);
      expect(Date.now() - t0).toBeLessThan(1000);
      expect(reason).toBeInstanceOf(CancelledError);
    });
    expect(rt.stats().tasksCancelled).toBe(1);
  });

  it('cancel() after completion returns false and keeps the result', async () => {
    await blockOn(async () => {
      const h = spawn(() => 7);
      expect(await h).toBe(7);
      expect(h.cancel()).toBe(false);
      expect(await h).toBe(7);
    });
  });

  it('a task that fails with a CancelledError of its own was not cancelled: it counts as failed, its signal stays, its hooks do not run', async () => {
    const rt = new Runtime({ backend: 'node' });
    const calls: string[] = [];
    let handle!: JoinHandle<unknown>;
    await rt.blockOn(async () => {
      const ac = new AbortController();
      handle = spawn(async () => {
        // Something it awaited was aborted on purpose (a sleep with a signal, say).
        await new Promise((_, reject) => ac.signal.addEventListener('abort', () => reject(new CancelledError('user stopped it'))));
      });
      handle.onCancel(() => calls.push('hook'));
      await tick();
      ac.abort();
      await expect(handle).rejects.toMatchObject({ code: 'CANCELLED', message: 'user stopped it' });
      expect(handle.signal.aborted).toBe(false);
      expect(handle.cancel()).toBe(false);
    });
    expect(calls).toEqual([]);
    expect(rt.stats()).toMatchObject({ tasksFailed: 1, tasksCancelled: 0 });
  });

  it('onCancel hooks run on cancel, not on completion', async () => {
    await blockOn(async () => {
      const calls: string[] = [];
      const a = spawn(() => new Promise(() => {}));
      a.onCancel(() => calls.push('a'));
      const b = spawn(() => 1);
      b.onCancel(() => calls.push('b'));
      await b;
      a.cancel();
      await expect(a).rejects.toBeInstanceOf(CancelledError);
      expect(calls).toEqual(['a']);
    });
  });
});

describe('lifecycle', () => {
  it('spawn and currentRuntime outside a runtime throw NO_RUNTIME', () => {
    expect(() => spawn(() => 1)).toThrow(RuntimeError);
    expect(() => spawn(() => 1)).toThrow(expect.objectContaining({ code: 'NO_RUNTIME' }));
    expect(() => currentRuntime()).toThrow(expect.objectContaining({ code: 'NO_RUNTIME' }));
  });

  it('spawn after shutdown began throws RUNTIME_SHUTDOWN', async () => {
    const rt = new Runtime({ backend: 'node' });
    const done = rt.shutdown();
    expect(() => rt.spawn(() => 1)).toThrow(expect.objectContaining({ code: 'RUNTIME_SHUTDOWN' }));
    await done;
    expect(() => rt.spawn(() => 1)).toThrow(expect.objectContaining({ code: 'RUNTIME_SHUTDOWN' }));
    expect(tryCurrentRuntime()).toBeUndefined();
  });

  it('blockOn cancels tasks still running when the root settles, and leaves nothing open', async () => {
    const before = activeResources();
    const rt = new Runtime({ backend: 'node' });
    let orphan!: JoinHandle<unknown>;
    const v = await rt.blockOn(async () => {
      orphan = spawn((signal) => new Promise((_, rej) => signal.addEventListener('abort', () => rej(signal.reason))));
      await tick();
      return 'root';
    });
    expect(v).toBe('root');
    expect(orphan.done).toBe(true);
    await expect(orphan).rejects.toBeInstanceOf(CancelledError);
    expect(rt.stats()).toMatchObject({ tasksActive: 0, ioInFlight: 0, openResources: 0, shuttingDown: true });
    expect(activeResources()).toEqual(before);
  });

  it('blockOn keeps the process alive while the root task waits on another thread', async () => {
    const { Worker } = await import('node:worker_threads');
    const got = await blockOn(
      () =>
        new Promise<number>((resolve, reject) => {
          const w = new Worker('const { parentPort } = require("node:worker_threads"); setTimeout(() => parentPort.postMessage(42), 50);', {
            eval: true,
          });
          w.unref();
          w.once('message', (m: number) => {
            void w.terminate();
            resolve(m);
          });
          w.once('error', reject);
        }),
    );
    expect(got).toBe(42);
  });

  it('shutdown lets tasks finish within graceMs and cancels the rest', async () => {
    const rt = new Runtime({ backend: 'node' });
    const quick = rt.spawn(() => new Promise((r) => setTimeout(() => r('quick'), 10)));
    const slow = rt.spawn((signal) => new Promise((_, rej) => signal.addEventListener('abort', () => rej(signal.reason))));
    await rt.shutdown({ graceMs: 200 });
    expect(await quick).toBe('quick');
    await expect(slow).rejects.toBeInstanceOf(CancelledError);
  });

  it('a task may throw a value that cannot even be inspected (a Proxy whose traps throw): it fails with that value, unobserved ones are still reported', async () => {
    const hostile = new Proxy(
      {},
      {
        getPrototypeOf() {
          throw new Error('no prototype for you');
        },
        get() {
          throw new Error('no properties either');
        },
      },
    );
    const warnings = await unobservedWarnings(async () => {
      const rt = new Runtime({ backend: 'node' });
      const seen = rt.spawn(() => {
        throw hostile;
      });
      rt.spawn(async () => {
        throw hostile;
      });
      let caught: unknown;
      await seen.then(undefined, (e: unknown) => {
        caught = e; // not returned: resolving with the Proxy would read its then
      });
      expect(caught === hostile).toBe(true); // not toBe: printing the Proxy would throw
      expect(seen.signal.aborted).toBe(false); // not a cancellation
      await new Promise((r) => setImmediate(r)); // the other task runs and fails
      await rt.shutdown();
    });
    expect(warnings).toEqual([expect.stringContaining('cannot be shown')]);
  });

  it('warns at shutdown only about failed tasks still unawaited then, and counts those past the first 16', async () => {
    let rt!: Runtime;
    const warnings = await unobservedWarnings(async () => {
      rt = new Runtime({ backend: 'node' });
      await rt.blockOn(async () => {
        const later = spawn(() => {
          throw new Error('awaited-later');
        });
        await tick(); // it fails with nobody awaiting it
        await later.then(undefined, () => undefined); // then someone does, and catches it
        for (let i = 0; i < 40; i++) {
          spawn(() => {
            throw new Error(`lost-${i}`);
          });
        }
        await tick();
        // Failing with a CancelledError (something awaited was cancelled on purpose) is no failure to warn about.
        spawn(() => {
          throw new CancelledError('stopped on purpose');
        });
        await tick();
      });
    });
    expect(warnings.some((w) => w.includes('awaited-later'))).toBe(false);
    expect(warnings.some((w) => w.includes('stopped on purpose'))).toBe(false);
    expect(warnings.filter((w) => w.includes('lost-')).length).toBe(16);
    expect(warnings).toContain('24 more miniss tasks failed while nobody awaited them (only the first 16 are shown)');
    expect(rt.stats().tasksFailed).toBe(42);
  });

  it('a blockOn inside its own root task (or beside it) is refused with RUNTIME_EXISTS and leaves the runtime running', async () => {
    const rt = new Runtime({ backend: 'node' });
    const got = await rt.blockOn(async () => {
      const sibling = spawn(() => new Promise((r) => setTimeout(() => r('sibling'), 20)));
      await expect(rt.blockOn(() => 'inner')).rejects.toMatchObject({ code: 'RUNTIME_EXISTS' });
      expect(rt.stats().shuttingDown).toBe(false);
      return `outer+${await sibling}`;
    });
    expect(got).toBe('outer+sibling');
    // Once the root settled and the runtime shut down, another blockOn is RUNTIME_SHUTDOWN.
    await expect(rt.blockOn(() => 1)).rejects.toMatchObject({ code: 'RUNTIME_SHUTDOWN' });
  });

  it('a loop of spawn-and-await does not starve timers: past a drain budget, awaited tasks wait for the drain', async () => {
    const rt = new Runtime({ backend: 'node' });
    const spawns = await rt.blockOn(async () => {
      let fired = false;
      setTimeout(() => (fired = true), 5);
      const t0 = Date.now();
      let n = 0;
      // Without the budget every step is a microtask and the timer never fires (the loop would
      // run until the 5 s guard below).
      while (!fired && Date.now() - t0 < 5000) {
        await spawn(() => n++);
      }
      expect(fired).toBe(true);
      return n;
    });
    expect(spawns).toBeGreaterThan(0);
  });

  it('shutdownSignal takes one listener per connection without a MaxListenersExceededWarning', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error): void => {
      warnings.push(w.name);
    };
    process.on('warning', onWarning);
    try {
      const rt = new Runtime({ backend: 'node' });
      // 20 operations waiting on it at once, as 20 keep-alive connections' recvs would.
      const waits = Array.from({ length: 20 }, () => rt.io({ op: 'timeout', ms: 60_000 }, rt.shutdownSignal).catch((e: { code?: string }) => e.code));
      await tick();
      await rt.shutdown();
      expect(new Set(await Promise.all(waits))).toEqual(new Set(['RUNTIME_SHUTDOWN']));
      await tick();
      expect(warnings).not.toContain('MaxListenersExceededWarning');
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('shutdown refuses a graceMs that setTimeout cannot wait (negative, NaN, Infinity, over 2^31 - 1)', async () => {
    const rt = new Runtime({ backend: 'node' });
    for (const graceMs of [-1, Number.NaN, Infinity, 2 ** 31]) {
      await expect(rt.shutdown({ graceMs })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    }
    // Refused calls start nothing: a valid one still shuts down, letting a task finish.
    const t = rt.spawn(() => new Promise((r) => setTimeout(() => r('done'), 20)));
    await rt.shutdown({ graceMs: 2 ** 31 - 1 });
    expect(await t).toBe('done');
  });

  it('allows one running runtime per thread', async () => {
    const rt = new Runtime({ backend: 'node' });
    expect(() => new Runtime({ backend: 'node' })).toThrow(expect.objectContaining({ code: 'RUNTIME_EXISTS' }));
    await rt.shutdown();
    const rt2 = new Runtime({ backend: 'node' });
    await rt2.shutdown();
  });

  it('createRuntime without multicore makes a Runtime', async () => {
    const rt = createRuntime({ backend: 'node' });
    expect(rt).toBeInstanceOf(Runtime);
    await rt.shutdown();
  });
});

describe('config', () => {
  it.each([
    [{ backend: 'nope' }, /backend 'nope'/],
    [{ features: ['turbo'] }, /unknown feature 'turbo'/],
    [{ crossCpuChannelCapacity: -1 }, /crossCpuChannelCapacity/],
    [{ initialTaskQueueCapacity: 0 }, /initialTaskQueueCapacity/],
    [{ expectedWakeupCount: 1.5 }, /expectedWakeupCount/],
    [{ cores: 0 }, /cores/],
    [{ cpuThreadTimeoutMs: Number.NaN }, /cpuThreadTimeoutMs/],
    [{ colour: 'blue' }, /unknown config key 'colour'/],
  ])('rejects %o with INVALID_CONFIG', (config, message) => {
    expect(() => new Runtime(config as never)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringMatching(message) }));
  });

  it('blockOn rejects (does not throw) on a bad config', async () => {
    await expect(blockOn(() => 1, { backend: 'bogus' as never })).rejects.toMatchObject({ code: 'INVALID_CONFIG' });
  });

  it("accepts MultiCoreRuntime's own keys, which createRuntime passes on with the rest", () => {
    expect(() => resolveConfig({ pin: false, spinMs: 0, awaitSpinMs: 1, workerExitTimeoutMs: 100 } as never, {})).not.toThrow();
  });

  it('fills in the seeds defaults', () => {
    expect(resolveConfig({}, {})).toMatchObject({
      backend: 'auto',
      crossCpuChannelCapacity: 1000,
      cpuThreadTimeoutMs: 10,
      initialTaskQueueCapacity: 128,
      expectedWakeupCount: 16,
    });
  });

  it('MINISS_BACKEND overrides the config and is validated', () => {
    expect(resolveConfig({ backend: 'auto' }, { MINISS_BACKEND: 'node' })).toMatchObject({ backend: 'node', backendSource: 'env MINISS_BACKEND' });
    expect(() => resolveConfig({}, { MINISS_BACKEND: 'fast' })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
  });

  it('auto records why each skipped rung was skipped', async () => {
    const rt = new Runtime({ backend: 'auto' });
    const ladder = rt.stats().backendLadder;
    expect(ladder.length).toBeGreaterThan(0);
    expect(ladder[ladder.length - 1]!.ok).toBe(true);
    expect(ladder[ladder.length - 1]!.name).toBe(rt.backend.name);
    for (const rung of ladder.slice(0, -1)) {
      expect(rung.ok).toBe(false);
      expect(rung.reason).toEqual(expect.any(String));
    }
    await rt.shutdown();
  });

  it.runIf(process.platform === 'linux')('named backend features are the whole ladder: none working here is FEATURE_UNAVAILABLE with each reason, never a silent fall to node', async () => {
    let err: RuntimeError | undefined;
    try {
      new Runtime({ backend: 'auto', features: ['kqueue'] });
    } catch (e) {
      err = e as RuntimeError;
    }
    expect(err).toBeInstanceOf(RuntimeError);
    expect(err?.code).toBe('FEATURE_UNAVAILABLE');
    expect(err?.message).toMatch(/named \('kqueue'\).*kqueue: /);
    // One named backend that works is picked, whatever else is named.
    const epollOk = probeBackend('epoll').ok;
    if (epollOk) {
      const rt = new Runtime({ backend: 'auto', features: ['kqueue', 'epoll'] });
      expect(rt.backend.name).toBe('epoll');
      expect(rt.stats().backendLadder.map((r) => r.name)).toEqual(['epoll']);
      await rt.shutdown();
    }
  });

  it('a backend this OS lacks fails with BACKEND_UNAVAILABLE saying why', () => {
    const name = process.platform === 'linux' ? 'kqueue' : 'epoll';
    expect(() => new Runtime({ backend: name })).toThrow(
      expect.objectContaining({ code: 'BACKEND_UNAVAILABLE', message: expect.stringMatching(/unavailable: .+/) }),
    );
    expect(tryCurrentRuntime()).toBeUndefined();
  });

  it('a plugin API in a runtime without its feature fails with FEATURE_UNAVAILABLE naming the fix', async () => {
    const rt = new Runtime({ backend: 'node' });
    expect(() => rt.plugin('timer')).toThrow(
      expect.objectContaining({ code: 'FEATURE_UNAVAILABLE', message: expect.stringContaining("features: ['timer']") }),
    );
    await rt.shutdown();
  });

  it('multicore in new Runtime() points at createRuntime', () => {
    expect(() => new Runtime({ features: ['multicore'] })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
  });
});
