import { describe, expect, it } from 'vitest';
import { createRuntime, CancelledError } from '@miniss/core';
import { MultiCoreRuntime } from '@miniss/multicore';

// Shipped functions are compiled from their source on another thread, so they may not use
// imports of this file; they read the core number from the slot currentCore() reads.
const CORE = 'miniss.multicore.currentCore';

async function closed(mc: MultiCoreRuntime): Promise<void> {
  await mc.shutdown();
  const s = mc.stats();
  for (const c of s.perCore) expect(['exited', 'crashed']).toContain(c.state);
}

describe('MultiCoreRuntime', () => {
  it("counts the seeds' 8 tasks over 4 cores with a shared atomic counter", async () => {
    const mc = new MultiCoreRuntime({ cores: 4, pin: false });
    const sab = new SharedArrayBuffer(4);
    const hs = [];
    for (let i = 0; i < 8; i++) {
      hs.push(
        mc.spawn((buf: SharedArrayBuffer, key: string) => {
          Atomics.add(new Int32Array(buf), 0, 1);
          return (globalThis as Record<symbol, number>)[Symbol.for(key)]!;
        }, sab, CORE),
      );
    }
    const cores = await Promise.all(hs);
    expect(Atomics.load(new Int32Array(sab), 0)).toBe(8);
    expect(new Set(cores).size).toBe(4);
    await closed(mc);
  });

  it('places with spawnOn, balances spawn over busy cores, broadcasts by core', async () => {
    const mc = new MultiCoreRuntime({ cores: 3, pin: false });
    for (let c = 0; c < 3; c++) {
      expect(await mc.spawnOn(c, (key: string) => (globalThis as Record<symbol, number>)[Symbol.for(key)], CORE)).toBe(c);
    }
    // Three long tasks: the least-loaded core is always an idle one, so they land on 3 cores.
    const gate = new SharedArrayBuffer(4);
    const long = [0, 1, 2].map(() =>
      mc.spawn(async (g: SharedArrayBuffer, key: string) => {
        const a = new Int32Array(g);
        while (Atomics.load(a, 0) === 0) await new Promise((r) => setTimeout(r, 2));
        return (globalThis as Record<symbol, number>)[Symbol.for(key)];
      }, gate, CORE),
    );
    await new Promise((r) => setTimeout(r, 20));
    Atomics.store(new Int32Array(gate), 0, 1);
    expect(new Set(await Promise.all(long)).size).toBe(3);
    expect(await mc.broadcast((x: number, key: string) => x * 10 + (globalThis as Record<symbol, number>)[Symbol.for(key)]!, 5, CORE)).toEqual([50, 51, 52]);
    await closed(mc);
  });

  it('rejects closures with TASK_NOT_SHIPPABLE and brings errors back with message and stack', async () => {
    const mc = new MultiCoreRuntime({ cores: 2, pin: false });
    const captured = 42;
    await expect(mc.spawnOn(1, () => captured)).rejects.toMatchObject({ code: 'TASK_NOT_SHIPPABLE', message: expect.stringContaining("Pass 'captured' as an argument") });
    const err = await mc.spawnOn(1, () => {
      throw new TypeError('boom on the other side');
    }).then(
      () => null,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect(err!.message).toContain('boom on the other side');
    expect(err!.stack).toContain('boom on the other side');
    await closed(mc);
  });

  it('applies back-pressure with a tiny ring: nothing lost, order per pair kept', async () => {
    const mc = new MultiCoreRuntime({ cores: 2, pin: false, crossCpuChannelCapacity: 4 });
    const N = 3000;
    const order: number[] = [];
    const hs = [];
    for (let i = 0; i < N; i++) hs.push(mc.spawnOn(1, (k: number, s: string) => `${k}:${s}`, i, 'x'.repeat(i % 300)).then((v) => order.push(Number(v.split(':')[0]))));
    await Promise.all(hs);
    expect(order).toEqual(Array.from({ length: N }, (_, i) => i));
    await closed(mc);
  });

  it('keeps 10,000 tasks in flight from one core (more than its pending table has slots): each gets its own result', async () => {
    const mc = new MultiCoreRuntime({ cores: 2, pin: false });
    const N = 10_000;
    const hs = [];
    for (let i = 0; i < N; i++) hs.push(mc.spawnOn(1, (k: number) => k * 3, i));
    hs[17]!.cancel();
    const got = await Promise.all(hs.map((h) => h.then((v) => v, (e: { code?: string }) => e.code)));
    expect(got[17]).toBe('CANCELLED');
    for (let i = 0; i < N; i++) if (i !== 17 && got[i] !== i * 3) throw new Error(`task ${i} got ${String(got[i])}`);
    expect(mc.stats().perCore[0]!.backlog).toBe(0);
    await closed(mc);
  });

  it("cancels a remote task: handle.cancel() reaches the task's AbortSignal", async () => {
    const mc = new MultiCoreRuntime({ cores: 2, pin: false });
    const flag = new SharedArrayBuffer(4);
    const h = mc.spawnOn(1, (f: SharedArrayBuffer, signal: AbortSignal) =>
      new Promise((_, reject) => {
        const a = new Int32Array(f);
        Atomics.store(a, 0, 1);
        signal.addEventListener('abort', () => {
          Atomics.store(a, 0, 2);
          reject(signal.reason);
        });
      }),
    flag);
    const deadline = Date.now() + 5000;
    while (Atomics.load(new Int32Array(flag), 0) !== 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
    expect(h.cancel()).toBe(true);
    await expect(h).rejects.toBeInstanceOf(CancelledError);
    while (Atomics.load(new Int32Array(flag), 0) !== 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
    expect(Atomics.load(new Int32Array(flag), 0)).toBe(2);
    await closed(mc);
  });

  it('a crashing core rejects its pending handles and does not hang the others', async () => {
    const mc = new MultiCoreRuntime({ cores: 3, pin: false });
    const crashes: number[] = [];
    mc.onCoreCrash = (core) => crashes.push(core);
    const doomed = mc.spawnOn(1, () => {
      setTimeout(() => {
        throw new Error('uncaught on core 1');
      }, 1);
      return new Promise(() => {});
    });
    await expect(doomed).rejects.toMatchObject({ code: 'CORE_CRASHED', message: expect.stringContaining('uncaught on core 1') });
    expect(crashes).toEqual([1]);
    expect(mc.stats().perCore[1]!.state).toBe('crashed');
    // The message points at where the cause is kept.
    await expect(mc.spawnOn(1, () => 1)).rejects.toMatchObject({ code: 'CORE_CRASHED', message: expect.stringContaining('mc.stats().perCore[1].crash') });
    expect(mc.stats().perCore[1]!.crash?.message).toContain('uncaught on core 1');
    expect(await mc.spawnOn(2, (x: number) => x + 1, 1)).toBe(2);
    expect(await mc.spawn((x: number) => x + 1, 2)).toBe(3);
    await closed(mc);
  });

  it('shutdown with tasks in flight: cancels them, refuses new spawns, workers exit', async () => {
    const mc = new MultiCoreRuntime({ cores: 3, pin: false });
    const hs = [0, 1, 2].map((c) => mc.spawnOn(c, (signal: AbortSignal) => new Promise((_, rej) => signal.addEventListener('abort', () => rej(signal.reason)))));
    hs.forEach((h) => h.then(undefined, () => {}));
    await new Promise((r) => setTimeout(r, 20));
    await mc.shutdown({ graceMs: 10 });
    for (const h of hs) {
      const e = await h.then(() => null, (err: { code?: string }) => err);
      expect(['CANCELLED', 'RUNTIME_SHUTDOWN']).toContain(e?.code);
    }
    expect(() => mc.spawn(() => 1)).toThrow(expect.objectContaining({ code: 'RUNTIME_SHUTDOWN' }));
    expect(mc.stats().perCore.map((c) => c.state)).toEqual(['exited', 'exited', 'exited']);
    expect(mc.coreStats().map((c) => c.tasksActive)).toEqual([0, 0, 0]);
  });

  it('createRuntime builds it from the feature config; bad core counts are INVALID_CONFIG', async () => {
    const mc = createRuntime({ features: ['multicore'], cores: 2 }) as unknown as MultiCoreRuntime;
    expect(mc).toBeInstanceOf(MultiCoreRuntime);
    expect(mc.cores).toBe(2);
    expect(await mc.blockOn(() => mc.broadcast(() => 7))).toEqual([7, 7]);
    expect(mc.stats().perCore.map((c) => c.state)).toEqual(['exited', 'exited']);
    for (const bad of [-1, Number.NaN, 5000]) {
      expect(() => new MultiCoreRuntime({ cores: 2, spinMs: bad })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
      expect(() => new MultiCoreRuntime({ cores: 2, awaitSpinMs: bad })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
    }
    for (const bad of [0, -1, 1.5, Number.NaN]) {
      expect(() => createRuntime({ features: ['multicore'], cores: bad })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
      expect(() => new MultiCoreRuntime(bad)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
    }
  });
});
