import { afterEach, describe, expect, it } from 'vitest';
import { CancelledError, Runtime, spawn, tryCurrentRuntime } from '@miniss/core';

async function noRuntimeLeft(): Promise<void> {
  const rt = tryCurrentRuntime();
  if (rt) {
    await rt.shutdown();
    throw new Error('a test left its runtime running');
  }
}

afterEach(noRuntimeLeft);

// core's task.onCancel, which the timer driver registers its per-task hook with: registration
// order, O(1) removal from any position, and removal being harmless twice or after settling.
describe('JoinHandle.onCancel (the hook list timers rely on)', () => {
  it('runs the remaining hooks in registration order after removals from the head, middle and tail', async () => {
    const rt = new Runtime({ backend: 'node' });
    await rt.blockOn(async () => {
      const calls: number[] = [];
      const h = spawn(() => new Promise(() => {}));
      const removers = [0, 1, 2, 3, 4, 5].map((i) => h.onCancel(() => calls.push(i)));
      removers[0]!();
      removers[3]!();
      removers[5]!();
      removers[3]!(); // twice: no effect
      expect(h.cancel()).toBe(true);
      await expect(h).rejects.toBeInstanceOf(CancelledError);
      expect(calls).toEqual([1, 2, 4]);
      removers[1]!(); // after the hooks ran: no effect
      expect(h.onCancel(() => calls.push(9))()).toBeUndefined(); // on a settled task: a no-op remover
      expect(calls).toEqual([1, 2, 4]);
    });
  });

  it('a hook registered and removed on a task that completes never runs; removing after completion is harmless', async () => {
    const rt = new Runtime({ backend: 'node' });
    await rt.blockOn(async () => {
      let ran = 0;
      let release!: () => void;
      const h = spawn(() => new Promise<void>((r) => (release = r)));
      await new Promise((r) => setImmediate(r)); // the drain starts the task
      const keep = h.onCancel(() => ran++);
      h.onCancel(() => ran++)();
      release();
      await h;
      keep();
      expect(h.cancel()).toBe(false);
      expect(ran).toBe(0);
    });
  });

  it('removes 200,000 hooks in any order in linear time (removal is O(1), not a search)', async () => {
    const rt = new Runtime({ backend: 'node' });
    await rt.blockOn(async () => {
      const n = 200_000;
      const h = spawn(() => new Promise(() => {}));
      const removers: Array<() => void> = new Array(n);
      let ran = 0;
      const t0 = performance.now();
      for (let i = 0; i < n; i++) removers[i] = h.onCancel(() => ran++);
      // Remove all but one: the older half oldest first, the newer half newest first.
      for (let i = 0; i < n / 2; i++) removers[i]!();
      for (let i = n - 1; i > n / 2; i--) removers[i]!();
      const ms = performance.now() - t0;
      // Linear work is a few tens of ms; the former indexOf+splice took tens of seconds here.
      expect(ms).toBeLessThan(3_000);
      h.cancel();
      await expect(h).rejects.toBeInstanceOf(CancelledError);
      expect(ran).toBe(1);
    });
  });
});

// core's live-task tracking (an array compacted lazily), which shutdown walks to cancel what is left.
describe('runtime shutdown cancels every task still live, whatever the mix of settled ones', () => {
  it('cancels 1,000 pending tasks spawned among 20,000 that settled (across many compactions)', async () => {
    const rt = new Runtime({ backend: 'node' });
    const pending: Array<PromiseLike<unknown>> = [];
    let hooks = 0;
    await rt.blockOn(async () => {
      for (let i = 0; i < 21_000; i++) {
        if (i % 21 === 0) {
          const h = rt.spawn(() => new Promise(() => {}));
          h.onCancel(() => hooks++);
          pending.push(h.then(() => 'settled', (e: unknown) => e));
        } else {
          await rt.spawn(async () => i);
        }
      }
      expect(rt.stats().tasksActive).toBe(1 + 1_000); // the root task and the pending ones
    });
    const outcomes = await Promise.all(pending);
    expect(outcomes.every((e) => e instanceof CancelledError)).toBe(true);
    expect(hooks).toBe(1_000);
    expect(rt.stats()).toMatchObject({ tasksActive: 0, tasksCancelled: 1_000, tasksCompleted: 20_000 + 1 });
  });
});

