import { describe, expect, it } from 'vitest';
import { ManualClock, TimerWheel, monotonicClock, type TimerId } from '@miniss/timer';

/**
 * Clock reuse (`reuseClock`): `schedule` reads the clock once per 32 calls and computes the
 * others' deadlines from that reading plus a 0.25 ms margin; the next reading fixes up the
 * window's timers if time moved on by more than the margin. Driven by a ManualClock that moves
 * between schedules without the wheel reading it, as real time does.
 */

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('TimerWheel clock reuse', () => {
  it('is on by default with the monotonic clock only', () => {
    const clock = new ManualClock();
    const exact = new TimerWheel({ clock });
    exact.schedule(10, () => {});
    clock.advance(5);
    const id = exact.schedule(10, () => {});
    expect(exact.deadlineOf(id)).toBe(15); // a ManualClock wheel reads the clock every time
    const w = new TimerWheel();
    expect((w as unknown as { _reuse: boolean })._reuse).toBe(true);
    expect(new TimerWheel({ clock: monotonicClock, reuseClock: false }) as unknown as { _reuse: boolean }).toHaveProperty('_reuse', false);
  });

  it('moves a timer scheduled after the clock moved past the margin to its true deadline before anything fires', () => {
    const clock = new ManualClock();
    const wheel = new TimerWheel({ clock, reuseClock: true });
    const fired: string[] = [];
    const a = wheel.schedule(10, () => fired.push('a')); // reads the clock (0): deadline 10
    clock.advance(0.1);
    const b = wheel.schedule(10, () => fired.push('b')); // from the reading: ceil(0 + 0.25 + 10) = 11 >= 10.1
    clock.advance(4.9); // time moves on without a reading
    const c = wheel.schedule(10, () => fired.push('c')); // really at 5: due at 15
    expect(wheel.deadlineOf(a)).toBe(10);
    expect(wheel.deadlineOf(c)).toBe(15); // deadlineOf closes the window and fixes c up
    expect(wheel.deadlineOf(b)).toBe(15); // b cannot be told apart from c: moved later, never earlier
    clock.set(14);
    wheel.poll();
    expect(fired).toEqual(['a']);
    clock.set(15);
    wheel.poll();
    expect(fired.sort()).toEqual(['a', 'b', 'c']);
    expect(wheel.size).toBe(0);
  });

  it('keeps the window when the next reading is within the margin', () => {
    const clock = new ManualClock(100);
    const wheel = new TimerWheel({ clock, reuseClock: true });
    wheel.schedule(5, () => {});
    clock.advance(0.2);
    const b = wheel.schedule(5, () => {});
    expect(wheel.deadlineOf(b)).toBe(6); // ceil(0 + 0.25 + 5): not earlier than 0.2 + 5
  });

  it('poll closes the window first: a stale-window timer never fires early', () => {
    const clock = new ManualClock();
    const wheel = new TimerWheel({ clock, reuseClock: true });
    let fired = 0;
    wheel.schedule(1000, () => {}); // opens the window at 0
    clock.advance(50);
    wheel.schedule(2, () => fired++); // really due at 52, computed from the reading 0 as 3
    clock.set(51);
    wheel.poll(); // closes the window at 51: the timer moves to ceil(51 + 2)
    expect(fired).toBe(0);
    clock.set(52);
    wheel.poll();
    expect(fired).toBe(0);
    clock.set(53);
    wheel.poll();
    expect(fired).toBe(1);
  });

  it('does not bring back a window timer that was cancelled or fired', () => {
    const clock = new ManualClock();
    const wheel = new TimerWheel({ clock, reuseClock: true });
    let fired = 0;
    wheel.schedule(100, () => {});
    const b = wheel.schedule(100, () => fired++);
    expect(wheel.cancel(b)).toBe(true);
    clock.advance(10);
    expect(wheel.nextExpiration()).toBeLessThanOrEqual(100);
    expect(wheel.size).toBe(1);
    clock.set(200);
    wheel.poll();
    expect(fired).toBe(0);
    expect(wheel.size).toBe(0);
  });

  it('random schedules, cancels and clock moves: no timer fires before its schedule time plus its delay', () => {
    const rnd = rng(7);
    const clock = new ManualClock();
    const wheel = new TimerWheel({ clock, reuseClock: true });
    let early = 0;
    let fired = 0;
    const ids: TimerId[] = [];
    let scheduled = 0;
    let cancelled = 0;
    for (let round = 0; round < 400; round++) {
      const k = Math.floor(rnd() * 100);
      for (let j = 0; j < k; j++) {
        // Time moves between schedules: mostly a little, sometimes a lot (a GC pause, an idle gap).
        const r = rnd();
        clock.advance(r < 0.9 ? rnd() * 0.02 : r < 0.98 ? rnd() * 2 : rnd() * 50);
        const at = clock.now();
        const delay = rnd() < 0.5 ? Math.floor(rnd() * 100) : rnd() * 100;
        ids.push(
          wheel.schedule(delay, () => {
            fired++;
            if (clock.now() < at + delay) early++;
          }),
        );
        scheduled++;
        if (rnd() < 0.2 && wheel.cancel(ids[Math.floor(rnd() * ids.length)]!)) cancelled++;
      }
      clock.advance(rnd() * 3);
      wheel.poll();
    }
    clock.advance(200);
    wheel.poll();
    expect(early).toBe(0);
    expect(fired + cancelled).toBe(scheduled);
    expect(wheel.size).toBe(0);
  });
});
