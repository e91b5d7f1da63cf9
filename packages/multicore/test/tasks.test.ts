import { describe, expect, it, onTestFinished } from 'vitest';
import { CancelledError } from '@miniss/core';
import { delayPortMessages, make, node0Of, shutDownAfterEach, until, within } from './helpers.js';

shutDownAfterEach();

describe('task and batch ids (32 bits on the wire)', () => {
  it('wrap from 2^32-1 to 1, skip ids still pending, and every handle settles', async () => {
    const mc = make({ cores: 2, pin: false });
    const node0 = node0Of(mc);
    const gate = new SharedArrayBuffer(4);
    // Holds id 1 while the ids come round.
    const long = mc.spawnOn(1, async (g: SharedArrayBuffer) => {
      while (Atomics.load(new Int32Array(g), 0) === 0) await new Promise((r) => setTimeout(r, 2));
      return 'long';
    }, gate);
    onTestFinished(() => {
      Atomics.store(new Int32Array(gate), 0, 1);
    });
    expect(long.id).toBe(1);
    node0.nextId = 2 ** 32 - 2; // as after 2^32 - 3 more tasks
    const hs = [0, 1, 2, 3].map((i) => mc.spawnOn(1, (x: number) => x * 10, i));
    hs.push(mc.spawnOn(0, (x: number) => x * 10, 4));
    expect(hs.map((h) => h.id)).toEqual([2 ** 32 - 2, 2 ** 32 - 1, 2, 3, 4]);
    expect(await within(Promise.all(hs), 2000, 'tasks across the wrap')).toEqual([0, 10, 20, 30, 40]);
    // SharedArrayBuffer batches (ids in the message body) wrap too.
    node0.nextBatch = 2 ** 32 - 2;
    const counter = new SharedArrayBuffer(4);
    for (let i = 1; i <= 4; i++) {
      expect(await within(mc.spawnOn(1, (s: SharedArrayBuffer) => Atomics.add(new Int32Array(s), 0, 1) + 1, counter), 2000, `SAB task ${i}`)).toBe(i);
    }
    expect(node0.nextBatch).toBe(3);
    Atomics.store(new Int32Array(gate), 0, 1);
    expect(await within(long, 2000, 'long task')).toBe('long');
  });
});

describe('the AbortSignal comes after the given arguments', () => {
  it('also for a parameter with a default value, a destructured default, a rest parameter or a method, on core 0 and on another core', async () => {
    const mc = make({ cores: 2, pin: false });
    const methods = {
      run(x: number, signal: AbortSignal | null = null) {
        return signal !== null && typeof signal.aborted === 'boolean' ? `signal ${x}` : 'no signal';
      },
    };
    for (const core of [0, 1]) {
      const got = await within(
        Promise.all([
          mc.spawnOn(core, (x: number, signal: AbortSignal | null = null) => (signal !== null && typeof signal.aborted === 'boolean' ? `signal ${x}` : 'no signal'), 1),
          mc.spawnOn(core, (signal: AbortSignal | null = null) => (signal !== null && typeof signal.aborted === 'boolean' ? 'signal' : 'no signal')),
          mc.spawnOn(core, ({ a }: { a: number } = { a: 0 }, signal?: AbortSignal) => (signal !== undefined && typeof signal.aborted === 'boolean' ? `signal ${a}` : 'no signal'), { a: 2 }),
          mc.spawnOn(core, (...rest: unknown[]) => (rest.length === 2 && typeof (rest[1] as AbortSignal).aborted === 'boolean' ? 'signal' : 'no signal'), 3),
          mc.spawnOn(core, methods.run, 4),
          mc.spawnOn(core, (x: number, signal: AbortSignal) => (typeof signal.aborted === 'boolean' ? `signal ${x}` : 'no signal'), 5),
        ]),
        2000,
        `core ${core}`,
      );
      expect(got).toEqual(['signal 1', 'signal', 'signal 2', 'signal', 'signal 4', 'signal 5']);
    }
  });

  it('cancel() aborts a signal parameter that has a default value', async () => {
    const mc = make({ cores: 2, pin: false });
    for (const core of [0, 1]) {
      const flag = new SharedArrayBuffer(4);
      const h = mc.spawnOn(core, (f: SharedArrayBuffer, signal: AbortSignal | null = null) =>
        new Promise((_, reject) => {
          if (signal === null) return; // never settles: the test times out
          Atomics.store(new Int32Array(f), 0, 1);
          signal.addEventListener('abort', () => {
            Atomics.store(new Int32Array(f), 0, 2);
            reject(signal.reason);
          });
        }), flag);
      h.then(undefined, () => {});
      expect(await until(() => Atomics.load(new Int32Array(flag), 0) === 1, 2000)).toBe(true);
      expect(h.cancel()).toBe(true);
      await expect(h).rejects.toBeInstanceOf(CancelledError);
      expect(await until(() => Atomics.load(new Int32Array(flag), 0) === 2, 2000)).toBe(true);
    }
  });
});

describe('SharedArrayBuffers in results of cancelled tasks', () => {
  // The task blocks its core for 20 ms, so the cancellation reaches it after it has answered.
  const slowSab = (): SharedArrayBuffer => {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    return new SharedArrayBuffer(1024);
  };

  for (const delayed of [false, true]) {
    it(`are let go of when ${delayed ? 'they arrive after' : 'they arrive before or after'} the result is read`, async () => {
      const mc = make({ cores: 2, pin: false });
      if (delayed) delayPortMessages(mc, 1, 50);
      const in1 = node0Of(mc).inn[1]!;
      for (let k = 0; k < 3; k++) {
        const h = mc.spawnOn(1, slowSab);
        expect(h.cancel()).toBe(true);
        await expect(h).rejects.toBeInstanceOf(CancelledError);
      }
      // A later task's result follows theirs in the ring; their SharedArrayBuffers were posted earlier.
      expect(await within(mc.spawnOn(1, () => 'after'), 2000, 'later task')).toBe('after');
      await new Promise((r) => setTimeout(r, delayed ? 120 : 20));
      expect(in1.sabs.size).toBe(0);
      expect(in1.discard.size).toBe(0);
      expect(in1.parked.length).toBe(0);
      // An awaited one still gets its SharedArrayBuffer.
      const got = await within(mc.spawnOn(1, slowSab), 2000, 'awaited SAB result');
      expect(got).toBeInstanceOf(SharedArrayBuffer);
      expect(in1.sabs.size).toBe(0);
    });
  }
});
