import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { describe, expect, it, onTestFinished } from 'vitest';
import { CancelledError, Runtime } from '@miniss/core';
import { MultiCoreRuntime } from '@miniss/multicore';
import { until } from './helpers.js';

// The key multicore paths on every backend that loads here: the doorbell differs per backend
// (eventfd read kept in flight on epoll, Atomics.waitAsync on node and io_uring), and pinning
// needs a native one. A backend that does not load (or MINISS_BACKEND forcing another one) skips.
const BACKENDS = ['node', 'epoll', 'io_uring'] as const;

async function loads(backend: (typeof BACKENDS)[number]): Promise<boolean> {
  try {
    const rt = new Runtime({ backend });
    const ok = rt.backend.name === backend;
    await rt.shutdown();
    return ok;
  } catch {
    return false;
  }
}
const available = new Map<string, boolean>();
for (const b of BACKENDS) available.set(b, await loads(b));

// Built with `new Function` so that the test runner does not rewrite its `import()`: this is the
// source text the worker compiles. It reports the backend and core of the runtime it runs on.
const whereAmI = new Function(
  "return async () => { const m = await import('@miniss/multicore'); const c = await import('@miniss/core'); return c.currentRuntime().backend.name + ':' + m.currentCore(); }",
)() as () => Promise<string>;

function affinity(): string | null {
  try {
    return /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/thread-self/status', 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

/** `p`, or a rejection naming `what` after `ms` (a lost wake-up fails fast and says where). */
function within<T>(p: PromiseLike<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    Promise.resolve(p).finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]);
}

describe.each(BACKENDS)('multicore on the %s backend', (backend) => {
  const run = available.get(backend) === true;

  it.runIf(run)('counts 8 tasks over 3 cores, each core on this backend; an idle core is woken by its doorbell', async () => {
    const before = affinity();
    const cpus = availableParallelism(); // (of this thread: read it before core 0 is pinned)
    const native = backend !== 'node';
    const mc = new MultiCoreRuntime({ cores: 3, backend, pin: native });
    onTestFinished(() => mc.shutdown());
    const counter = new SharedArrayBuffer(4);
    await within(Promise.all(Array.from({ length: 8 }, () => mc.spawn((buf: SharedArrayBuffer) => Atomics.add(new Int32Array(buf), 0, 1), counter))), 5000, '8 tasks');
    expect(Atomics.load(new Int32Array(counter), 0)).toBe(8);
    expect((await within(mc.broadcast(whereAmI), 5000, 'broadcast')).sort()).toEqual([`${backend}:0`, `${backend}:1`, `${backend}:2`]);
    // Core i is pinned to CPU i on a native backend (cores beyond the CPUs stay unpinned).
    expect(mc.stats().perCore.map((c) => c.pinnedCpu)).toEqual([0, 1, 2].map((c) => (native && c < cpus ? c : null)));

    // Idle round trips: core 1 falls asleep between them and must be woken each time.
    for (let i = 0; i < 10; i++) {
      expect(await until(() => mc.stats().perCore[1]!.asleep, 2000)).toBe(true);
      const wakeups = mc.stats().perCore[0]!.wakeups;
      expect(await within(mc.spawnOn(1, (x: number) => x * 2, i), 3000, `idle round trip ${i}`)).toBe(i * 2);
      expect(mc.stats().perCore[0]!.wakeups).toBeGreaterThan(wakeups);
    }
    await mc.shutdown();
    expect(mc.stats().perCore.map((c) => c.state)).toEqual(['exited', 'exited', 'exited']);
    // The calling thread (core 0) gets its CPU affinity back.
    expect(affinity()).toBe(before);
    if (native && before !== null) expect(['restored', 'unchanged']).toContain(mc.stats().core0Affinity.restore);
  }, 20_000);

  it.runIf(run)("cancels a remote task (its AbortSignal fires there) and shuts down with tasks in flight", async () => {
    const mc = new MultiCoreRuntime({ cores: 3, backend, pin: false });
    onTestFinished(() => mc.shutdown());
    const flag = new SharedArrayBuffer(4);
    const h = mc.spawnOn(
      1,
      (f: SharedArrayBuffer, signal: AbortSignal) =>
        new Promise((_, reject) => {
          const a = new Int32Array(f);
          Atomics.store(a, 0, 1);
          signal.addEventListener('abort', () => {
            Atomics.store(a, 0, 2);
            reject(signal.reason);
          });
        }),
      flag,
    );
    const f = new Int32Array(flag);
    expect(await until(() => Atomics.load(f, 0) === 1, 5000)).toBe(true);
    expect(h.cancel()).toBe(true);
    await expect(h).rejects.toBeInstanceOf(CancelledError);
    expect(await until(() => Atomics.load(f, 0) === 2, 5000)).toBe(true);

    const hs = [0, 1, 2].map((c) => mc.spawnOn(c, (signal: AbortSignal) => new Promise((_, rej) => signal.addEventListener('abort', () => rej(signal.reason)))));
    hs.forEach((x) => x.then(undefined, () => {}));
    await new Promise((r) => setTimeout(r, 20));
    await mc.shutdown({ graceMs: 10 });
    for (const x of hs) {
      const e = await x.then(
        () => null,
        (err: { code?: string }) => err,
      );
      expect(['CANCELLED', 'RUNTIME_SHUTDOWN']).toContain(e?.code);
    }
    expect(() => mc.spawn(() => 1)).toThrow(expect.objectContaining({ code: 'RUNTIME_SHUTDOWN' }));
    expect(mc.stats().perCore.map((c) => c.state)).toEqual(['exited', 'exited', 'exited']);
    expect(mc.coreStats().map((c) => c.tasksActive)).toEqual([0, 0, 0]);
  }, 20_000);

  it.skipIf(run)(`skipped: the ${backend} backend does not load here (or MINISS_BACKEND forces another)`, () => {});
});
